#!/usr/bin/env python3
"""Tuned item-mean and biased-MF baselines on a run's split; writes DIR/summary.json.

  python scripts/baselines.py ml-100k --out runs/baselines                # book's split
  python scripts/baselines.py ml-100k --split ml100k-u1 --out runs/base-u1
  python scripts/baselines.py thin20.tsv --seed 0 --out runs/base-thin20  # a ratings file

The split is the one `scripts/train.py` makes from the same data flags and --seed (the
validation carve-out is --valid-ratio, 0.1 by default, as in --preset honest). Each
baseline's settings are chosen on validation only, then it is refitted on train +
validation and the test set is scored once (autorec_jax/studies/baselines.py). --dims,
--regs and --shrinkages replace the grids. A bad flag exits with status 2, bad data with
status 1, each with a one-line error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from autorec_jax import config as config_lib  # noqa: E402
from autorec_jax.data import loading, movielens  # noqa: E402
from autorec_jax.errors import AutoRecError, ConfigError  # noqa: E402
from autorec_jax.run import cli, reporting  # noqa: E402
from autorec_jax.studies import baselines  # noqa: E402


def numbers(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="baselines.py", description=__doc__.splitlines()[0])
    parser.add_argument("source", help=f"a dataset name ({', '.join(movielens.DATASETS)}) "
                                       "or a ratings file")
    parser.add_argument("--out", required=True, help="folder for summary.json")
    parser.add_argument("--dims", type=numbers, default=baselines.DIMS,
                        help="MF factor sizes to try, e.g. 2,8,32")
    parser.add_argument("--regs", type=numbers, default=baselines.REGS,
                        help="MF ridge penalties to try (ratings in standard deviations)")
    parser.add_argument("--shrinkages", type=numbers, default=baselines.SHRINKAGES,
                        help="item-mean pseudo-counts to try")
    parser.add_argument("--iterations", type=int, default=baselines.ALS_ITERATIONS,
                        help="ALS sweeps per fit")
    cli.add_config_flags(parser, groups=("data",))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    base = config_lib.replace(config_lib.d2l(), valid_ratio=0.1)
    try:
        key = "dataset" if args.source in movielens.DATASETS else "ratings"
        config = cli.config_from_args(args, config_lib.replace(base, **{key: args.source}))
        if config.data.valid_ratio <= 0:
            raise ConfigError("the baselines choose their settings on validation: pass "
                              "--valid-ratio > 0 (0.1 by default)")
        if any(d != int(d) or d < 0 for d in args.dims):
            raise ConfigError(f"--dims must be integers >= 0, got {args.dims}")
    except ConfigError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    try:
        train, valid, test = loading.load_split(config.data, config.split_seed)
        result = baselines.run_baselines(
            train, valid, test, shrinkages=args.shrinkages, dims=tuple(int(d) for d in args.dims),
            regs=args.regs, iterations=args.iterations, seed=config.seed)
    except AutoRecError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 1
    summary = {"data": {"dataset": loading.dataset_label(config.data),
                        "split": config.data.split, "split_seed": config.split_seed,
                        "valid_ratio": config.data.valid_ratio,
                        "train_ratings": len(train), "valid_ratings": len(valid),
                        "test_ratings": len(test)},
               "protocol": "settings chosen on validation, refitted on train + validation, "
                           "test scored once", **result}
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    reporting.write_json(out / "summary.json", summary)
    print(json.dumps({name: {k: v for k, v in result[name].items() if k != "grid"}
                      for name in result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
