#!/usr/bin/env python3
"""The book's AutoRec exercises as grids of runs, each setting chosen on validation.

  python scripts/sweep.py --grid hidden --seeds 0,1,2 --out runs/sweep
  python scripts/sweep.py --grid all --seeds 0,1,2 --out runs/sweep  # hidden, depth, activation
  python scripts/sweep.py --grid paper --preset paper --retrain false  # the paper's lambda grid

Grids (autorec_jax/studies/sweep.py GRIDS): hidden (10..1000 units), depth (1..4 hidden layers),
activation (encoder x decoder), paper (lambda x hidden). Every run keeps its best-validation
epoch (early stopping) and is scored on test once; one line per finished run is printed and
appended to <out>/results.csv; <out>/<grid>.md and <grid>.png summarise each grid, the best
setting chosen by mean validation RMSE over seeds, never by test.

The base config is --preset (default d2l) with the sweep's defaults --valid-ratio 0.1
--early-stopping 5 --epochs 60 (not for presets that select on validation themselves: paper,
honest), then your flags (any flag of train.py, e.g. --lr 0.001).
Ctrl-C (or a kill) leaves results.csv whole; the same command resumes the grid. A folder
holding a sweep of another base config is refused. Bad input exits 2 with one line.
"""

from __future__ import annotations

import os
import signal

if __name__ == "__main__":  # first: Ctrl-C during the imports below exits in one line
    signal.signal(signal.SIGINT, lambda *_: (os.write(2, b"sweep.py: interrupted\n"),
                                             os._exit(130)))

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from autorec_jax.run.runtime import Interrupts  # noqa: E402 (stdlib only)

INTERRUPTS = Interrupts("sweep.py")
if __name__ == "__main__":
    INTERRUPTS.install()

from autorec_jax.run.cli import parse_run_args, run_main  # noqa: E402
from autorec_jax.errors import ConfigError  # noqa: E402

PROG = "sweep.py"
DEFAULT_OUT = "runs/sweep"
# Before the user's flags, so that any of them overrides these.
SWEEP_DEFAULTS = ["--valid-ratio", "0.1", "--early-stopping", "5", "--epochs", "60"]


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"expected distinct seeds >= 0, got {text!r}")
    return seeds


EXTRA = {
    "--grid": dict(default="hidden",
                   help="hidden, depth, activation, paper, or all (the three book grids)"),
    "--seeds": dict(type=_seeds, default=(0, 1, 2), help="comma-separated seeds, e.g. 0,1,2"),
    "--settings": dict(default=None, metavar="LABELS",
                       help="run only these settings of the grid, comma-separated labels "
                            "as in results.csv, e.g. hidden=10,hidden=500"),
    "--verbose": dict(action="store_true", help="also log every epoch of every run"),
    "--one-at-a-time": dict(action="store_true",
                            help="train the runs one after another, not those that share "
                                 "shapes (seeds, lr, decay, dropout) together in one "
                                 "compiled step"),
}


def _pick(sweep, grid: str, labels: str | None) -> list[dict]:
    """The grid's settings, or those named in `labels` (ConfigError naming an unknown one)."""
    settings = sweep.grid_settings(grid)
    if labels is None:
        return settings
    by_label = {sweep.setting_label(o): o for o in settings}
    wanted = [label.strip() for label in labels.split(",")]
    unknown = [label for label in wanted if label not in by_label]
    if unknown:
        raise ConfigError(f"no setting {unknown[0]!r} in grid {grid!r}; it has "
                          f"{', '.join(by_label)}")
    return [by_label[label] for label in wanted]


def _defaults(argv: list[str]) -> list[str]:
    """SWEEP_DEFAULTS, unless --preset names a preset that selects on validation itself
    (paper, honest): its own selection settings are kept then."""
    from autorec_jax import config as config_lib
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--preset", default="d2l")
    preset = probe.parse_known_args(argv)[0].preset
    if preset in config_lib.PRESETS and config_lib.PRESETS[preset]().selects_on_validation:
        return []
    return list(SWEEP_DEFAULTS)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config, args = parse_run_args(__doc__, _defaults(argv) + list(argv), extra=EXTRA)
    from autorec_jax.studies import sweep, sweep_report  # imports JAX

    # One line per finished run (the sweep's log), the runs' own epoch lines only on demand.
    logging.getLogger("autorec_jax").setLevel(logging.INFO if args.verbose else logging.WARNING)
    logging.getLogger("autorec_jax.studies.sweep").setLevel(
        logging.WARNING if args.quiet else logging.INFO)
    out = Path(args.out or DEFAULT_OUT).expanduser()
    if args.grid != "all" and args.grid not in sweep.GRIDS:
        print(f"{PROG}: error: unknown grid {args.grid!r}; choose from "
              f"{', '.join(sweep.GRIDS)}, all", file=sys.stderr)
        return 2
    grids = list(sweep.BOOK_GRIDS) if args.grid == "all" else [args.grid]

    def body() -> int:
        # Every grid's every run is checked before the first one starts.
        settings = {grid: _pick(sweep, grid, args.settings) for grid in grids}
        for grid in grids:
            sweep.run_configs(config, settings[grid], args.seeds)
        for grid in grids:
            results = sweep.run_grid(config, settings[grid], args.seeds, out, name=grid,
                                     batch_members=not args.one_at_a_time)
            md, png = sweep_report.write_report(results, out, grid)
            best = sweep.summarize_grid(results).query("best")
            for row in best.itertuples():
                print(f"{grid}: best by validation {row.setting} (valid {row.valid_rmse_mean:.4f}"
                      f", test {row.test_rmse_mean:.4f}, n {row.n}); {md}, {png}", flush=True)
        return 0

    INTERRUPTS.folder = out
    INTERRUPTS.message = (f"interrupted; {out / sweep.RESULTS_FILE} holds every finished run, "
                          "the same command resumes")
    return run_main(PROG, body, interrupted=INTERRUPTS.message, interrupts=INTERRUPTS)


if __name__ == "__main__":
    sys.exit(main())
