"""Small synthetic rating data made by the tests themselves (no MovieLens in the repo)."""

import io
import zipfile

import numpy as np

from autorec_jax.data.ratings import Ratings


def random_ratings(num_users=40, num_items=30, density=0.2, seed=0, timestamps=True,
                   rating_levels=5) -> Ratings:
    """Ratings with every user and item present, ids 1..n, integer ratings 1..rating_levels."""
    rng = np.random.default_rng(seed)
    observed = rng.uniform(size=(num_users, num_items)) < density
    observed[np.arange(num_users), rng.integers(0, num_items, num_users)] = True
    observed[rng.integers(0, num_users, num_items), np.arange(num_items)] = True
    users, items = np.nonzero(observed)
    order = rng.permutation(len(users))
    users, items = users[order], items[order]
    ratings = rng.integers(1, rating_levels + 1, len(users)).astype(np.float32)
    times = rng.integers(8e8, 9e8, len(users)) if timestamps else None
    return Ratings.from_raw(users + 1, items + 1, ratings, times)


def udata_text(ratings: Ratings) -> str:
    """The ratings written as u.data lines (raw ids, tab-separated)."""
    lines = [f"{ratings.user_ids[u]}\t{ratings.item_ids[i]}\t{int(r)}\t{t}"
             for u, i, r, t in zip(ratings.users, ratings.items, ratings.ratings,
                                   ratings.timestamps)]
    return "\n".join(lines) + "\n"


def zipped(members: dict) -> bytes:
    """A zip archive in memory holding `members` (name -> bytes)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()
