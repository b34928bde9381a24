#!/usr/bin/env python3
"""Several models in one compiled step against the same models one after another.

  python scripts/benchmark_models.py                       # ML-100K, K = 1, 4, 16
  python scripts/benchmark_models.py --members 1,4 --repeats 3 --json /tmp/models.json

For each recipe (`--preset honest`: full batch, hidden 500; and the book's recipe with
hidden 100, batch 256) and each K, K members differing in seed and learning rate are set
up twice in this process: together (`multi.setup_many`, one vmapped epoch per call) and
apart (K `setup`s, K epochs per round). Each repeat times `--epochs` epochs of both, in
turn, after warm-up epochs that compile; the figure is the time per step of all K models
(median [min, max] over repeats) and the ratio apart / together (> 1: together is faster).
Timings on a shared machine are noisy: the ratios within one process are what count.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import numpy as np  # noqa: E402

from autorec_jax import config as config_lib  # noqa: E402
from autorec_jax.run import multi, reporting  # noqa: E402
from autorec_jax.distributed import placement  # noqa: E402
from autorec_jax.run.experiment import run_epoch, setup  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": values}


def recipes(parallel: str) -> dict:
    honest = config_lib.replace(config_lib.honest(), parallel=parallel)
    hidden100 = config_lib.replace(config_lib.d2l(), hidden=(100,), parallel=parallel)
    return {"honest": honest, "hidden100": hidden100}


def member_configs(base, count: int) -> list:
    """K members: seeds 0..K-1, learning rates spread around the recipe's."""
    return [config_lib.replace(base, seed=k, lr=base.optim.lr * (1 + 0.1 * k))
            for k in range(count)]


class Planner:
    """One member's batch order, exactly as its own run plans it."""

    def __init__(self, experiment):
        self.experiment = experiment
        self.shuffle = np.random.default_rng(experiment.shuffle_seed)
        self.carry = np.zeros(0, np.int32)
        self.epoch = 0

    def next(self) -> np.ndarray:
        e = self.experiment
        self.epoch += 1
        batches, self.carry = placement.plan_epoch(e.config, e.data, e.batch_size,
                                                   self.shuffle, self.carry, e.shuffle_seed,
                                                   self.epoch)
        return batches


def measure(base, count: int, ratings, repeats: int, epochs: int, warmup: int) -> dict:
    """Time per step of K models together and apart, interleaved repeat by repeat."""
    configs = member_configs(base, count)
    together, states = multi.setup_many(configs, ratings)
    together_plans = [Planner(e) for e in together.experiments]
    apart = [setup(c, ratings) for c in configs]
    apart_plans = [Planner(e) for e, _ in apart]
    apart_states = [s for _, s in apart]

    def run_together():
        nonlocal states
        batches = np.stack([p.next() for p in together_plans])
        states, metrics = multi.run_epoch_many(together, states, batches)
        return batches.shape[1], metrics

    def run_apart():
        for k, ((experiment, _), plan) in enumerate(zip(apart, apart_plans)):
            batches = plan.next()
            apart_states[k], metrics = run_epoch(experiment, apart_states[k], batches)
        return batches.shape[0], metrics

    start = time.perf_counter()
    for _ in range(warmup):  # compiles (rollover epochs alternate two step counts)
        run_together()
    compile_together = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(warmup):
        run_apart()
    compile_apart = time.perf_counter() - start
    times = {"together": [], "apart": []}
    for _ in range(repeats):
        for name, fn in (("together", run_together), ("apart", run_apart)):
            start, steps = time.perf_counter(), 0
            for _ in range(epochs):
                s, metrics = fn()
                steps += s
            np.asarray(metrics["loss"])  # the epoch's results are on the host
            times[name].append((time.perf_counter() - start) / steps)
    ratios = [a / t for a, t in zip(times["apart"], times["together"])]
    return {"members": count, "step_seconds_together": spread(times["together"]),
            "step_seconds_apart": spread(times["apart"]), "apart_over_together": spread(ratios),
            "warmup_seconds": {"together": compile_together, "apart": compile_apart},
            "steps_per_epoch": together.steps[0], "rows_per_step": apart[0][0].batch_size,
            "row_width": together.row_width}


def fmt(s: dict, scale: float = 1.0, digits: int = 2) -> str:
    return (f"{s['median'] * scale:.{digits}f} "
            f"[{s['min'] * scale:.{digits}f}, {s['max'] * scale:.{digits}f}]")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", default="1,4,16", help="K values, comma-separated")
    parser.add_argument("--recipes", default="honest,hidden100")
    parser.add_argument("--parallel", default="jit", help="jit, pmap or sharded")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per timed repeat")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", default=str(REPO / "runs" / "benchmark_models.json"))
    args = parser.parse_args(argv)
    from autorec_jax.data import movielens
    ratings = movielens.load("ml-100k")
    results = {"environment": reporting.environment(), "rows": []}
    print(f"time per step of K models, ms: median [min, max] over {args.repeats} repeats "
          f"of {args.epochs} epochs; apart/together > 1: together is faster")
    for name in args.recipes.split(","):
        base = recipes(args.parallel)[name]
        for count in (int(k) for k in args.members.split(",")):
            row = {"recipe": name, "parallel": args.parallel,
                   **measure(base, count, ratings, args.repeats, args.epochs, args.warmup)}
            results["rows"].append(row)
            print(f"{name:<9} K={count:<3} together {fmt(row['step_seconds_together'], 1e3)}"
                  f"  apart {fmt(row['step_seconds_apart'], 1e3)}  apart/together "
                  f"{fmt(row['apart_over_together'], 1, 2)}  ({row['rows_per_step']} rows x "
                  f"{row['row_width']} per step)", flush=True)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    reporting.write_json(out, results)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
