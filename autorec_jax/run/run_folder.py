"""A run owns its `--out` folder: claiming it, clearing a previous run, and its records.

Files a run writes (and `--overwrite` clears; nothing else in the folder is touched):
  run.json, ids.json, metrics.jsonl, metrics.csv, summary.json, checkpoints/, model/,
  curves.png, retrain/ (the retrained run of `train.retrain`)
Every file is written whole to a temp file and renamed (`reporting`).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import jax

from autorec_jax import networks
from autorec_jax.run import checkpoint, preflight, reporting
from autorec_jax.config import to_dict
from autorec_jax.errors import CheckpointError, ConfigError
from autorec_jax.distributed.parallel import from_primary

log = logging.getLogger(__name__)

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


def open_run(run_dir, experiment, state, best_params, loop, resume) -> tuple[int | None, dict]:
    """Records the run's identity and ids in `run_dir` (process 0's part of opening a run).

    Returns:
      (the epoch of the checkpoint to resume from, or None; `loop` with the identity that
      each checkpoint carries).

    Raises:
      CheckpointError: `resume` of a run with another config or other data.
    """
    config = experiment.config
    fingerprint = experiment.data.facts.fingerprint()
    tree_bytes = sum(x.nbytes for x in jax.tree.leaves(checkpoint_tree(state, best_params)))
    # The kept checkpoints, one being written, the model: refused now, not mid-run.
    preflight.check_free_disk(run_dir, tree_bytes * (config.train.keep_checkpoints + 3))
    epoch = checkpoint.latest(run_dir) if resume else None
    split_files = experiment.data.facts.split_files
    model = networks.identity(experiment.model)
    if resume and (run_dir / "run.json").exists():
        checkpoint.check_run_identity(run_dir, to_dict(config), fingerprint, split_files)
        try:
            networks.check_same(checkpoint.read_json(run_dir / "run.json").get("model"),
                                experiment.model, f"{run_dir}: cannot resume: the run")
        except ConfigError as error:
            raise CheckpointError(str(error)) from None
    checkpoint.write_run_identity(run_dir, to_dict(config), fingerprint, split_files,
                                  model=model)
    ids = {"orientation": config.data.orientation,
           "users": experiment.data.facts.user_ids.tolist(),
           "items": experiment.data.facts.item_ids.tolist()}
    reporting.write_json(run_dir / "ids.json", ids)
    if epoch is None and resume:
        log.info("%s has no checkpoint: starting the run from the beginning", run_dir)
    # Each checkpoint also carries the run's identity, so that it stands on its own.
    return epoch, {**loop, "run": {"config": to_dict(config), "data_fingerprint": fingerprint,
                                   "ids": ids,
                                   **({"split_files": split_files} if split_files else {})}}


_NONE, _FAILED = -1, -2  # from process 0: no checkpoint; it could not open the folder


def open_and_restore(run_dir, save_dir, experiment, state, best_params, loop, resume
                     ) -> tuple:
    """Opens the run on every process: process 0 records it in `run_dir` (`open_run`) and
    picks the checkpoint to resume from; every process restores it from `save_dir`.

    Returns:
      (state, best_params, loop, history: process 0's records of the restored epochs).

    Raises:
      CheckpointError: on every process, when process 0 could not open the folder.
    """
    epoch = None
    if run_dir is not None:
        try:
            epoch, loop = open_run(run_dir, experiment, state, best_params, loop, resume)
        except BaseException:
            if jax.process_count() > 1:
                from_primary(_FAILED)  # the others would wait at the next collective
            raise
    shared = from_primary(_NONE if epoch is None else epoch)
    if shared == _FAILED:
        raise CheckpointError("process 0 could not open the run folder (its log says why)")
    if shared == _NONE:
        return state, best_params, loop, []
    state, best_params, loop = restore(save_dir, shared, state, best_params, loop)
    return state, best_params, loop, read_history(run_dir, shared) if run_dir else []


def restore(save_dir: Path, epoch: int, state, best_params, loop) -> tuple:
    """(state, best_params, loop) from checkpoint `epoch` (on every process: the restore
    is collective); `loop` keeps its identity ("run") where it has one."""
    tree = checkpoint.restore(save_dir, epoch, checkpoint.abstract(
        checkpoint_tree(state, best_params)))
    log.info("resuming %s after epoch %d", save_dir, epoch)
    restored = {**tree[1], **({"run": loop["run"]} if "run" in loop else {})}
    return tree[0]["state"], tree[0].get("best_params"), restored


def checkpoint_tree(state, best_params) -> dict:
    """What a checkpoint holds: the train state, and the best params while selecting."""
    tree = {"state": state}
    if best_params is not None:
        tree["best_params"] = best_params
    return tree
