"""Training: the train state, the one per-device train step, the epoch scan, and the loop.

`train_step` and `train_epoch` are pure; `train_and_evaluate` is the one place with I/O.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from pathlib import Path
from typing import Any

import flax.training.train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax

from autorec_jax import reporting
from autorec_jax.config import Config, to_dict
from autorec_jax.data import batching, loading
from autorec_jax.data.ratings import Ratings, row_matrix
from autorec_jax.errors import TrainingDivergedError
from autorec_jax.evaluate import EvalData, eval_blocks, summarize
from autorec_jax.losses import loss_denominator, masked_sse, observed_mask
from autorec_jax.model import create_model, init_params
from autorec_jax.optim import create_optimizer
from autorec_jax.parallel import Parallel, axis_index_if, psum_if
from autorec_jax.rows import DeviceRows, densify, to_device_rows

log = logging.getLogger(__name__)
PyTree = Any


class TrainState(flax.training.train_state.TrainState):
    """params, opt_state and step; apply_fn and tx are static. Add cross-step state here."""


def create_train_state(config: Config, num_outputs: int, rng: jax.Array) -> TrainState:
    model = create_model(config.model, num_outputs)
    return TrainState.create(apply_fn=model.apply, params=init_params(model, rng),
                             tx=create_optimizer(config.optim))


def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array, *,
               config: Config, axis_name: str | None = None,
               with_norms: bool | jax.Array = True) -> tuple[TrainState, dict]:
    """One optimiser step on one batch (this device's share of it under pmap).

    Args:
      state: replicated train state.
      batch: "ratings" float32 [B, N] (0 = unobserved), "mask" bool [B, N] (observed
        entries), "row_mask" bool [B] (False for padding rows).
      rng: the run's step key; each step (and device) folds in its own numbers.
      config: static.
      axis_name: the pmap axis, or None under jit.
      with_norms: compute grad/update/param norms (zeros otherwise); may be traced, so an
        epoch pays for the norms only on the steps it reports.

    Returns:
      (new state, metrics of scalars already reduced over devices).
    """
    ratings_BxN, mask_BxN = batch["ratings"], batch["mask"]
    # 1. A fresh key per step, and per device so that dropout masks differ across shards.
    step_rng = jax.random.fold_in(rng, state.step)
    if axis_name is not None:
        step_rng = jax.random.fold_in(step_rng, axis_index_if(axis_name))

    # 2. Global normaliser from summed counts: exact whatever each device's share of ratings.
    num_rows, num_observed = psum_if(
        (jnp.sum(batch["row_mask"], dtype=jnp.float32), jnp.sum(mask_BxN, dtype=jnp.float32)),
        axis_name)
    denominator = loss_denominator(config.train.loss, num_rows=num_rows,
                                   num_observed=num_observed, row_width=ratings_BxN.shape[1])

    def loss_fn(params):
        pred_BxN = state.apply_fn({"params": params}, ratings_BxN, train=True,
                                  rngs={"dropout": step_rng})
        sse, _ = masked_sse(pred_BxN, ratings_BxN, mask_BxN)
        return sse / denominator, sse

    # 3. Local gradients of the local share of the global loss, summed once over devices.
    (loss, sse), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads, loss, sse = psum_if((grads, loss, sse), axis_name)
    # Gradient-level research changes go here (or in optim.py as an optax transform).

    # 4. Update; weight decay is part of the optimiser, applied once after the reduction.
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)

    # 5. Metrics: reduced scalars and norms.
    norms = jax.lax.cond(
        with_norms,
        lambda: tuple(optax.tree.norm(t) for t in (grads, updates, params)),
        lambda: (jnp.zeros((), jnp.float32),) * 3)
    metrics = {"loss": loss, "sse": sse, "observed": num_observed, "rows": num_rows,
               "grad_norm": norms[0], "update_norm": norms[1], "param_norm": norms[2]}
    return new_state, metrics


def train_epoch(state: TrainState, rows: DeviceRows, index_SxB: jax.Array, rng: jax.Array, *,
                config: Config, max_nnz: int, axis_name: str | None = None
                ) -> tuple[TrainState, dict]:
    """S steps in one compiled call: each densifies its rows on the device and trains.

    Args:
      index_SxB: int32 [S, B] row indices per step (negative = padding row).
      max_nnz: static bound on the stored entries of one batch (`batching.max_nnz`).

    Returns:
      (state after S steps, metrics stacked along a leading [S] axis; the norms are those
      of the last step, and zero before it).
    """
    num_steps = index_SxB.shape[0]

    def body(state, step_and_index):
        step, index_B = step_and_index
        ratings_BxN = densify(rows, index_B, max_nnz)
        batch = {"ratings": ratings_BxN, "mask": observed_mask(ratings_BxN),
                 "row_mask": index_B >= 0}
        return train_step(state, batch, rng, config=config, axis_name=axis_name,
                          with_norms=step == num_steps - 1)

    return jax.lax.scan(body, state, (jnp.arange(num_steps), index_SxB))


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything a run sets up before its first epoch: data on the device, compiled calls.

    `train_epoch_fns[S]` runs an epoch of S steps: (state, train_data, sharded index, step_rng)
    -> (state, metrics [S]); it donates the state. `eval_fn` maps (params, EvalData,
    eval_index) to per-block sums, for each held-out set in `heldout` ("test", and "valid"
    when the split carves one out).
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
    train_epoch_fns: dict
    eval_fn: Any
    compile_seconds: float


def setup(config: Config, ratings: Ratings | None = None, cache_dir=None
          ) -> tuple[Experiment, TrainState]:
    """Loads and splits the data, places it on the device(s), builds and compiles the calls.

    Compilation happens here, ahead of time, once per distinct epoch length, so that epochs
    time only execution. `config.seed` gives one root key, split into init, shuffle and step
    keys.
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
    state = parallel.replicate(create_train_state(config, train_rows.num_cols, init_rng))
    step_rng = parallel.replicate(step_rng)
    train_data = parallel.replicate(to_device_rows(train_rows))
    # Held-out sets share one shape (padded CSR), hence one compiled evaluation.
    pad_to = max(rows.nnz for rows in heldout_rows.values())
    heldout = {name: parallel.replicate(EvalData(to_device_rows(train_rows),
                                                 to_device_rows(rows, pad_to)))
               for name, rows in heldout_rows.items()}
    eval_index = parallel.shard(batching.blocks(train_rows.num_rows,
                                                config.train.eval_batch_size))

    repeats = 2 if config.train.last_batch == "rollover" else 1
    train_fn = parallel.compile(
        functools.partial(train_epoch, config=config, max_nnz=batching.max_nnz(
            train_rows.row_lengths, parallel.rows_per_device(batch_size), repeats)),
        num_args=4, donate_carry=True)
    eval_rows = eval_index.shape[-1]
    eval_fn = parallel.compile(
        functools.partial(
            eval_blocks, apply_fn=state.apply_fn,
            max_nnz_inputs=batching.max_nnz(train_rows.row_lengths, eval_rows),
            max_nnz_targets=max(batching.max_nnz(rows.row_lengths, eval_rows)
                                for rows in heldout_rows.values()),
            clip_range=_rating_range(train) if config.train.clip_predictions else None),
        num_args=3, donate_carry=False)

    start = time.perf_counter()
    train_epoch_fns = {
        s: train_fn.lower(state, train_data, parallel.shard(np.zeros((s, batch_size), np.int32)),
                          step_rng).compile()
        for s in sorted(set(steps))}
    compiled_eval = eval_fn.lower(state.params, heldout["test"], eval_index).compile()
    experiment = Experiment(
        config=config, parallel=parallel, train=train, valid=valid, test=test, steps=steps,
        row_width=train_rows.num_cols, num_rows=train_rows.num_rows, train_data=train_data,
        heldout=heldout, eval_index=eval_index, step_rng=step_rng,
        shuffle_seed=np.asarray(jax.random.key_data(shuffle_rng)),
        train_epoch_fns=train_epoch_fns, eval_fn=compiled_eval,
        compile_seconds=time.perf_counter() - start)
    return experiment, state


def run_epoch(experiment: Experiment, state: TrainState, batches_SxB: np.ndarray
              ) -> tuple[TrainState, dict]:
    """One compiled epoch over host-planned batches; returns metrics on the host."""
    fn = experiment.train_epoch_fns[len(batches_SxB)]
    state, metrics = fn(state, experiment.train_data, experiment.parallel.shard(batches_SxB),
                        experiment.step_rng)
    return state, jax.device_get(metrics)


def evaluate(experiment: Experiment, params: PyTree) -> dict[str, dict[str, float]]:
    """RMSE, MAE and count of `params` on each held-out set: {"test": {...}, ...}."""
    return {name: summarize(jax.device_get(experiment.eval_fn(params, data,
                                                              experiment.eval_index)))
            for name, data in experiment.heldout.items()}


@dataclasses.dataclass
class TrainResult:
    state: TrainState
    history: list[dict]
    summary: dict


def train_and_evaluate(config: Config, out_dir: str | Path | None = None, *,
                       ratings: Ratings | None = None, cache_dir=None) -> TrainResult:
    """Trains AutoRec as configured, evaluating test RMSE/MAE; the one function with I/O.

    Args:
      config: the whole configuration.
      out_dir: if given, receives metrics.jsonl (one record per epoch, rewritten atomically
        after each) and summary.json (at the end).
      ratings: use these ratings instead of loading `config.data.dataset`.
      cache_dir: dataset cache folder (default: $AUTOREC_JAX_DATA or ~/.cache/autorec_jax).

    Raises:
      TrainingDivergedError: a non-finite loss; the message names the epoch and step.
    """
    log.debug("config: %s", to_dict(config))
    experiment, state = setup(config, ratings, cache_dir)
    log.info("%s, %s split (seed %d): %d train / %d valid / %d test ratings; %d rows x %d; "
             "%s on %d %s device(s); compiled in %.2f s", loading.dataset_label(config.data),
             config.data.split, config.split_seed, len(experiment.train),
             len(experiment.valid), len(experiment.test), experiment.num_rows,
             experiment.row_width, experiment.parallel.mode, experiment.parallel.num_devices,
             jax.local_devices()[0].platform, experiment.compile_seconds)
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
        start = time.perf_counter()
        batches, carry = batching.epoch_batches(
            shuffle.permutation(experiment.num_rows).astype(np.int32), carry,
            config.train.batch_size, config.train.last_batch)
        state, metrics = run_epoch(experiment, state, batches)
        seconds = time.perf_counter() - start
        entries = int(np.sum(batches >= 0)) * experiment.row_width
        total_seconds, total_entries = total_seconds + seconds, total_entries + entries
        first_step = sum(experiment.steps[:epoch - 1])
        record = {"epoch": epoch, "step": first_step + len(batches),
                  "train_loss": float(np.mean(metrics["loss"])), "train_seconds": seconds,
                  "entries_per_sec": entries / seconds,
                  **{k: float(metrics[k][-1]) for k in ("grad_norm", "update_norm",
                                                        "param_norm")}}
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
    return TrainResult(state=state, history=history, summary=summary)


def _rating_range(train: Ratings) -> tuple[float, float]:
    return float(train.ratings.min()), float(train.ratings.max())


def _write_history(out_dir, history: list[dict]) -> None:
    if out_dir is not None:
        reporting.write_jsonl(Path(out_dir) / "metrics.jsonl", history)
