#!/usr/bin/env python3
"""Per-entry loss weights 1 / sqrt(item popularity), through `entry_fields={"weights": ...}`.

  python scripts/research/entry_weights.py --orientation user

An entry field is a function of the training Ratings giving one float per rating; the
library carries it beside the ratings into every batch, where the default loss reads
batch["weights"]. It works in both orientations: the item of a rating is `ratings.items`.
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout
import autorec_jax as ar  # noqa: E402
from autorec_jax.run.cli import parse_run_args  # noqa: E402


def popularity_weights(train, power: float = 0.5) -> np.ndarray:
    """popularity(item)^-power per training rating; popularity = the item's training count."""
    popularity = np.bincount(train.items, minlength=train.num_items)
    return popularity[train.items].astype(np.float64) ** -power


def run(config: ar.Config, ratings=None, *, power: float = 0.5,
        out_dir=None) -> ar.TrainResult:
    return ar.train_and_evaluate(config, out_dir, ratings=ratings, entry_fields={
        "weights": lambda train: popularity_weights(train, power)})


def main(argv=None) -> int:
    config, args = parse_run_args(__doc__, argv, extra={
        "--power": dict(type=float, default=0.5, help="weight = popularity ** -power")})
    result = run(config, power=args.power, out_dir=args.out)
    print(f"test RMSE {result.summary['test_rmse']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
