#!/usr/bin/env python3
"""Train AutoRec and report test RMSE: a thin CLI over autorec_jax.train_and_evaluate.

  python scripts/train.py                        # the book's recipe on MovieLens 100K
  python scripts/train.py --seed 3 --out runs/s3 # another split/seed, with metrics on disk
  python scripts/train.py --preset tiny --epochs 5 --hidden 64 --parallel pmap

Every config field is a flag (`--help` lists them); a bad flag or value exits with status 2
and a message naming the field.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from autorec_jax import cli, config as config_lib, runtime  # noqa: E402
from autorec_jax.errors import AutoRecError, ConfigError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train AutoRec (the book's recipe by default) and report test RMSE.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--preset", choices=sorted(config_lib.PRESETS), default="d2l",
                        help="starting configuration; flags override its fields")
    parser.add_argument("--out", default=None,
                        help="folder for metrics.jsonl and summary.json")
    parser.add_argument("--compilation-cache", default=None,
                        help="JAX persistent compilation cache folder, or 'off' "
                             "(default: $AUTOREC_JAX_JIT_CACHE or ~/.cache/autorec_jax/jit)")
    parser.add_argument("--quiet", action="store_true", help="print only the final line")
    cli.add_config_flags(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = cli.config_from_args(args, config_lib.PRESETS[args.preset]())
    except ConfigError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stdout)
    logging.getLogger("autorec_jax").setLevel(logging.WARNING if args.quiet else logging.INFO)
    if args.compilation_cache != "off":
        runtime.enable_compilation_cache(args.compilation_cache)

    from autorec_jax.experiment import train_and_evaluate  # imports JAX's backends lazily

    try:
        result = train_and_evaluate(config, args.out)
    except AutoRecError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 1
    if args.quiet:
        print(f"test RMSE {result.summary['test_rmse']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
