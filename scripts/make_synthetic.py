#!/usr/bin/env python3
"""Synthetic rating sets shaped like the large public ones, with long-tailed popularity.

  python scripts/make_synthetic.py --shape netflix --out /tmp/netflix.npz
  python scripts/make_synthetic.py --shape ml-20m --out /tmp/ml20m.npz
  python scripts/make_synthetic.py --shape netflix --out /tmp/nf --netflix-layout  # text

Users and items get Zipf-like activity (weights (rank + offset)^-exponent): pairs are drawn
from the product of the two, repeats dropped and more drawn until the set holds the target
count, so the most popular items and the most active users saturate as in the real data.
Ratings 1..5 come from item and user biases plus noise (so there is something to learn).
The .npz holds users, items (int32 indices), ratings (uint8), user_ids, item_ids; load it
with `load_npz` (a `Ratings`) and pass it as `ratings=` to `train_and_evaluate`.
`--netflix-layout` writes the Netflix Prize text layout instead (one combined file of
`MovieID:` blocks), for the reader (`--ratings FILE`).
"""

from __future__ import annotations

import os
import signal

if __name__ == "__main__":  # first: Ctrl-C during the imports below exits in one line
    signal.signal(signal.SIGINT, lambda *_: (os.write(2, b"make_synthetic.py: interrupted\n"),
                                             os._exit(130)))

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from autorec_jax.run.runtime import Interrupts  # noqa: E402 (stdlib only)

INTERRUPTS = Interrupts("make_synthetic.py")
if __name__ == "__main__":
    INTERRUPTS.install()

from autorec_jax.data.ratings import Ratings  # noqa: E402

SHAPES = {  # users, items, ratings (the public sets' sizes)
    "netflix": (480_189, 17_770, 100_480_507),
    "ml-20m": (138_493, 26_744, 20_000_263),
    "ml-100k": (943, 1_682, 100_000),
}


def zipf_weights(n: int, exponent: float, offset: float, cap: float, rng) -> np.ndarray:
    """Zipf-like probabilities, the head flattened to at most `cap` (so that the expected
    count of the busiest user or item stays below the other side's size)."""
    weights = (np.arange(n) + offset) ** -exponent
    weights /= weights.sum()
    for _ in range(20):
        weights = np.minimum(weights, cap)
        weights /= weights.sum()
    return rng.permutation(weights)


def make_ratings(num_users: int, num_items: int, num_ratings: int, seed: int = 0,
                 user_exponent: float = 0.6, item_exponent: float = 1.0) -> Ratings:
    """A long-tailed synthetic set with exactly `num_ratings` distinct (user, item) pairs."""
    rng = np.random.default_rng(seed)
    p_user = zipf_weights(num_users, user_exponent, 50.0, 0.4 * num_items / num_ratings, rng)
    p_item = zipf_weights(num_items, item_exponent, 20.0, 0.4 * num_users / num_ratings, rng)
    keys = np.zeros(0, np.int64)
    for round_ in range(12):
        if len(keys) >= num_ratings:
            break
        draw = int((num_ratings - len(keys)) * 1.2) + 1000
        if round_ >= 4:  # the head is saturated: top up with uniform pairs (few repeats)
            new = rng.integers(0, num_users * num_items, draw, dtype=np.int64)
        else:
            new = (rng.choice(num_users, draw, p=p_user).astype(np.int64) * num_items
                   + rng.choice(num_items, draw, p=p_item))
        keys = np.unique(np.concatenate([keys, new]))
        del new
        print(f"  round {round_}: {len(keys):,} distinct pairs", flush=True)
    keys = keys[np.sort(rng.choice(len(keys), num_ratings, replace=False))]
    users = (keys // num_items).astype(np.int32)
    items = (keys % num_items).astype(np.int32)
    del keys
    item_bias = rng.normal(0.0, 0.5, num_items).astype(np.float32)
    user_bias = rng.normal(0.0, 0.4, num_users).astype(np.float32)
    raw = 3.6 + item_bias[items] + user_bias[users] + rng.normal(0, 0.8, num_ratings).astype(
        np.float32)
    ratings = np.clip(np.rint(raw), 1, 5).astype(np.float32)
    return Ratings(users=users, items=items, ratings=ratings, timestamps=None,
                   user_ids=np.arange(1, num_users + 1), item_ids=np.arange(1, num_items + 1))


def save_npz(path: Path, ratings: Ratings) -> None:
    np.savez(path, users=ratings.users, items=ratings.items,
             ratings=ratings.ratings.astype(np.uint8), user_ids=ratings.user_ids,
             item_ids=ratings.item_ids)


def load_npz(path) -> Ratings:
    """The `Ratings` a .npz of `save_npz` holds (every user and item has a rating)."""
    with np.load(path) as data:
        return Ratings(users=data["users"], items=data["items"],
                       ratings=data["ratings"].astype(np.float32), timestamps=None,
                       user_ids=data["user_ids"], item_ids=data["item_ids"])


def write_netflix_layout(path: Path, ratings: Ratings, seed: int = 0) -> None:
    """One combined file: per item a `MovieID:` line, then `CustomerID,Rating,YYYY-MM-DD`."""
    rng = np.random.default_rng(seed)
    order = np.argsort(ratings.items, kind="stable")
    start = np.datetime64("1999-11-11")
    with open(path, "w") as f:
        bounds = np.searchsorted(ratings.items[order], np.arange(ratings.num_items + 1))
        for item in range(ratings.num_items):
            part = order[bounds[item]:bounds[item + 1]]
            if not len(part):
                continue
            dates = (start + rng.integers(0, 2243, len(part))).astype(str)
            lines = [f"{u},{r},{d}" for u, r, d in zip(
                ratings.user_ids[ratings.users[part]].tolist(),
                ratings.ratings[part].astype(int).tolist(), dates)]
            f.write(f"{ratings.item_ids[item]}:\n" + "\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="netflix")
    parser.add_argument("--ratings", type=int, default=None, help="override the count")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--netflix-layout", action="store_true")
    args = parser.parse_args(argv)
    users, items, count = SHAPES[args.shape]
    start = time.perf_counter()
    ratings = make_ratings(users, items, args.ratings or count, args.seed)
    per_item = np.bincount(ratings.items, minlength=items)
    per_user = np.bincount(ratings.users, minlength=users)
    print(f"{len(ratings):,} ratings, {users:,} users x {items:,} items in "
          f"{time.perf_counter() - start:.0f} s; ratings per item max {per_item.max():,} "
          f"median {int(np.median(per_item)):,}; per user max {per_user.max():,} median "
          f"{int(np.median(per_user)):,}; empty users {int(np.sum(per_user == 0)):,}, "
          f"items {int(np.sum(per_item == 0)):,}")
    if args.netflix_layout:
        write_netflix_layout(args.out, ratings, args.seed)
    else:
        save_npz(args.out, ratings)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
