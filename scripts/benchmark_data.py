#!/usr/bin/env python3
"""Loading speed and memory: `scripts/data.py stats` against a bare `pandas.read_csv`.

  python scripts/benchmark_data.py                      # 20M rows, like MovieLens 20M
  python scripts/benchmark_data.py --rows 2000000 --repeats 3

Writes (once, then reuses) a synthetic ratings.csv shaped like MovieLens 20M (header
userId,movieId,rating,timestamp; 138,493 users, 26,744 movies, half-star ratings, unique
pairs, random order), then times each side in fresh processes, repeated: wall time of the
load itself and the process's peak resident memory. Ours includes validation (field counts,
finite ratings in the scale, duplicate pairs) and the raw-id to index mapping. Prints the
ratios (ours / bare) with their spread and writes JSON. Run it with nothing else running.
"""

from __future__ import annotations

import os
import signal

if __name__ == "__main__":  # first: Ctrl-C during the imports below exits in one line
    signal.signal(signal.SIGINT, lambda *_: (os.write(2, b"benchmark_data.py: interrupted\n"),
                                             os._exit(130)))

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent

BARE = """
import resource, sys, time, json
import pandas as pd
start = time.perf_counter()
frame = pd.read_csv(sys.argv[1])
seconds = time.perf_counter() - start
print(json.dumps({"load_seconds": seconds, "rows": len(frame),
                  "peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def write_synthetic(path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    users, movies = 138_493, 26_744
    keys = np.unique(rng.integers(0, users * movies, int(rows * 1.02)))
    keys = rng.permutation(keys)[:rows]
    if len(keys) < rows:
        raise RuntimeError("not enough distinct pairs drawn; raise the oversampling")
    movie_ids = np.sort(rng.choice(131_262, movies, replace=False)) + 1
    frame = pd.DataFrame({
        "userId": keys // movies + 1, "movieId": movie_ids[keys % movies],
        "rating": rng.integers(1, 11, rows) / 2.0,
        "timestamp": rng.integers(789_652_009, 1_427_784_002, rows)})
    tmp = path.with_suffix(".tmp")
    frame.to_csv(tmp, index=False, float_format="%.1f", chunksize=1_000_000)
    tmp.replace(path)


def run(cmd: list[str]) -> dict:
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def spread(values):
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": values}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000_263)
    parser.add_argument("--file", default=None, help="where the synthetic CSV lives")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=str(REPO / "runs" / "benchmark_data.json"))
    args = parser.parse_args(argv)

    path = Path(args.file or Path(tempfile.gettempdir()) / f"autorec_jax_synth_{args.rows}.csv")
    if not path.exists():
        start = time.perf_counter()
        write_synthetic(path, args.rows)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB) in "
              f"{time.perf_counter() - start:.0f} s")
    bare_cmd = [sys.executable, "-c", BARE, str(path)]
    ours_cmd = [sys.executable, str(REPO / "scripts" / "data.py"), "stats", str(path),
                "--json"]
    bare, ours = [], []
    for _ in range(args.repeats):  # interleaved, so drift hits both sides alike
        bare.append(run(bare_cmd))
        ours.append(run(ours_cmd))
    if ours[0]["ratings"] != bare[0]["rows"]:
        raise RuntimeError(f"row counts differ: {ours[0]['ratings']} vs {bare[0]['rows']}")
    result = {"file": str(path), "bytes": path.stat().st_size, "rows": bare[0]["rows"]}
    for key in ("load_seconds", "peak_memory_bytes"):
        result[f"bare_{key}"] = spread([r[key] for r in bare])
        result[f"ours_{key}"] = spread([r[key] for r in ours])
        result[f"ratio_{key}"] = spread([o[key] / b[key] for o, b in zip(ours, bare)])
    print(f"{result['rows']:,} rows, {result['bytes'] / 1e6:.0f} MB; median [min, max] of "
          f"{args.repeats}")
    for key, unit, scale in (("load_seconds", "s", 1), ("peak_memory_bytes", "MiB", 2**-20)):
        b, o, r = (result[f"{side}_{key}"] for side in ("bare", "ours", "ratio"))
        print(f"{key:<18} bare {b['median'] * scale:7.2f} {unit}   ours "
              f"{o['median'] * scale:7.2f} {unit}   ratio {r['median']:.2f} "
              f"[{r['min']:.2f}, {r['max']:.2f}]")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
