#!/usr/bin/env python3
"""Speed of the book's recipe on this machine, as ratios against baselines in the same process.

  python scripts/benchmark.py                 # table on stdout, JSON to runs/benchmark.json
  python scripts/benchmark.py --repeats 7 --json /tmp/bench.json --skip-main-job

Measures (each repeated, reported as median [min, max]):
  peak       one large float32 matmul on the same backend: the machine's practical peak
  epoch      steady-state training epoch of the recipe (compiled scan, data on the device)
             -> entries/s (the book's unit: rows x row width per second of training) and the
             ratio of its time to the time its matmul FLOPs take at the practical peak (also
             paired: each repeat against a peak measured just before it, same load)
  variants   the same epoch with dropout off, to show what dropout costs
  compile    ahead-of-time compilation of the train and eval calls
  eval       one evaluation pass over the training rows
  main job   wall time of `python scripts/train.py` (cached data, warm compilation cache)
  checkpoints  the recipe's run with a run folder at the default checkpoint interval: time
             spent saving over training time
  --compare-with DIR  runs DIR's scripts/benchmark.py (another checkout, e.g. a
             `git worktree` of an older commit) and this one alternately in subprocesses, and
             reports this/that ratios of epoch time and entries/s, and each side's epoch /
             its FLOPs at peak
  --scale    a table of epoch time, entries/s and peak memory for ML-100K, ML-20M-shaped and
             Netflix-shaped data (scripts/make_synthetic.py; --synthetic-dir), per parallel
             mode, dtype and orientation; each cell runs in its own process (its peak RSS,
             or the accelerator's peak bytes). ML-100K: steady-state epochs, repeated; the
             large shapes: one epoch and one evaluation each.
  --precision  float32 vs bfloat16 epochs at batch 256 and full batch, and their pieces
             (the layers' forward + backward three ways, bare matmuls, transposes, Adam)
Take timings while nothing else runs on the machine.
"""

from __future__ import annotations

import os
import signal

if __name__ == "__main__":  # first: Ctrl-C during the imports below exits in one line
    signal.signal(signal.SIGINT, lambda *_: (os.write(2, b"benchmark.py: interrupted\n"),
                                             os._exit(130)))

import argparse
import functools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from autorec_jax.run.runtime import Interrupts  # noqa: E402 (stdlib only)

INTERRUPTS = Interrupts("benchmark.py")
if __name__ == "__main__":
    INTERRUPTS.install()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from autorec_jax import config as config_lib  # noqa: E402
from autorec_jax.distributed import placement  # noqa: E402
from autorec_jax.run import reporting  # noqa: E402
from autorec_jax.data import batching  # noqa: E402
from autorec_jax.run.experiment import evaluate, run_epoch, setup  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": values}


def peak_meter(size: int):
    """() -> GFLOP/s of one size^3 float32 matmul (the time per call, best of 3 calls)."""
    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a, a).block_until_ready()

    def measure() -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            matmul(a, a).block_until_ready()
            times.append(time.perf_counter() - start)
        return 2 * size ** 3 / min(times) / 1e9
    return measure


def practical_peak(size: int, repeats: int) -> dict:
    """GFLOP/s of one size^3 float32 matmul (the time per call, best of a few calls each)."""
    measure = peak_meter(size)
    return {"size": size, "gflops": spread([measure() for _ in range(repeats)])}


def epoch_timing(config, ratings, repeats: int, epochs_per_repeat: int, peak=None) -> dict:
    """Steady-state epochs of `config`, planned and run exactly as train_and_evaluate does.

    `peak` (a `peak_meter`) is measured just before each repeat ("peak_gflops", one per
    repeat), so that a repeat's epoch time and its peak see the same load on the machine.
    """
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
    per_epoch, rates, step_times, peaks = [], [], [], []
    for _ in range(repeats):
        if peak is not None:
            peaks.append(peak())
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
            "eval_seconds": spread(eval_times), **({"peak_gflops": peaks} if peaks else {})}


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
    from autorec_jax.run.experiment import train_and_evaluate
    ratios = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as out:
            summary = train_and_evaluate(config, Path(out) / "run", ratings=ratings).summary
        ratios.append(summary["checkpoint_seconds"] / summary["train_seconds"])
    return {"checkpoint_over_train": spread(ratios)}


def compare_with(other: Path, repeats: int) -> dict:
    """Alternates both checkouts' benchmarks (fresh processes); ratios this / other, and each
    side's epoch / its FLOPs at peak (the median of each run's repeats)."""
    runs = {"this": [], "other": []}
    for _ in range(repeats):
        for name, repo in (("other", other), ("this", REPO)):
            script = repo / "scripts" / "benchmark.py"
            # An older benchmark may lack --skip-checkpoints; then it measures them too.
            extra = ["--skip-checkpoints"] if "--skip-checkpoints" in script.read_text() else []
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "bench.json"
                subprocess.run([sys.executable, str(script), "--repeats", "3", "--skip-main-job",
                                "--json", str(out), *extra], check=True, capture_output=True,
                               cwd=repo)
                runs[name].append(json.loads(out.read_text()))
    epoch = [a["recipe"]["epoch_seconds"]["median"] / b["recipe"]["epoch_seconds"]["median"]
             for a, b in zip(runs["this"], runs["other"])]
    rate = [a["recipe"]["entries_per_sec"]["median"] / b["recipe"]["entries_per_sec"]["median"]
            for a, b in zip(runs["this"], runs["other"])]
    over_peak = {name: {key: spread([r[key]["median"] for r in rs])
                        for key in ("epoch_over_peak", "epoch_over_paired_peak") if key in rs[0]}
                 for name, rs in runs.items()}
    return {"other": str(other), "epoch_time_ratio": spread(epoch),
            "entries_per_sec_ratio": spread(rate), "epoch_over_peak": over_peak}


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


SCALE_SHAPES = ("ml-100k", "ml-20m", "netflix")


def scale_cell(cell: dict) -> dict:
    """One cell of the --scale table, in this process: {"epoch_seconds", ...}."""
    import resource
    from autorec_jax.run.experiment import train_and_evaluate
    from autorec_jax.run import preflight
    start = time.perf_counter()
    if cell["shape"] == "ml-100k":
        from autorec_jax.data import movielens
        ratings = movielens.load("ml-100k")
    else:
        sys.path.insert(0, str(REPO / "scripts"))
        from make_synthetic import load_npz
        ratings = load_npz(Path(cell["synthetic_dir"]) / f"{cell['shape']}.npz")
    load_seconds = time.perf_counter() - start
    config = config_lib.replace(
        config_lib.d2l(), parallel=cell["mode"], compute_dtype=cell["dtype"],
        orientation=cell["orientation"], model_parallel=cell.get("model", 1))
    out = {**cell, "load_seconds": load_seconds}
    if cell["shape"] == "ml-100k":
        timing = epoch_timing(config, ratings, cell["repeats"], 5)
        experiment = timing["experiment"]
        out.update(epoch_seconds=timing["epoch_seconds"], entries_per_sec=timing[
            "entries_per_sec"], eval_seconds=timing["eval_seconds"])
    else:
        config = config_lib.replace(config, epochs=1, eval_batch_size=256)
        del_ratings = ratings
        result = train_and_evaluate(config, ratings=del_ratings)
        del del_ratings, ratings
        experiment = result.experiment
        record = result.history[-1]
        out.update(epoch_seconds=spread([record["train_seconds"]]),
                   entries_per_sec=spread([record["entries_per_sec"]]),
                   eval_seconds=spread([record["eval_seconds"]]),
                   test_rmse=record["test_rmse"], compile_seconds=experiment.compile_seconds)
    device = jax.local_devices()[0]
    stats = device.memory_stats() or {} if device.platform != "cpu" else {}
    out.update(rows=experiment.num_rows, row_width=experiment.row_width,
               train_ratings=len(experiment.train),
               peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
               device_peak_bytes=stats.get("peak_bytes_in_use"),
               estimate_bytes=preflight.estimate_memory_bytes(
                   config, experiment.num_rows, experiment.row_width, len(experiment.train)),
               platform=device.platform, device_kind=device.device_kind,
               num_devices=experiment.parallel.num_devices)
    return out


def scale_table(args) -> list[dict]:
    """Every requested cell in a fresh process; a failed cell is recorded, not fatal."""
    cells = []
    for shape in args.scale_shapes.split(","):
        for orientation in args.orientations.split(","):
            for mode in args.modes.split(","):
                for dtype in args.dtypes.split(","):
                    cells.append(dict(shape=shape, orientation=orientation, mode=mode,
                                      dtype=dtype, repeats=args.repeats,
                                      synthetic_dir=args.synthetic_dir))
    results = []
    for cell in cells:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "cell.json"
            done = subprocess.run([sys.executable, str(Path(__file__).resolve()),
                                   "--scale-cell", json.dumps(cell), "--json", str(out)],
                                  capture_output=True, text=True)
            if done.returncode == 0:
                results.append(json.loads(out.read_text()))
            else:
                tail = (done.stderr.strip().splitlines() or ["?"])[-1]
                results.append({**cell, "error": tail[:300]})
        print(scale_row(results[-1]), flush=True)
    return results


def scale_row(r: dict) -> str:
    name = f"{r['shape']:<8} {r['orientation'][0].upper()}-AutoRec {r['mode']:<8} {r['dtype']:<9}"
    if "error" in r:
        return f"{name} failed: {r['error']}"
    return (f"{name} epoch {fmt(r['epoch_seconds'], 1, 3)} s  entries/s "
            f"{fmt(r['entries_per_sec'], 1e-6, 1)} M  eval {r['eval_seconds']['median']:.2f} s"
            f"  peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GiB"
            + (f"  device peak {r['device_peak_bytes'] / 2**30:.2f} GiB"
               if r.get("device_peak_bytes") else "")
            + f"  (estimate {r['estimate_bytes'] / 2**30:.2f} GiB)")


def interleaved_epochs(configs: dict, ratings, repeats: int, epochs: int = 5) -> dict:
    """Steady-state epochs of several configs in turn (repeat by repeat), so that drift in
    the machine's load hits them alike: {name: {"step_seconds", "entries_per_sec"}}."""
    runs = {}
    for name, config in configs.items():
        experiment, state = setup(config, ratings)
        runs[name] = [experiment, state, np.random.default_rng(0), np.zeros(0, np.int32), 0]

    def epoch(name):
        experiment, state, shuffle, carry, count = runs[name]
        batches, carry = placement.plan_epoch(experiment.config, experiment.data,
                                              experiment.batch_size, shuffle, carry,
                                              experiment.shuffle_seed, count + 1)
        state, _ = run_epoch(experiment, state, batches)
        runs[name][1:] = [state, shuffle, carry, count + 1]
        return len(batches), int(np.sum(batches >= 0)) * experiment.row_width

    for name in runs:  # warm-up and compile (rollover epochs alternate two step counts)
        for _ in range(3):
            epoch(name)
    out = {name: {"step": [], "rate": []} for name in runs}
    for _ in range(repeats):
        for name in runs:
            start, steps, entries = time.perf_counter(), 0, 0
            for _ in range(epochs):
                s, e = epoch(name)
                steps, entries = steps + s, entries + e
            seconds = time.perf_counter() - start
            out[name]["step"].append(seconds / steps)
            out[name]["rate"].append(entries / seconds)
    return {name: {"step_seconds": spread(v["step"]), "entries_per_sec": spread(v["rate"])}
            for name, v in out.items()}


def precision_breakdown(repeats: int) -> dict:
    """float32 vs bfloat16 epochs of the book's recipe (batch 256) and of full batches (1682
    rows), and the pieces that bound the ratio, each as median [min, max] of `repeats`:

    - layers: the two layers' forward + backward (a masked square loss), float32; bf16 with
      JAX's own derivative (XLA:CPU runs its backward dots in float32); bf16 through
      `mixed_precision.low_precision_matmul` (what `--compute-dtype bfloat16` runs);
    - matmul: one plain [B, 943] . [943, 500] matmul, float32 vs bf16 inputs with float32
      products: the most bf16 can gain on this CPU;
    - transposes: the gather that feeds the bf16 backward dots; adam: one optimiser update.
    """
    import optax
    from autorec_jax.data import movielens
    from autorec_jax.mixed_precision import _transposed, low_precision_matmul
    ratings = movielens.load("ml-100k")
    n, h = 943, 500
    out: dict = {"step_seconds": {}, "entries_per_sec": {}, "bf16_speedup": {},
                 "pieces_seconds": {}}
    for label, batch_size in (("batch_256", 256), ("full_batch", 0)):
        config = config_lib.replace(config_lib.d2l(), parallel="jit", batch_size=batch_size,
                                    last_batch="pad")
        epochs = interleaved_epochs({dtype: config_lib.replace(config, compute_dtype=dtype)
                                     for dtype in ("float32", "bfloat16")}, ratings, repeats)
        steps = {k: e["step_seconds"] for k, e in epochs.items()}
        out["step_seconds"][label] = steps
        out["entries_per_sec"][label] = {k: e["entries_per_sec"] for k, e in epochs.items()}
        out["bf16_speedup"][label] = spread([a / b for a, b in zip(
            steps["float32"]["runs"], steps["bfloat16"]["runs"])])

    def per_call(fn, *a, calls=20):
        jax.block_until_ready(fn(*a))
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(calls):
                result = fn(*a)
            jax.block_until_ready(result)
            times.append((time.perf_counter() - start) / calls)
        return spread(times)

    def naive_bf16(x, k):
        return jax.lax.dot_general(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16),
                                   (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)

    keys = jax.random.split(jax.random.key(0), 3)
    v = jax.random.normal(keys[1], (n, h)) * 0.01
    w = jax.random.normal(keys[2], (h, n)) * 0.01
    pieces = out["pieces_seconds"]
    for b in (256, 1682):
        x = jnp.where(jax.random.uniform(keys[0], (b, n)) < 0.06, 3.0, 0.0)
        for name, matmul in (("float32", jnp.matmul), ("bf16_jax_derivative", naive_bf16),
                             ("bf16_low_precision_matmul", low_precision_matmul)):
            def loss(v, w, x, matmul=matmul):
                pred = matmul(jax.nn.sigmoid(matmul(x, v)), w)
                return jnp.sum(jnp.where(x != 0, pred - x, 0.0) ** 2)
            pieces[f"B{b}_layers_{name}"] = per_call(
                jax.jit(jax.grad(loss, argnums=(0, 1))), v, w, x)
        pieces[f"B{b}_matmul_float32"] = per_call(jax.jit(jnp.matmul), x, v)
        pieces[f"B{b}_matmul_bf16"] = per_call(jax.jit(functools.partial(
            jax.lax.dot_general, dimension_numbers=(((1,), (0,)), ((), ())),
            preferred_element_type=jnp.float32)), x.astype(jnp.bfloat16), v.astype(jnp.bfloat16))
        pieces[f"B{b}_transpose_batch"] = per_call(jax.jit(_transposed),
                                                   x.astype(jnp.bfloat16))
    pieces["transpose_kernel"] = per_call(jax.jit(_transposed), w.astype(jnp.bfloat16))
    opt = optax.adam(1e-3)
    params = {"v": v, "w": w, "b": jnp.zeros(n), "mu": jnp.zeros(h)}

    def adam(p, s, g):
        updates, s = opt.update(g, s, p)
        return optax.apply_updates(p, updates), s
    pieces["adam_update"] = per_call(jax.jit(adam), params, opt.init(params), params)
    return out


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
    parser.add_argument("--scale", action="store_true", help="the scale-out table")
    parser.add_argument("--scale-shapes", default=",".join(SCALE_SHAPES))
    parser.add_argument("--orientations", default="item,user")
    parser.add_argument("--modes", default="jit")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--synthetic-dir", default="/tmp/scale",
                        help="where make_synthetic.py wrote ml-20m.npz and netflix.npz")
    parser.add_argument("--scale-cell", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--precision", action="store_true",
                        help="float32 vs bfloat16 step and its pieces")
    args = parser.parse_args(argv)
    if args.scale_cell is not None:
        reporting.write_json(Path(args.json), scale_cell(json.loads(args.scale_cell)))
        return 0
    if args.scale or args.precision:
        results = {"environment": reporting.environment()}
        if args.precision:
            p = results["precision"] = precision_breakdown(args.repeats)
            print(f"median [min, max] over {args.repeats} repeats, same process")
            for label, steps in p["step_seconds"].items():
                for dtype, s in steps.items():
                    print(f"{label:<10} step {dtype:<9} {fmt(s, 1e3, 3)} ms   entries/s "
                          f"{fmt(p['entries_per_sec'][label][dtype], 1e-6, 1)} M")
                print(f"{label:<10} bf16 speed-up (f32 step / bf16 step) "
                      f"{fmt(p['bf16_speedup'][label], 1, 3)}")
            for name, s in p["pieces_seconds"].items():
                print(f"  {name:<36} {fmt(s, 1e3, 3)} ms")
        if args.scale:
            results["scale"] = scale_table(args)
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        reporting.write_json(out, results)
        print(f"wrote {out}")
        return 0
    if args.compare_with is not None:
        result = compare_with(args.compare_with.resolve(), args.repeats)
        print(f"this / {result['other']} over {args.repeats} alternating runs: epoch time "
              f"{fmt(result['epoch_time_ratio'], 1, 3)}, entries/s "
              f"{fmt(result['entries_per_sec_ratio'], 1, 3)}")
        for name, figures in result["epoch_over_peak"].items():
            for key, value in figures.items():
                print(f"  {name:<5} {key.replace('_', ' ')}: {fmt(value, 1, 3)} x")
        reporting.write_json(Path(args.json), result)
        return 0

    from autorec_jax.data import movielens
    ratings = movielens.load("ml-100k")
    config = config_lib.replace(config_lib.d2l(), parallel="jit")
    results = {"environment": reporting.environment(), "config": config_lib.to_dict(config)}

    meter = peak_meter(args.peak_size)
    peak = {"size": args.peak_size, "gflops": spread([meter() for _ in range(args.repeats)])}
    recipe = epoch_timing(config, ratings, args.repeats, args.epochs_per_repeat, meter)
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
    # Each repeat against the peak measured just before it (same load on the machine).
    paired = [t * g * 1e9 / (step_flops * steps_per_epoch)
              for t, g in zip(recipe["epoch_seconds"]["runs"], recipe["peak_gflops"])]
    results.update(
        peak=peak, recipe=recipe, recipe_without_dropout=no_dropout,
        compile_seconds=experiment.compile_seconds,
        matmul_flops_per_step=step_flops, mean_steps_per_epoch=steps_per_epoch,
        epoch_seconds_at_peak=epoch_at_peak, epoch_over_peak=spread(ratios),
        epoch_over_paired_peak=spread(paired))
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
        ("    each repeat / peak beside it", f"{fmt(results['epoch_over_paired_peak'])} x"),
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
