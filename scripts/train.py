#!/usr/bin/env python3
"""Train AutoRec (the book's recipe by default) and report test RMSE.

  python scripts/train.py                        # the book's recipe on MovieLens 100K
  python scripts/train.py --seed 3 --out runs/s3 # another split/seed, with metrics on disk
  python scripts/train.py --preset tiny --epochs 5 --hidden 64 --parallel pmap

A thin CLI over autorec_jax.train_and_evaluate. Every config field is a flag; a bad flag or
value exits with status 2 and a message naming the field.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from autorec_jax.cli import parse_run_args  # noqa: E402
from autorec_jax.errors import AutoRecError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    config, args = parse_run_args(__doc__, argv)

    from autorec_jax.experiment import train_and_evaluate  # imports JAX's backends lazily

    try:
        result = train_and_evaluate(config, args.out)
    except AutoRecError as err:
        print(f"{Path(sys.argv[0]).name}: error: {err}", file=sys.stderr)
        return 1
    if args.quiet:
        print(f"test RMSE {result.summary['test_rmse']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
