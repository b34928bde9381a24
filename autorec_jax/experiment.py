"""Setting up a run (data on the device, lazily compiled calls) and the loop: the one place
with I/O. The research seams (`optimizer=`, `loss_fn=`, `grad_transform=`, `entry_fields=`)
enter here and pass unchanged to the pure pieces in `train.py`, under jit and pmap alike.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from autorec_jax import reporting
from autorec_jax.config import Config, to_dict
from autorec_jax.data import batching, loading
from autorec_jax.data.ratings import Ratings, csr_order, row_matrix
from autorec_jax.errors import TrainingDivergedError
from autorec_jax.evaluate import EvalData, eval_blocks, summarize
from autorec_jax.losses import LossFn
from autorec_jax.parallel import CompiledOnFirstUse, Parallel
from autorec_jax.rows import DeviceRows, to_device_rows
from autorec_jax.train import GradTransform, TrainState, create_train_state, train_epoch

log = logging.getLogger(__name__)
PyTree = Any
EntryFields = dict[str, Callable[[Ratings], np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything a run sets up before its first epoch: data on the device, compiled calls.

    `train_epoch_fn(state, train_data, sharded index [S, B], step_rng)` runs an epoch of any
    S steps (compiled on first use of each S) and donates the state. `eval_fn(params,
    EvalData, eval_index)` gives per-block sums for each held-out set in `heldout` ("test",
    and "valid" when the split carves one out).
    """

    config: Config
    parallel: Parallel
    train: Ratings
    valid: Ratings
    test: Ratings
    steps: list[int]               # steps of each epoch, in order
    row_width: int                 # N
    num_rows: int                  # rows of the training matrix
    train_data: DeviceRows
    heldout: dict                  # name -> EvalData on the device
    eval_index: np.ndarray
    step_rng: jax.Array
    shuffle_seed: np.ndarray
    train_epoch_fn: CompiledOnFirstUse
    eval_fn: CompiledOnFirstUse

    @property
    def compile_seconds(self) -> float:
        return self.train_epoch_fn.compile_seconds + self.eval_fn.compile_seconds


def setup(config: Config, ratings: Ratings | None = None, cache_dir=None, *,
          optimizer=None, loss_fn: LossFn | None = None,
          grad_transform: GradTransform | None = None,
          entry_fields: EntryFields | None = None) -> tuple[Experiment, TrainState]:
    """Loads and splits the data, places it on the device(s), builds the compiled calls.

    Nothing is compiled here: each call compiles on its first use of a shape, so injecting
    an optimiser costs no throwaway compile. `config.seed` gives one root key, split into
    init, shuffle and step keys.

    Args:
      optimizer: replaces the config's optimiser (see `train.create_train_state`).
      loss_fn: replaces the masked reconstruction loss (contract: `autorec_jax.losses`).
      grad_transform: `(grads, *, params, rng) -> grads` before the optimiser.
      entry_fields: name -> function of the training `Ratings` returning one float per
        rating (in that Ratings' order); each becomes a [B, N] batch field. "weights" is
        read by the default loss as per-entry weights.
    """
    train, valid, test = loading.load_split(config.data, config.split_seed, ratings, cache_dir)
    orientation = config.data.orientation
    train_rows = row_matrix(train, orientation)
    heldout_rows = {"test": row_matrix(test, orientation)}
    if len(valid):
        heldout_rows["valid"] = row_matrix(valid, orientation)
    parallel = Parallel.create(config.train.parallel)
    batch_size = config.train.batch_size
    steps = batching.steps_per_epoch(train_rows.num_rows, batch_size, config.train.epochs,
                                     config.train.last_batch)
    init_rng, shuffle_rng, step_rng = jax.random.split(jax.random.key(config.seed), 3)
    state = parallel.replicate(create_train_state(config, train_rows.num_cols, init_rng,
                                                  optimizer=optimizer))
    order = csr_order(train, orientation)
    fields = {name: np.asarray(fn(train), np.float32)[order]
              for name, fn in (entry_fields or {}).items()}
    train_data = parallel.replicate(to_device_rows(train_rows, fields=fields))
    # Held-out sets share one shape (padded CSR), hence one compiled evaluation.
    pad_to = max(rows.nnz for rows in heldout_rows.values())
    heldout = {name: parallel.replicate(EvalData(to_device_rows(train_rows),
                                                 to_device_rows(rows, pad_to)))
               for name, rows in heldout_rows.items()}
    eval_index = parallel.shard(batching.blocks(train_rows.num_rows,
                                                config.train.eval_batch_size))

    repeats = 2 if config.train.last_batch == "rollover" else 1
    train_epoch_fn = parallel.compile(
        functools.partial(train_epoch, config=config, loss_fn=loss_fn,
                          grad_transform=grad_transform, max_nnz=batching.max_nnz(
                              train_rows.row_lengths, parallel.rows_per_device(batch_size),
                              repeats)),
        in_axes=(None, None, 0, None), donate_argnums=(0,))
    eval_rows = eval_index.shape[-1]
    eval_fn = parallel.compile(
        functools.partial(
            eval_blocks, apply_fn=state.apply_fn,
            max_nnz_inputs=batching.max_nnz(train_rows.row_lengths, eval_rows),
            max_nnz_targets=max(batching.max_nnz(rows.row_lengths, eval_rows)
                                for rows in heldout_rows.values()),
            clip_range=_rating_range(train) if config.train.clip_predictions else None),
        in_axes=(None, None, 0))
    experiment = Experiment(
        config=config, parallel=parallel, train=train, valid=valid, test=test, steps=steps,
        row_width=train_rows.num_cols, num_rows=train_rows.num_rows, train_data=train_data,
        heldout=heldout, eval_index=eval_index, step_rng=parallel.replicate(step_rng),
        shuffle_seed=np.asarray(jax.random.key_data(shuffle_rng)),
        train_epoch_fn=train_epoch_fn, eval_fn=eval_fn)
    return experiment, state


def run_epoch(experiment: Experiment, state: TrainState, batches_SxB: np.ndarray
              ) -> tuple[TrainState, dict]:
    """One compiled epoch over host-planned batches; returns metrics on the host."""
    state, metrics = experiment.train_epoch_fn(
        state, experiment.train_data, experiment.parallel.shard(batches_SxB),
        experiment.step_rng)
    return state, jax.device_get(metrics)


def evaluate(experiment: Experiment, params: PyTree) -> dict[str, dict[str, float]]:
    """RMSE, MAE and count of any `params` on each held-out set: {"test": {...}, ...}."""
    return {name: summarize(jax.device_get(experiment.eval_fn(params, data,
                                                              experiment.eval_index)))
            for name, data in experiment.heldout.items()}


def epoch_record(epoch: int, step: int, metrics: dict, seconds: float, entries: int) -> dict:
    """One metrics.jsonl record from an epoch's stacked step metrics (host arrays [S])."""
    record = {"epoch": epoch, "step": step, "train_loss": float(np.mean(metrics["loss"])),
              "train_seconds": seconds, "entries_per_sec": entries / seconds}
    for key, values in metrics.items():
        if key.split("/")[0] in ("grad_norm", "update_norm", "param_norm"):
            record[key] = float(values[-1])      # computed on the epoch's last step
        elif key.startswith("train/"):
            record[key] = float(np.mean(values))
    return record


@dataclasses.dataclass
class TrainResult:
    state: TrainState
    history: list[dict]
    summary: dict
    experiment: Experiment         # the run's data and compiled calls (`evaluate`, ...)


def train_and_evaluate(config: Config, out_dir: str | Path | None = None, *,
                       ratings: Ratings | None = None, cache_dir=None, optimizer=None,
                       loss_fn: LossFn | None = None,
                       grad_transform: GradTransform | None = None,
                       entry_fields: EntryFields | None = None) -> TrainResult:
    """Trains AutoRec as configured, evaluating test RMSE/MAE; the one function with I/O.

    Args:
      config: the whole configuration.
      out_dir: if given, receives metrics.jsonl (one record per epoch, rewritten atomically
        after each) and summary.json (at the end).
      ratings: use these ratings instead of loading `config.data.dataset`.
      cache_dir: dataset cache folder (default: $AUTOREC_JAX_DATA or ~/.cache/autorec_jax).
      optimizer, loss_fn, grad_transform, entry_fields: the research seams (see `setup`).

    Raises:
      TrainingDivergedError: a non-finite loss; the message names the epoch and step.
    """
    log.debug("config: %s", to_dict(config))
    experiment, state = setup(config, ratings, cache_dir, optimizer=optimizer, loss_fn=loss_fn,
                              grad_transform=grad_transform, entry_fields=entry_fields)
    log.info("%s, %s split (seed %d): %d train / %d valid / %d test ratings; %d rows x %d; "
             "%s on %d %s device(s)", loading.dataset_label(config.data),
             config.data.split, config.split_seed, len(experiment.train),
             len(experiment.valid), len(experiment.test), experiment.num_rows,
             experiment.row_width, experiment.parallel.mode, experiment.parallel.num_devices,
             jax.local_devices()[0].platform)
    if out_dir is not None:
        reporting.write_json(Path(out_dir) / "ids.json", {
            "orientation": config.data.orientation,
            "users": experiment.train.user_ids.tolist(),
            "items": experiment.train.item_ids.tolist()})
    shuffle = np.random.default_rng(experiment.shuffle_seed)
    history: list[dict] = []
    carry = np.zeros(0, np.int32)
    total_seconds, total_entries, scores = 0.0, 0, None
    for epoch in range(1, config.train.epochs + 1):
        batches, carry = batching.epoch_batches(
            shuffle.permutation(experiment.num_rows).astype(np.int32), carry,
            config.train.batch_size, config.train.last_batch)
        compile_before = experiment.compile_seconds
        start = time.perf_counter()
        state, metrics = run_epoch(experiment, state, batches)
        # Compilation on first use of an epoch length is not training time.
        seconds = time.perf_counter() - start - (experiment.compile_seconds - compile_before)
        entries = int(np.sum(batches >= 0)) * experiment.row_width
        total_seconds, total_entries = total_seconds + seconds, total_entries + entries
        first_step = sum(experiment.steps[:epoch - 1])
        record = epoch_record(epoch, first_step + len(batches), metrics, seconds, entries)
        history.append(record)
        bad = np.flatnonzero(~np.isfinite(metrics["loss"]))
        if len(bad):
            _write_history(out_dir, history)
            raise TrainingDivergedError(
                f"non-finite training loss at epoch {epoch}, step {first_step + bad[0] + 1}; "
                "lower optim.lr or check the ratings")
        if epoch % config.train.eval_every == 0 or epoch == config.train.epochs:
            start = time.perf_counter()
            scores = evaluate(experiment, state.params)
            for name, score in scores.items():
                record.update({f"{name}_rmse": score["rmse"], f"{name}_mae": score["mae"]})
            record["eval_seconds"] = time.perf_counter() - start
        _write_history(out_dir, history)
        log.info("epoch %3d  train loss %.4f  %stest RMSE %s  %.3f s  %.1fM entries/s",
                 epoch, record["train_loss"],
                 f"valid RMSE {record['valid_rmse']:.4f}  " if "valid_rmse" in record else "",
                 f"{record['test_rmse']:.4f}" if "test_rmse" in record else "   -  ",
                 seconds, entries / seconds / 1e6)

    test = scores["test"]
    summary = {
        "config": to_dict(config),
        "test_rmse": test["rmse"], "test_mae": test["mae"], "test_count": int(test["count"]),
        **({"valid_rmse": scores["valid"]["rmse"], "valid_mae": scores["valid"]["mae"]}
           if "valid" in scores else {}),
        "train_seconds": total_seconds, "entries_per_sec": total_entries / total_seconds,
        "compile_seconds": experiment.compile_seconds, "steps": sum(experiment.steps),
        "parallel": experiment.parallel.mode, "num_devices": experiment.parallel.num_devices,
        "seams": {name: _describe(value) for name, value in (
            ("optimizer", optimizer), ("loss_fn", loss_fn), ("grad_transform", grad_transform),
            ("entry_fields", entry_fields)) if value is not None},
        "data": {"dataset": loading.dataset_label(config.data), "split": config.data.split,
                 "split_seed": config.split_seed, "orientation": config.data.orientation,
                 "num_users": experiment.train.num_users,
                 "num_items": experiment.train.num_items,
                 "train_ratings": len(experiment.train), "valid_ratings": len(experiment.valid),
                 "test_ratings": len(experiment.test),
                 "rows": experiment.num_rows, "row_width": experiment.row_width},
        **reporting.environment(),
    }
    if out_dir is not None:
        reporting.write_json(Path(out_dir) / "summary.json", summary)
    log.info("final test RMSE %.4f  MAE %.4f  (%d test ratings; %.2f s training, "
             "%.1fM entries/s, %.2f s compile)", test["rmse"], test["mae"],
             int(test["count"]), total_seconds, total_entries / total_seconds / 1e6,
             experiment.compile_seconds)
    return TrainResult(state=state, history=history, summary=summary,
                       experiment=experiment)


def _describe(seam) -> str:
    """A seam's name for summary.json (what was injected, not its code)."""
    if isinstance(seam, dict):
        return ", ".join(sorted(seam))
    return getattr(seam, "__qualname__", None) or type(seam).__name__


def _rating_range(train: Ratings) -> tuple[float, float]:
    return float(train.ratings.min()), float(train.ratings.max())


def _write_history(out_dir, history: list[dict]) -> None:
    if out_dir is not None:
        reporting.write_jsonl(Path(out_dir) / "metrics.jsonl", history)
