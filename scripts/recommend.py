#!/usr/bin/env python3
"""A user's top-K items from a trained run: a thin CLI over autorec_jax.serve.recommend.top_k.

  python scripts/recommend.py runs/d2l --user 196             # top 10, titled for MovieLens
  python scripts/recommend.py runs/d2l --user 196 --top 20 --json

Items the user rated in training are left out. The run's training ratings are re-derived
from its config (same data, split and seed). Bad input (unknown user, missing run) exits
with status 1, bad usage with 2, each with one line on stderr.
"""

from __future__ import annotations

import os
import signal

if __name__ == "__main__":  # first: Ctrl-C during the imports below exits in one line
    signal.signal(signal.SIGINT, lambda *_: (os.write(2, b"recommend.py: interrupted\n"),
                                             os._exit(130)))

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from autorec_jax.run.runtime import Interrupts  # noqa: E402 (stdlib only)

INTERRUPTS = Interrupts("recommend.py")
if __name__ == "__main__":
    INTERRUPTS.install()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="the run's folder (as written by scripts/train.py --out)")
    parser.add_argument("--user", required=True, help="the user's raw id")
    parser.add_argument("--top", type=int, default=10, help="how many items")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--compilation-cache", default=None,
                        help="JAX persistent compilation cache folder, or 'off'")
    return parser


def main(argv: list[str] | None = None, *, load_run=None) -> int:
    """Runs the CLI; `load_run(run_dir) -> Run` defaults to autorec_jax.serve.load's."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.top < 1:
        parser.error(f"--top must be >= 1, got {args.top}")
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)

    # Imported here so that --help and usage errors do not wait for JAX.
    from autorec_jax.serve import recommend
    from autorec_jax.run import runtime
    from autorec_jax.errors import AutoRecError

    if args.compilation_cache != "off":
        runtime.enable_compilation_cache(args.compilation_cache)
    if load_run is None:
        from autorec_jax.serve.load import load_run
    try:
        run = load_run(args.run)
        config = run.config
        if run.orientation != config.data.orientation:
            raise AutoRecError(f"the run's orientation {run.orientation!r} differs from its "
                               f"config's {config.data.orientation!r}")
        train = recommend.training_ratings(config, user_ids=run.user_ids,
                                           item_ids=run.item_ids)
        best = recommend.top_k(config, run.params, train, args.user, args.top,
                               model=run.model)
        try:
            titles = recommend.item_titles(config)
        except AutoRecError as err:
            print(f"{parser.prog}: warning: no titles ({str(err).splitlines()[0]})",
                  file=sys.stderr)
            titles = None
    except (AutoRecError, OSError) as err:
        print(f"{parser.prog}: error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 1

    user = recommend.lookup_ids(train.user_ids, [args.user])[0]
    user = train.user_ids[user].item()
    if args.json:
        items = []
        for rank, (item, score) in enumerate(best, start=1):
            title, year = (titles or {}).get(item, (None, None))
            items.append({"rank": rank, "item": item, "score": score, "title": title,
                          "year": year})
        print(json.dumps({"user": user, "top": args.top, "items": items}))
        return 0
    print(f"top {len(best)} for user {user}:")
    for rank, (item, score) in enumerate(best, start=1):
        print(f"{rank:3d}. {score:6.3f}  {recommend.format_title(titles, item)}"
              + (f"  [item {item}]" if titles else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
