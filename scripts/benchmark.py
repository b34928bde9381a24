#!/usr/bin/env python3
"""Speed of the book's recipe on this machine, as ratios against baselines in the same process.

  python scripts/benchmark.py                 # table on stdout, JSON to runs/benchmark.json
  python scripts/benchmark.py --repeats 7 --json /tmp/bench.json --skip-main-job

Measures (each repeated, reported as median [min, max]):
  peak       one large float32 matmul on the same backend: the machine's practical peak
  epoch      steady-state training epoch of the recipe (compiled scan, data on the device)
             -> entries/s (the book's unit: rows x row width per second of training) and the
             ratio of its time to the time its matmul FLOPs take at the practical peak
  variants   the same epoch with dropout off, to show what dropout costs
  compile    ahead-of-time compilation of the train and eval calls
  eval       one evaluation pass over the training rows
  main job   wall time of `python scripts/train.py` (cached data, warm compilation cache)
  checkpoints  the recipe's run with a run folder at the default checkpoint interval: time
             spent saving over training time
  --compare-with DIR  runs DIR's scripts/benchmark.py (another checkout, e.g. a
             `git worktree` of an older commit) and this one alternately in subprocesses, and
             reports this/that ratios of epoch time and entries/s
Take timings while nothing else runs on the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from autorec_jax import config as config_lib, reporting  # noqa: E402
from autorec_jax.data import batching  # noqa: E402
from autorec_jax.experiment import evaluate, run_epoch, setup  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": values}


def practical_peak(size: int, repeats: int) -> dict:
    """GFLOP/s of one size^3 float32 matmul (the time per call, best of a few calls each)."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a, a).block_until_ready()
    rates = []
    for _ in range(repeats):
        times = []
        for _ in range(3):
            start = time.perf_counter()
            matmul(a, a).block_until_ready()
            times.append(time.perf_counter() - start)
        rates.append(2 * size ** 3 / min(times) / 1e9)
    return {"size": size, "gflops": spread(rates)}


def epoch_timing(config, ratings, repeats: int, epochs_per_repeat: int) -> dict:
    """Steady-state epochs of `config`, planned and run exactly as train_and_evaluate does."""
    experiment, state = setup(config, ratings)
    shuffle = np.random.default_rng(experiment.shuffle_seed)
    carry = np.zeros(0, np.int32)

    def one_epoch(state, carry):
        batches, carry = batching.epoch_batches(
            shuffle.permutation(experiment.num_rows).astype(np.int32), carry,
            config.train.batch_size, config.train.last_batch)
        state, _ = run_epoch(experiment, state, batches)
        return state, carry, len(batches), int(np.sum(batches >= 0))

    for _ in range(2):  # warm-up: caches, allocator
        state, carry, _, _ = one_epoch(state, carry)
    per_epoch, rates, step_times = [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        steps = rows = 0
        for _ in range(epochs_per_repeat):
            state, carry, s, r = one_epoch(state, carry)
            steps, rows = steps + s, rows + r
        seconds = time.perf_counter() - start
        per_epoch.append(seconds / epochs_per_repeat)
        rates.append(rows * experiment.row_width / seconds)
        step_times.append(seconds / steps)
    eval_times = []
    for _ in range(repeats):
        start = time.perf_counter()
        evaluate(experiment, state.params)
        eval_times.append(time.perf_counter() - start)
    return {"experiment": experiment, "state": state, "epoch_seconds": spread(per_epoch),
            "entries_per_sec": spread(rates), "step_seconds": spread(step_times),
            "eval_seconds": spread(eval_times)}


def matmul_flops_per_step(config, row_width: int) -> int:
    """Dense matmul FLOPs of one step: forward, and backward without the input gradient."""
    widths = [row_width, *config.model.hidden, row_width]
    layers = list(zip(widths[:-1], widths[1:]))
    b = config.train.batch_size
    forward = sum(2 * b * i * o for i, o in layers)
    backward = 2 * forward - 2 * b * layers[0][0] * layers[0][1]  # no d(input) for layer 0
    return forward + backward


def checkpoint_overhead(config, ratings, repeats: int) -> dict:
    """Saving time over training time of the recipe's run into a fresh run folder."""
    from autorec_jax.experiment import train_and_evaluate
    ratios = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as out:
            summary = train_and_evaluate(config, Path(out) / "run", ratings=ratings).summary
        ratios.append(summary["checkpoint_seconds"] / summary["train_seconds"])
    return {"checkpoint_over_train": spread(ratios)}


def compare_with(other: Path, repeats: int) -> dict:
    """Alternates both checkouts' benchmarks (fresh processes); ratios this / other."""
    runs = {"this": [], "other": []}
    for _ in range(repeats):
        for name, repo in (("other", other), ("this", REPO)):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "bench.json"
                extra = ["--skip-checkpoints"] if name == "this" else []
                subprocess.run([sys.executable, str(repo / "scripts" / "benchmark.py"),
                                "--repeats", "3", "--skip-main-job", "--json", str(out),
                                *extra], check=True, capture_output=True, cwd=repo)
                runs[name].append(json.loads(out.read_text())["recipe"])
    epoch = [a["epoch_seconds"]["median"] / b["epoch_seconds"]["median"]
             for a, b in zip(runs["this"], runs["other"])]
    rate = [a["entries_per_sec"]["median"] / b["entries_per_sec"]["median"]
            for a, b in zip(runs["this"], runs["other"])]
    return {"other": str(other), "epoch_time_ratio": spread(epoch),
            "entries_per_sec_ratio": spread(rate)}


def main_job_wall(repeats: int) -> dict:
    cache = tempfile.mkdtemp(prefix="autorec_jax_bench_jit_")
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "--quiet",
           "--compilation-cache", cache]
    subprocess.run(cmd, check=True, capture_output=True)  # fills the compilation cache
    walls = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        walls.append(time.perf_counter() - start)
    return {"command": " ".join(cmd[1:]), "wall_seconds": spread(walls)}


def fmt(s: dict, scale: float = 1.0, digits: int = 2) -> str:
    return (f"{s['median'] * scale:.{digits}f} "
            f"[{s['min'] * scale:.{digits}f}, {s['max'] * scale:.{digits}f}]")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs-per-repeat", type=int, default=10)
    parser.add_argument("--peak-size", type=int, default=2048)
    parser.add_argument("--json", default=str(REPO / "runs" / "benchmark.json"))
    parser.add_argument("--skip-main-job", action="store_true")
    parser.add_argument("--skip-checkpoints", action="store_true")
    parser.add_argument("--compare-with", type=Path, default=None,
                        help="another checkout whose benchmark runs alternately with this one")
    args = parser.parse_args(argv)
    if args.compare_with is not None:
        result = compare_with(args.compare_with.resolve(), args.repeats)
        print(f"this / {result['other']} over {args.repeats} alternating runs: epoch time "
              f"{fmt(result['epoch_time_ratio'], 1, 3)}, entries/s "
              f"{fmt(result['entries_per_sec_ratio'], 1, 3)}")
        reporting.write_json(Path(args.json), result)
        return 0

    from autorec_jax.data import movielens
    ratings = movielens.load("ml-100k")
    config = config_lib.replace(config_lib.d2l(), parallel="jit")
    results = {"environment": reporting.environment(), "config": config_lib.to_dict(config)}

    peak = practical_peak(args.peak_size, args.repeats)
    recipe = epoch_timing(config, ratings, args.repeats, args.epochs_per_repeat)
    experiment = recipe.pop("experiment")
    del recipe["state"]
    no_dropout = epoch_timing(config_lib.replace(config, dropout=0.0), ratings, args.repeats,
                              args.epochs_per_repeat)
    del no_dropout["experiment"], no_dropout["state"]

    step_flops = matmul_flops_per_step(config, experiment.row_width)
    steps_per_epoch = statistics.mean(experiment.steps)
    peak_rate = peak["gflops"]["median"] * 1e9
    epoch_at_peak = step_flops * steps_per_epoch / peak_rate
    ratios = [t / epoch_at_peak for t in recipe["epoch_seconds"]["runs"]]
    results.update(
        peak=peak, recipe=recipe, recipe_without_dropout=no_dropout,
        compile_seconds=experiment.compile_seconds,
        matmul_flops_per_step=step_flops, mean_steps_per_epoch=steps_per_epoch,
        epoch_seconds_at_peak=epoch_at_peak, epoch_over_peak=spread(ratios))
    if not args.skip_main_job:
        results["main_job"] = main_job_wall(args.repeats)
    if not args.skip_checkpoints:
        results["checkpoints"] = checkpoint_overhead(config, ratings, args.repeats)

    rows = [
        ("practical peak, f32 matmul", f"{fmt(peak['gflops'], 1, 1)} GFLOP/s"),
        ("epoch (book recipe)", f"{fmt(recipe['epoch_seconds'], 1e3)} ms"),
        ("  per step", f"{fmt(recipe['step_seconds'], 1e3)} ms"),
        ("  training entries/s", f"{fmt(recipe['entries_per_sec'], 1e-6, 1)} M"),
        ("  epoch / its FLOPs at peak", f"{fmt(results['epoch_over_peak'])} x "
                                        f"(peak time {epoch_at_peak * 1e3:.2f} ms)"),
        ("epoch, dropout off", f"{fmt(no_dropout['epoch_seconds'], 1e3)} ms"),
        ("  training entries/s", f"{fmt(no_dropout['entries_per_sec'], 1e-6, 1)} M"),
        ("evaluation pass", f"{fmt(recipe['eval_seconds'], 1e3)} ms"),
        ("compile (train + eval)", f"{experiment.compile_seconds:.2f} s"),
    ]
    if "checkpoints" in results:
        rows.append(("checkpoint time / training time",
                     fmt(results["checkpoints"]["checkpoint_over_train"], 1, 3)))
    if "main_job" in results:
        rows.append(("main job wall (warm caches)",
                     f"{fmt(results['main_job']['wall_seconds'])} s"))
    env = results["environment"]
    print(f"device: {env['device_kind']} x{env['device_count']} ({env['platform']}), "
          f"jax {env['versions']['jax']}; median [min, max] over {args.repeats} repeats")
    for name, value in rows:
        print(f"{name:<32} {value}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    reporting.write_json(out, results)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
