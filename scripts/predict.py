#!/usr/bin/env python3
"""Predicted ratings for (user, item) pairs from a trained run: a thin CLI over
autorec_jax.serve.recommend.predict_pairs.

  python scripts/predict.py runs/d2l pairs.csv --out predictions.csv
  python scripts/predict.py runs/d2l pairs.csv --out predictions.csv --cold-start 3

PAIRS.csv holds `user,item` lines (raw ids), with or without a header line; the output has
`user,item,prediction` lines in the same order, written atomically. A pair with an id the run
never saw is an error unless --cold-start gives its prediction. Bad input exits with status
1, bad usage with 2, each with one line on stderr.
"""

from __future__ import annotations

import os
import signal

if __name__ == "__main__":  # first: Ctrl-C during the imports below exits in one line
    signal.signal(signal.SIGINT, lambda *_: (os.write(2, b"predict.py: interrupted\n"),
                                             os._exit(130)))

import argparse
import logging
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from autorec_jax.run.runtime import Interrupts  # noqa: E402 (stdlib only)

INTERRUPTS = Interrupts("predict.py")
if __name__ == "__main__":
    INTERRUPTS.install()


def finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.splitlines()[:2]))
    parser.add_argument("run", help="the run's folder (as written by scripts/train.py --out)")
    parser.add_argument("pairs", help="CSV file of user,item pairs (raw ids)")
    parser.add_argument("--out", required=True, help="CSV file to write")
    parser.add_argument("--cold-start", type=finite_float, default=None, metavar="VALUE",
                        help="prediction for pairs with an unknown user or item "
                             "(default: such pairs are an error)")
    parser.add_argument("--compilation-cache", default=None,
                        help="JAX persistent compilation cache folder, or 'off'")
    return parser


def main(argv: list[str] | None = None, *, load_run=None) -> int:
    """Runs the CLI; `load_run(run_dir) -> Run` defaults to autorec_jax.serve.load's."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)

    from autorec_jax.serve import recommend
    from autorec_jax.run import runtime
    from autorec_jax.errors import AutoRecError

    if args.compilation_cache != "off":
        runtime.enable_compilation_cache(args.compilation_cache)
    if load_run is None:
        from autorec_jax.serve.load import load_run
    try:
        users, items = recommend.read_pairs(args.pairs)
        run = load_run(args.run)
        config = run.config
        if run.orientation != config.data.orientation:
            raise AutoRecError(f"the run's orientation {run.orientation!r} differs from its "
                               f"config's {config.data.orientation!r}")
        train = recommend.training_ratings(config, user_ids=run.user_ids,
                                           item_ids=run.item_ids)
        predictions = recommend.predict_pairs(config, run.params, train, users, items,
                                              cold_start=args.cold_start, model=run.model)
        recommend.write_predictions(args.out, users, items, predictions)
    except (AutoRecError, OSError) as err:
        print(f"{parser.prog}: error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
