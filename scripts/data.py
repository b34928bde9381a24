#!/usr/bin/env python3
"""Inspect and split rating datasets (named ones or your own files) without training.

  python scripts/data.py stats ml-100k
  python scripts/data.py stats ratings.csv --sep , --columns user,item,rating,timestamp
  python scripts/data.py stats netflix/training_set            # Netflix Prize layout
  python scripts/data.py split ml-1m --split kfold --folds 5 --fold 0 --out splits/ml1m-f0
  python scripts/data.py split ratings.csv --split ratio --valid-ratio 0.1 --out splits/mine
  python scripts/data.py parts ml-20m --count 8 --out parts/ml20m --last-batch pad ...
  python scripts/data.py parts --train-ratings splits/u1 --count 8 --out parts/u1
  python scripts/data.py thin ml-100k --fraction 0.05 --seed 0 --out ml100k-5pct.tsv
  python scripts/data.py rescale ml-100k --factor 20 --out ml100k-x20.tsv

`stats` prints counts, density, the rating histogram, load time (parse, validation and id
mapping) and the process's peak memory; `split` writes train/valid/test files (raw ids,
tab-separated) and split.json, replacing those of an earlier split in the same folder (and
only those); `parts` deals the split's rows into --count row parts for a multi-process run
(autorec_jax/data/parts.py: each process then loads only its own devices' parts, with
`scripts/train.py --parts DIR`; from a split given as files, `--train-ratings DIR|FILE
--test-ratings FILE [--valid-ratings FILE]` replace SOURCE, and meta.json records each
file's path and SHA-256); `thin` writes a seeded uniform sample of --fraction of
the ratings (data/variants.py: round(fraction * R) drawn without replacement with
--seed) and `rescale` every rating times --factor, each as one tab-separated ratings file
(user, item, rating[, timestamp]; written atomically) for `--ratings FILE`. Format and
split options are the data flags of scripts/train.py (`parts` also takes --seed and
--cold-start, which its files depend on). A bad flag or --out exits with status 2, a
malformed file with status 1; each with a one-line error naming the file (and line) and
the fix.
"""

from __future__ import annotations

import os
import signal

if __name__ == "__main__":  # first: Ctrl-C during the imports below exits in one line
    signal.signal(signal.SIGINT, lambda *_: (os.write(2, b"data.py: interrupted\n"),
                                             os._exit(130)))

import argparse
import dataclasses
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from autorec_jax.run.runtime import Interrupts  # noqa: E402 (stdlib only)

INTERRUPTS = Interrupts("data.py")
if __name__ == "__main__":
    INTERRUPTS.install()

from autorec_jax import config as config_lib  # noqa: E402
from autorec_jax.run import cli, preflight  # noqa: E402
from autorec_jax.data import loading, movielens, parts  # noqa: E402
from autorec_jax.fileio import atomic_path, clean_stale_temps  # noqa: E402
from autorec_jax.errors import AutoRecError, ConfigError  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("stats", "load a dataset and print its statistics"),
                       ("split", "write a train/valid/test split to files"),
                       ("parts", "write the split's rows as row parts (multi-process runs)"),
                       ("thin", "write a seeded uniform sample of the ratings to a file"),
                       ("rescale", "write the ratings times a factor to a file")):
        sub = commands.add_parser(name, help=text, description=text + (
            ". From a split given as files: no SOURCE, --train-ratings DIR (train.*, test.*, "
            "valid.*) or --train-ratings FILE --test-ratings FILE [--valid-ratings FILE]; "
            "meta.json records each file's path and SHA-256" if name == "parts" else ""))
        sub.add_argument("source", nargs="?" if name == "parts" else None,
                         help=f"a dataset name ({', '.join(movielens.DATASETS)}), "
                              "a ratings file, or a Netflix folder" + (
                                  "; or none, with --train-ratings (a split from files)"
                                  if name == "parts" else ""))
        sub.add_argument("--json", action="store_true", help="print one JSON object")
        if name in ("split", "parts"):
            sub.add_argument("--out", required=True, help="folder for the split's files")
        if name in ("thin", "rescale"):
            sub.add_argument("--out", required=True, help="the ratings file to write")
        if name == "thin":
            sub.add_argument("--fraction", type=float, required=True,
                             help="fraction of the ratings kept, in (0, 1] (draw: --seed)")
        if name == "rescale":
            sub.add_argument("--factor", type=float, required=True,
                             help="every rating is multiplied by this (> 0)")
        if name == "parts":
            sub.add_argument("--count", type=int, required=True,
                             help="number of parts: a multiple of the data devices")
            sub.add_argument("--cold-start", default="network",
                             help="the run's cold-start rule (its fields are stored)")
        cli.add_config_flags(sub, groups=("data",))
    return parser


def data_config(args) -> config_lib.Config:
    """The data config of SOURCE (or, for `parts`, of the split files) and the flags.

    Raises:
      ConfigError: SOURCE and --train-ratings both given, or neither; --train-ratings
        with another command than `parts`.
    """
    base = config_lib.d2l()
    source = args.source
    if source in movielens.DATASETS:
        base = config_lib.replace(base, dataset=source)
    elif source is not None:
        base = config_lib.replace(base, ratings=source)
    config = cli.config_from_args(args, base)
    files = config.data.train_ratings is not None
    if files and args.command != "parts":
        raise ConfigError(f"--train-ratings (a split from files) is for `parts` and "
                          f"scripts/train.py; `{args.command}` reads SOURCE")
    if files and source is not None:
        raise ConfigError(f"SOURCE {source!r} and --train-ratings both name the data; give "
                          "one")
    if not files and source is None:
        raise ConfigError("parts needs SOURCE or --train-ratings DIR|FILE (a split from "
                          "files)")
    return config


def peak_memory_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def stats(config: config_lib.Config, as_json: bool) -> None:
    start = time.perf_counter()
    ratings = loading.load_ratings(config.data)
    seconds = time.perf_counter() - start
    out = {"source": loading.dataset_label(config.data), **movielens.summary(ratings),
           "load_seconds": seconds, "peak_memory_bytes": peak_memory_bytes()}
    if as_json:
        print(json.dumps(out))
        return
    print(f"source       {out['source']}")
    print(f"ratings      {out['ratings']:,}")
    print(f"users        {out['users']:,}")
    print(f"items        {out['items']:,}")
    print(f"density      {out['density']:.4%}")
    print("histogram    " + "  ".join(f"{k}: {v:,} ({v / out['ratings']:.1%})"
                                      for k, v in out["histogram"].items()))
    if "first_timestamp" in out:
        first, last = (time.strftime("%Y-%m-%d", time.gmtime(out[k]))
                       for k in ("first_timestamp", "last_timestamp"))
        print(f"timestamps   {first} .. {last}")
    print(f"load time    {seconds:.2f} s (parse, validation, id mapping)")
    print(f"peak memory  {out['peak_memory_bytes'] / 2**20:,.0f} MiB (process maximum RSS)")


PARTS = ("train", "valid", "test")
RECORD = "split.json"  # with PARTS' .tsv files, all that `split` owns in its folder


def split(config: config_lib.Config, out_dir: str, as_json: bool) -> None:
    """Writes the split's parts, then split.json; an earlier split's files never survive.

    split.json is removed first and written last, so a folder holding it holds one whole
    split.
    """
    ratings = loading.load_ratings(config.data)
    train, valid, test = loading.load_split(config.data, config.split_seed, ratings)
    out = Path(out_dir)
    clean_stale_temps(out)
    (out / RECORD).unlink(missing_ok=True)
    counts = {}
    for name, part in zip(PARTS, (train, valid, test)):
        if name == "valid" and not len(part):
            (out / f"{name}.tsv").unlink(missing_ok=True)  # an earlier split's carve-out
            continue
        with atomic_path(out / f"{name}.tsv") as tmp:
            _write_part(tmp, part)
        counts[name] = len(part)
    record = {"source": loading.dataset_label(config.data), "split": config.data.split,
              "seed": config.split_seed, "counts": counts,
              "options": {k: v for k, v in dataclasses.asdict(config.data).items()
                          if k in ("test_ratio", "valid_ratio", "folds", "fold", "leave_last")},
              "files": {k: f"{k}.tsv" for k in counts},
              "columns": "user\titem\trating" + (
                  "\ttimestamp" if ratings.timestamps is not None else "")}
    with atomic_path(out / RECORD) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    if as_json:
        print(json.dumps(record))
    else:
        print(f"wrote {', '.join(f'{k}: {v:,}' for k, v in counts.items())} ratings to {out}")


def variant(config: config_lib.Config, args) -> None:
    """`thin` or `rescale`: the whole dataset transformed, one ratings file (atomic)."""
    from autorec_jax.data import variants
    ratings = loading.load_ratings(config.data)
    try:
        out = (variants.thin(ratings, args.fraction, config.seed) if args.command == "thin"
               else variants.rescale(ratings, args.factor))
    except ValueError as err:
        raise ConfigError(f"--{'fraction' if args.command == 'thin' else 'factor'}: {err}")
    path = Path(args.out).expanduser()
    with atomic_path(path) as tmp:
        _write_part(tmp, out)
    record = {"source": loading.dataset_label(config.data), "command": args.command,
              "ratings": len(out), "out": str(path),
              **({"fraction": args.fraction, "seed": config.seed} if args.command == "thin"
                 else {"factor": args.factor})}
    print(json.dumps(record) if args.json else f"wrote {len(out):,} ratings to {path}")


def _write_part(path: Path, part) -> None:
    import pandas as pd
    columns = {"user": part.user_ids[part.users], "item": part.item_ids[part.items],
               "rating": part.ratings}
    if part.timestamps is not None:
        columns["timestamp"] = part.timestamps
    pd.DataFrame(columns).to_csv(path, sep="\t", header=False, index=False,
                                 float_format="%g")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = data_config(args)
        if args.command == "parts":
            config = config_lib.replace(config, cold_start=args.cold_start)
            if Path(args.out).expanduser().exists():  # before the data is loaded
                raise ConfigError(f"{args.out} exists; choose a new folder for the parts "
                                  "(or remove it)")
        if args.command == "split":
            preflight.check_out_dir(args.out)  # before the data is loaded
        if args.command == "thin" and not 0.0 < args.fraction <= 1.0:
            raise ConfigError(f"--fraction must be in (0, 1], got {args.fraction}")
        if args.command == "rescale" and not args.factor > 0:
            raise ConfigError(f"--factor must be > 0, got {args.factor}")
    except ConfigError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    try:
        if args.command == "stats":
            stats(config, args.json)
        elif args.command == "split":
            split(config, args.out, args.json)
        elif args.command in ("thin", "rescale"):
            variant(config, args)
        else:
            info = parts.write_parts(config, args.out, args.count)
            record = {"folder": str(info.folder), "parts": info.num_parts,
                      "rows_per_part": [int(n) for n in info.sizes], **info.meta["ratings"]}
            print(json.dumps(record) if args.json else
                  f"wrote {info.num_parts} parts ({min(record['rows_per_part'])}-"
                  f"{max(record['rows_per_part'])} rows each) to {info.folder}")
    except AutoRecError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
