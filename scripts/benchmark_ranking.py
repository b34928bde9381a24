#!/usr/bin/env python3
"""What the ranking metrics cost: evaluation passes with and without them, in one process.

  python scripts/benchmark_ranking.py                       # ML-100K, both orientations
  python scripts/benchmark_ranking.py --ml20m /tmp/scale/ml-20m.npz   # + full ranking at scale

ML-100K (the book's recipe, untrained params: the cost does not depend on them): the RMSE
pass (`eval_fn`) and the RMSE + ranking pass (`rank_fn`, the same inference) alternate,
each timed to its result on the host; reported as median [min, max] seconds and the paired
ratio ranking / plain, for a full-batch pass (every row in one block) and for the default
blocks of `train.eval_batch_size`. Memory: XLA's temporary bytes of each compiled pass
(`memory_analysis`) beside the size of one block's scores [B, N] in float32.
--ml20m: one ranking evaluation of an ML-20M-shaped synthetic split (scripts/
make_synthetic.py) in a process of its own: its seconds and peak RSS, beside the size a
users x items float32 array would have. Take timings while nothing else runs.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout


def spread(values) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _temp_bytes(fn, *args) -> int | None:
    stats = fn.lower(*args).compile().memory_analysis()
    return None if stats is None else int(stats.temp_size_in_bytes)


def ml100k_pass(orientation: str, eval_batch_size: int | None, repeats: int) -> dict:
    import jax
    from autorec_jax import config as config_lib
    from autorec_jax.data import movielens
    from autorec_jax.run.experiment import setup

    ratings = movielens.load("ml-100k")
    config = config_lib.replace(config_lib.d2l(), orientation=orientation, parallel="jit")
    if eval_batch_size is None:   # full batch: every row in one block
        rows = ratings.num_items if orientation == "item" else ratings.num_users
        config = config_lib.replace(config, eval_batch_size=rows)
    experiment, state = setup(config, ratings)
    placed, params = experiment.placed, state.params
    data = placed.heldout["test"]
    calls = {"plain": lambda: experiment.eval_fn(params, data, placed.eval_index),
             "ranking": lambda: experiment.rank_fn(params, data, placed.eval_index,
                                                   placed.eval_rows)}
    for call in calls.values():          # compile, and warm
        jax.block_until_ready(jax.device_get(call()))
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            jax.device_get(call())
            times[name].append(time.perf_counter() - start)
    block_rows, width = placed.eval_index.shape[-1], experiment.row_width
    return {"orientation": orientation, "block_rows": int(block_rows), "row_width": width,
            "blocks": int(placed.eval_index.shape[0]),
            "plain_seconds": spread(times["plain"]), "ranking_seconds": spread(times["ranking"]),
            "ratio": spread([r / p for r, p in zip(times["ranking"], times["plain"])]),
            "plain_temp_bytes": _temp_bytes(experiment.eval_fn, params, data,
                                            placed.eval_index),
            "ranking_temp_bytes": _temp_bytes(experiment.rank_fn, params, data,
                                              placed.eval_index, placed.eval_rows),
            "block_scores_bytes": int(block_rows) * width * 4}


def ml20m_cell(path: str, orientation: str) -> dict:
    """One ranking evaluation at ML-20M shape, in this process."""
    sys.path.insert(0, str(REPO / "scripts"))
    from make_synthetic import load_npz
    from autorec_jax import config as config_lib
    from autorec_jax.run.experiment import evaluate, setup

    ratings = load_npz(Path(path))
    config = config_lib.replace(config_lib.d2l(), orientation=orientation, parallel="jit",
                                eval_batch_size=256)
    start = time.perf_counter()
    experiment, state = setup(config, ratings)
    setup_seconds = time.perf_counter() - start
    start = time.perf_counter()
    scores = evaluate(experiment, state.params, ("test",), ranking=True)["test"]
    seconds = time.perf_counter() - start
    return {"orientation": orientation, "users": ratings.num_users, "items": ratings.num_items,
            "ratings": len(ratings), "setup_seconds": setup_seconds,
            "eval_seconds_with_compile": seconds,
            "compile_seconds": experiment.compile_seconds,
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "users_x_items_float32_bytes": ratings.num_users * ratings.num_items * 4,
            "ndcg@10": scores["ndcg@10"], "recall@10": scores["recall@10"],
            "heldout_ndcg": scores["heldout_ndcg"], "rank_users": scores["rank_users"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--orientations", default="item,user")
    parser.add_argument("--ml20m", default=None, metavar="NPZ",
                        help="an ML-20M-shaped split from scripts/make_synthetic.py")
    parser.add_argument("--skip-ml100k", action="store_true")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--cell", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.cell is not None:
        print(json.dumps(ml20m_cell(*json.loads(args.cell))))
        return 0
    results = {"ml100k": [], "ml20m": []}
    orientations = args.orientations.split(",")
    if not args.skip_ml100k:
        print("ML-100K evaluation pass: plain vs with ranking (median [min, max] s)")
        for orientation in orientations:
            for batch in (None, 1024):
                r = ml100k_pass(orientation, batch, args.repeats)
                results["ml100k"].append(r)
                s, p, q = r["ranking_seconds"], r["plain_seconds"], r["ratio"]
                print(f"  {orientation:4s} blocks {r['blocks']} x {r['block_rows']} rows: "
                      f"plain {p['median']:.4f} [{p['min']:.4f}, {p['max']:.4f}]  ranking "
                      f"{s['median']:.4f} [{s['min']:.4f}, {s['max']:.4f}]  ratio "
                      f"{q['median']:.3f} [{q['min']:.3f}, {q['max']:.3f}]  temp MB "
                      f"{r['plain_temp_bytes'] / 2**20:.1f} -> "
                      f"{r['ranking_temp_bytes'] / 2**20:.1f} (one block's scores "
                      f"{r['block_scores_bytes'] / 2**20:.1f})", flush=True)
    if args.ml20m:
        for orientation in orientations:
            done = subprocess.run([sys.executable, __file__, "--cell",
                                   json.dumps([args.ml20m, orientation])],
                                  capture_output=True, text=True, check=True)
            r = json.loads(done.stdout.strip().splitlines()[-1])
            results["ml20m"].append(r)
            print(f"  ML-20M-shaped {orientation}: {r['users']} users x {r['items']} items, "
                  f"ranking evaluation {r['eval_seconds_with_compile']:.1f} s (compile "
                  f"{r['compile_seconds']:.1f} s), peak RSS {r['peak_rss_bytes'] / 2**30:.2f}"
                  f" GiB; a users x items float32 array: "
                  f"{r['users_x_items_float32_bytes'] / 2**30:.1f} GiB", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
