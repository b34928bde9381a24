#!/usr/bin/env python3
"""Search AutoRec's hyper-parameters on validation, retrain the winner, score test once.

  python scripts/tune.py ml-100k --budget 30m --out runs/tune      # a named dataset
  python scripts/tune.py my_ratings.csv --trials 40 --out runs/mine  # a ratings file
  python scripts/tune.py ml-100k --budget 30m --out runs/tune      # again: resumes it
  python scripts/train.py --config runs/tune/best_config.json      # the winner, again

A thin CLI over autorec_jax.tune (autorec_jax/studies/tune.py): Optuna's TPE sampler and
median pruner over learning rate, weight decay, dropout, input dropout, hidden width and
depth, orientation, loss normalisation, cold-start rule and batch (full or minibatch),
each trial with early stopping on a validation carve-out (--valid-ratio, 0.1 by default);
the test set is scored once, by the winner retrained on train + validation. --out holds
study.db (resumable after a kill), final/ (the winner's run), best_config.json and
tune.json. The search starts from --preset honest unless --preset or --config says
otherwise (its 1500 epochs, patience 30, are the most a trial trains: room for full-batch
trials, one update an epoch); every config field is a flag that changes that base (e.g.
--epochs; --split; --seed).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from autorec_jax.run.cli import parse_run_args, run_main  # noqa: E402

PROG = "tune.py"
EXTRA = {
    "data": dict(nargs="?", default=None, metavar="DATA",
                 help="a named dataset (ml-100k, ...) or a ratings file (default: the "
                      "config's dataset)"),
    "--budget": dict(default=None, help="seconds of trials, over all runs of the study: "
                                        "90s, 30m, 2h"),
    "--trials": dict(type=int, default=None, help="finished trials to reach (all runs)"),
    "--models": dict(type=int, default=1,
                     help="trials asked at a time; those sharing shapes train in one step"),
    "--tune-seed": dict(type=int, default=0, help="the sampler's seed"),
}


def main(argv: list[str] | None = None) -> int:
    config, args = parse_run_args(__doc__, argv, extra=EXTRA, default_preset="honest")

    def body() -> int:
        from autorec_jax.config import DATASETS, replace
        from autorec_jax.errors import ConfigError
        from autorec_jax.studies.tune import parse_budget, tune
        if args.out is None:
            raise ConfigError("--out DIR is needed (the study, resumable, and its results)")
        base = config
        if args.data is not None:
            base = replace(config, **({"dataset": args.data} if args.data in DATASETS
                                      else {"ratings": args.data}))
        budget = None if args.budget is None else parse_budget(args.budget)
        if args.models < 1:
            raise ConfigError(f"--models must be >= 1, got {args.models}")
        result = tune(base, args.out, trials=args.trials, budget=budget, models=args.models,
                      seed=args.tune_seed)
        print(f"winner valid RMSE {result.valid_rmse:.4f}  test RMSE {result.test_rmse:.4f}"
              f"  config {Path(args.out) / 'best_config.json'}")
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
