"""Run records on disk (metrics.jsonl/.csv, summary.json) and the environment they came from.

Files are written whole to a temp file and renamed, so a crash never leaves a half-written
record and an earlier complete file stays readable until the new one replaces it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import platform
from importlib import metadata
from pathlib import Path

import jax
import numpy as np

from autorec_jax.fileio import atomic_write_bytes

PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "pandas")


def environment() -> dict:
    """Device kind and count, backend and library versions of this process."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    device = jax.local_devices()[0]
    return {"device_kind": device.device_kind, "platform": device.platform,
            "device_count": jax.local_device_count(), "process_index": jax.process_index(),
            "process_count": jax.process_count(), "versions": versions}


def write_json(path: Path, obj) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def finite_or_none(obj):
    """`obj` with every non-finite float (NaN, inf) replaced by None, recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def write_jsonl(path: Path, records: list[dict]) -> None:
    """One JSON object per line; non-finite floats become null, so strict parsers read it."""
    text = "".join(json.dumps(finite_or_none(r), sort_keys=True, allow_nan=False) + "\n"
                   for r in records)
    atomic_write_bytes(Path(path), text.encode())


def write_csv(path: Path, records: list[dict]) -> None:
    """The records as CSV: columns are the union of their keys in first-seen order; None
    and non-finite floats are empty cells."""
    columns = list(dict.fromkeys(key for record in records for key in record))
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    if columns:
        writer.writerow(columns)
    for record in records:
        row = finite_or_none([record.get(c) for c in columns])
        writer.writerow(["" if v is None else repr(v) if isinstance(v, float) else v
                         for v in row])
    atomic_write_bytes(Path(path), buffer.getvalue().encode())


def epoch_record(epoch: int, step: int, metrics: dict, seconds: float, entries: int) -> dict:
    """One metrics.jsonl record from an epoch's stacked step metrics (host arrays [S])."""
    record = {"epoch": epoch, "step": step, "train_loss": float(np.mean(metrics["loss"])),
              "train_seconds": seconds, "entries_per_sec": entries / seconds}
    for key, values in metrics.items():
        if key.split("/")[0] in ("grad_norm", "update_norm", "param_norm"):
            record[key] = float(values[-1])      # computed on the epoch's last step
        elif key.startswith("train/"):
            record[key] = float(np.mean(values))
    if np.any(np.asarray(metrics.get("penalty", 0.0)) != 0):  # a loss's global penalty
        record["train_penalty"] = float(np.mean(metrics["penalty"]))
    return record


def selection_label(metric: str) -> str:
    """"validation RMSE" for valid_rmse, else "validation ndcg@10" and the like."""
    return "validation " + ("RMSE" if metric == "valid_rmse" else metric.removeprefix("valid_"))


def score_fields(name: str, score: dict) -> dict:
    """A held-out set's `evaluate` scores as metrics.jsonl fields: "<name>_rmse", ... and
    any ranking metric ("<name>_ndcg@10", ...)."""
    fields = {f"{name}_rmse": score["rmse"], f"{name}_mae": score["mae"]}
    if score["cold_count"]:
        fields[f"{name}_cold_rmse"] = score["cold_rmse"]
    return {**fields, **ranking_fields(name, score)}


def ranking_fields(name: str, score: dict) -> dict:
    """The ranking metrics of a set's scores as "<name>_<metric>" (none without ranking)."""
    return {f"{name}_{key}": value for key, value in score.items()
            if key.startswith("heldout_") or "@" in key or key == "rank_users"}


def ranking_record(config, options: dict) -> dict:
    """summary.json's "ranking": how the ranking metrics were computed."""
    return {"k": list(options["ks"]), "relevance_threshold": options["threshold"],
            "users": "users" + (" (rows)" if options["users_are_rows"] else
                                " (columns of the item rows)"),
            "full_ranking": "every item without a training rating of the user is a "
                            "candidate; relevant: held-out ratings >= the threshold; users "
                            "without a relevant one are skipped",
            "heldout_ranking": "each user's held-out ratings ranked by prediction, gain "
                               "2^r - 1; users with fewer than 2 are skipped",
            "ties": "the lower item index first", "when": config.train.ranking}


def protocol_record(config) -> dict:
    """How the reported test score was obtained: split, validation, selection, cold start."""
    data, train = config.data, config.train
    if config.selects_on_validation:
        selection = f"best {selection_label(train.select_metric)}" + (
            f", early stopping (patience {train.early_stopping})" if train.early_stopping
            else " over all epochs")
    else:
        selection = "none: the last epoch"
    split = "files" if data.train_ratings is not None else data.split  # the files are it
    return {"split": split, "split_seed": config.split_seed,
            **({"test_ratio": data.test_ratio} if split in ("random", "ratio") else {}),
            "valid_ratio": data.valid_ratio, "selection": selection,
            "retrained_on_train_and_valid": train.retrain, "cold_start": train.cold_start,
            "test_scored": ("once, after selection" if config.selects_on_validation
                            else f"every {train.eval_every} epoch(s); the last is reported"),
            "clip_predictions": train.clip_predictions}
