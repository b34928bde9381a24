"""A run owns its `--out` folder: claiming it, clearing a previous run, and its records.

Files a run writes (and `--overwrite` clears; nothing else in the folder is touched):
  run.json, ids.json, metrics.jsonl, metrics.csv, summary.json, checkpoints/, model/,
  curves.png, retrain/ (the retrained run of `train.retrain`)
Every file is written whole to a temp file and renamed (`reporting`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from autorec_jax import preflight, reporting
from autorec_jax.errors import ConfigError

OWNED = ("run.json", "ids.json", "metrics.jsonl", "metrics.csv", "summary.json",
         "checkpoints", "model", "curves.png", "retrain")


def claim(run_dir: str | Path, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Checks and creates the folder before any data is loaded.

    A folder holding another run's files is refused unless `resume` (continue it) or
    `overwrite` (its run files are deleted first).

    Raises:
      ConfigError: one line naming the folder and the fix.
    """
    run_dir = preflight.check_out_dir(run_dir)
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    present = [name for name in OWNED if (run_dir / name).exists()]
    if present and not resume:
        if not overwrite:
            raise ConfigError(f"{run_dir} holds another run ({', '.join(present)}); pass "
                              "--resume to continue it or --overwrite to replace it")
        for name in present:
            path = run_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def read_history(run_dir: Path, epochs: int) -> list[dict]:
    """The metrics.jsonl records of epochs 1..`epochs` (a resumed run rewrites the rest)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if r["epoch"] <= epochs]


def write_history(run_dir: Path | None, history: list[dict]) -> None:
    """metrics.jsonl and metrics.csv, each rewritten whole."""
    if run_dir is not None:
        reporting.write_jsonl(Path(run_dir) / "metrics.jsonl", history)
        reporting.write_csv(Path(run_dir) / "metrics.csv", history)
