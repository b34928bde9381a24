"""The train state and the one pure per-device train step, in pieces, and the epoch scan.

Nothing here does I/O (the loop is `experiment.py`). The step is split as in Flax's mnist
example, so that a caller can hold the globally summed gradients between the pieces:

    grads, metrics = compute_grads(state, batch, keys, ...)   # loss, local grads, one psum
    grads = grad_transform(grads, params=..., rng=keys.grads)  # optional research seam
    state, updates = apply_grads(state, grads)                  # the optax optimiser
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import flax.training.train_state
import jax
import jax.numpy as jnp
import optax

from autorec_jax.config import Config
from autorec_jax.losses import (LossFn, ModelOutputs, loss_denominator, observed_mask,
                                reconstruction_loss)
from autorec_jax.model import create_model, init_params
from autorec_jax.optim import create_optimizer
from autorec_jax.parallel import Parallel, axis_index_if, psum_if
from autorec_jax.rows import DeviceRows, gather_entries, scatter_entries

PyTree = Any
GradTransform = Callable[..., PyTree]
# Key streams folded into a step's key (device indices are small numbers).
_LOSS_STREAM, _GRAD_STREAM = 0x6C6F7373, 0x67726164


class TrainState(flax.training.train_state.TrainState):
    """params, opt_state and step; apply_fn and tx are static. Add cross-step state here."""


def resolve_optimizer(config: Config, optimizer=None) -> optax.GradientTransformation:
    """`optimizer` if it is a GradientTransformation, `optimizer(config.optim)` if it is a
    function, else the config's recipe (`optim.create_optimizer`)."""
    if optimizer is None:
        return create_optimizer(config.optim)
    if isinstance(optimizer, optax.GradientTransformation):
        return optimizer
    if callable(optimizer):
        return optimizer(config.optim)
    raise TypeError(f"optimizer must be an optax.GradientTransformation or a function of "
                    f"the OptimConfig returning one, got {type(optimizer).__name__}")


def create_train_state(config: Config, num_outputs: int, rng: jax.Array, *,
                       optimizer=None) -> TrainState:
    """A fresh state for rows of width `num_outputs` (N).

    Args:
      optimizer: replaces the config's optimiser: an optax.GradientTransformation, or a
        function of `config.optim` returning one.
    """
    model = create_model(config.model, num_outputs)
    state = TrainState.create(apply_fn=model.apply, params=init_params(model, rng),
                              tx=resolve_optimizer(config, optimizer))
    # An int32 array from the start, as every step returns it: one compiled signature.
    return state.replace(step=jnp.zeros((), jnp.int32))


class StepKeys(NamedTuple):
    dropout: jax.Array   # per step and device (dropout masks differ across shards)
    loss: jax.Array      # per step and device, for a loss_fn's own randomness
    grads: jax.Array     # per step, the same on every device (for grad_transform)


def step_keys(rng: jax.Array, step: jax.Array, axis_name: str | None = None) -> StepKeys:
    """The keys of one step, derived from the run's step key by folding in numbers."""
    base = jax.random.fold_in(rng, step)
    device = base if axis_name is None else jax.random.fold_in(base, axis_index_if(axis_name))
    return StepKeys(dropout=device, loss=jax.random.fold_in(device, _LOSS_STREAM),
                    grads=jax.random.fold_in(base, _GRAD_STREAM))


def model_outputs(apply_fn: Callable, params: PyTree, ratings_BxN: jax.Array,
                  dropout_rng: jax.Array, row_ids: jax.Array | None = None) -> ModelOutputs:
    """The training-mode forward pass: reconstruction and hidden activations."""
    pred_BxN, hidden = apply_fn({"params": params}, ratings_BxN, train=True, row_ids=row_ids,
                                rngs={"dropout": dropout_rng}, method="forward")
    return ModelOutputs(pred=pred_BxN, hidden=hidden)


def compute_grads(state: TrainState, batch: dict[str, jax.Array], keys: StepKeys, *,
                  config: Config, loss_fn: LossFn | None = None,
                  axis_name: str | None = None) -> tuple[PyTree, dict]:
    """Gradients of the global loss, summed over devices, and the reduced loss metrics.

    Args:
      batch: "ratings" float32 [B, N] (0 = unobserved), "mask" bool [B, N] (default:
        ratings != 0), "row_mask" bool [B] (False for padding rows; default: all True),
        optional "weights" float32 [B, N] and any other per-entry or per-row fields a loss_fn
        reads. Under pmap: this device's rows.
      keys: from `step_keys`.
      loss_fn: replaces `losses.reconstruction_loss` (see the loss contract there).

    Returns:
      (grads of loss = sum / denominator, identical on every device;
       {"loss", "loss_sum", "loss_count", "rows", "observed", "train/<name>"...}).
    """
    loss_fn = loss_fn or reconstruction_loss
    batch = complete_batch(batch)

    def local_sum(params):
        outputs = model_outputs(state.apply_fn, params, batch["ratings"], keys.dropout)
        terms = loss_fn(outputs, batch, params=params, rng=keys.loss)
        return terms.sum, (terms.count, terms.metrics or {})

    # Forward pass, then the normaliser from counts summed over devices, then the backward
    # pass seeded with 1/denominator (the gradients come out scaled, with no extra pass over
    # them), then ONE psum of the local gradients: exact on any split of rows over devices.
    local, backward, (count, extra) = jax.vjp(local_sum, state.params, has_aux=True)
    num_rows = jnp.sum(batch["row_mask"], dtype=jnp.float32)
    num_observed = jnp.sum(batch["mask"], dtype=jnp.float32)
    loss_sum, count, extra, num_rows, num_observed = psum_if(
        (local, count, extra, num_rows, num_observed), axis_name)
    denominator = loss_denominator(config.train.loss, num_rows=num_rows,
                                   num_observed=jax.lax.stop_gradient(count),
                                   row_width=batch["ratings"].shape[1])
    (grads,) = backward(jnp.ones_like(local) / denominator)
    grads = psum_if(grads, axis_name)
    metrics = {"loss": loss_sum / denominator, "loss_sum": loss_sum, "loss_count": count,
               "rows": num_rows, "observed": num_observed,
               **{f"train/{name}": value for name, value in extra.items()}}
    return grads, metrics


def apply_grads(state: TrainState, grads: PyTree) -> tuple[TrainState, PyTree]:
    """One optimiser update; returns (new state, the updates applied)."""
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), updates


def layer_norms(tree: PyTree) -> dict[str, jax.Array]:
    """L2 norm of each layer's leaves together: {"hidden_0": ..., "output": ...}."""
    return {name: optax.tree.norm(sub) for name, sub in tree.items()}


def norm_metrics(grads: PyTree, updates: PyTree, params: PyTree) -> dict[str, jax.Array]:
    """Global and per-layer norms: grad_norm, grad_norm/hidden_0, ..., param_norm/output."""
    out = {}
    for prefix, tree in (("grad_norm", grads), ("update_norm", updates),
                         ("param_norm", params)):
        out[prefix] = optax.tree.norm(tree)
        out.update({f"{prefix}/{name}": v for name, v in layer_norms(tree).items()})
    return out


def train_step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array, *,
               config: Config, axis_name: str | None = None, loss_fn: LossFn | None = None,
               grad_transform: GradTransform | None = None,
               with_norms: bool | jax.Array = True) -> tuple[TrainState, dict]:
    """One optimiser step on one batch (this device's share of it under pmap).

    Args:
      state: replicated train state.
      batch: see `compute_grads`.
      rng: the run's step key; each step (and device) folds in its own numbers.
      config: static.
      axis_name: the pmap axis, or None under jit.
      loss_fn: replaces the masked reconstruction loss (`losses` module: the contract).
      grad_transform: `grad_transform(grads, *, params, rng) -> grads`, applied to the
        globally summed gradients before the optimiser; its rng is the same on every device.
      with_norms: compute global and per-layer grad/update/param norms (zeros otherwise);
        a Python bool (no norms compiled in when False) or a traced bool (a lax.cond).

    Returns:
      (new state, metrics of scalars already reduced over devices).
    """
    # 1. This step's keys: dropout and loss per device, gradient transform shared.
    keys = step_keys(rng, state.step, axis_name)
    # 2-3. Loss from summed sums and counts; local gradients, psummed once.
    grads, metrics = compute_grads(state, batch, keys, config=config, loss_fn=loss_fn,
                                   axis_name=axis_name)
    if grad_transform is not None:
        grads = grad_transform(grads, params=state.params, rng=keys.grads)
    # 4. Update; weight decay is part of the optimiser, applied once after the reduction.
    new_state, updates = apply_grads(state, grads)
    # 5. Metrics: reduced scalars and norms.

    def no_norms():
        return jax.tree.map(jnp.zeros_like, jax.eval_shape(norm_metrics, grads, updates,
                                                           new_state.params))
    if isinstance(with_norms, bool):
        # Static: a step without norms does not keep its updates for them (Adam's update then
        # fuses into the parameter update; a cond would hold the updates as its operand).
        norms = norm_metrics(grads, updates, new_state.params) if with_norms else no_norms()
    else:
        norms = jax.lax.cond(with_norms, lambda: norm_metrics(grads, updates, new_state.params),
                             no_norms)
    return new_state, {**metrics, **norms}


def train_epoch(state: TrainState, rows: DeviceRows, index_SxB: jax.Array, rng: jax.Array, *,
                config: Config, max_nnz: int, axis_name: str | None = None,
                loss_fn: LossFn | None = None, grad_transform: GradTransform | None = None
                ) -> tuple[TrainState, dict]:
    """S steps in one compiled call: each densifies its rows on the device and trains.

    The same steps as S calls of `train_step` (the norms only on the last), scheduled for
    speed: the entries of step s + 1's rows are gathered while step s trains (they do not
    depend on it, so the gathering runs beside its matmuls), and the last step, the one that
    reports norms, runs after the scan, so no other step keeps its updates for them.

    Args:
      rows: the training rows; their extra per-entry `fields` become batch fields.
      index_SxB: int32 [S, B] row indices per step (negative = padding row).
      max_nnz: static bound on the stored entries of one batch (`batching.max_nnz`).

    Returns:
      (state after S steps, metrics stacked along a leading [S] axis; the norms are those
      of the last step, and zero before it).
    """
    def gather(index_B):
        return gather_entries(rows, index_B, max_nnz), index_B

    def step(state, entries, with_norms):
        (flat, values), index_B = entries
        batch = scatter_entries(flat, values, index_B.shape[0], rows.num_cols)
        batch.update(mask=observed_mask(batch["ratings"]), row_mask=index_B >= 0)
        return train_step(state, batch, rng, config=config, axis_name=axis_name,
                          loss_fn=loss_fn, grad_transform=grad_transform,
                          with_norms=with_norms)

    def body(carry, next_index_B):
        state, entries = carry
        next_entries = gather(next_index_B)
        state, metrics = step(state, entries, False)
        return (state, next_entries), metrics

    if index_SxB.shape[0] == 0:
        padding = jnp.full(index_SxB.shape[1:], -1, jnp.int32)
        shapes = jax.eval_shape(lambda: step(state, gather(padding), True)[1])
        return state, jax.tree.map(lambda s: jnp.zeros((0, *s.shape), s.dtype), shapes)
    (state, entries), metrics = jax.lax.scan(body, (state, gather(index_SxB[0])),
                                             index_SxB[1:])
    state, last = step(state, entries, True)
    return state, jax.tree.map(lambda m, x: jnp.concatenate([m, x[None]]), metrics, last)


def complete_batch(batch: dict) -> dict:
    """Fills in a caller's dense batch: "mask" = ratings != 0, "row_mask" = all rows."""
    out = dict(batch)
    ratings = jnp.asarray(out["ratings"])
    out.setdefault("mask", ratings != 0)
    out.setdefault("row_mask", jnp.ones(ratings.shape[:1], bool))
    return out


def make_train_step(config: Config, *, parallel: "str | Parallel" = "auto",
                    loss_fn: LossFn | None = None, grad_transform: GradTransform | None = None,
                    donate: bool = True) -> Callable:
    """A compiled `train_step` for the caller's own loop on the caller's own dense batches.

    Returns `step_fn(state, batch, rng) -> (state, metrics)`: `batch` holds "ratings" float32
    [B, N] and optionally "mask", "row_mask", "weights" and other [B, ...] fields (see
    `compute_grads`); under pmap or sharded the function splits its rows over the devices
    itself (padding with no-op rows), so the loop never branches on the mode. Place the
    state once with `step_fn.parallel.replicate(state, row_width=N)` (N: a row's width;
    with a model axis it splits the N-sized axes). With `donate`, the old state is deleted
    by each call: never reuse it.
    """
    parallel = Parallel.create(parallel, config.train.model_parallel)
    compiled = parallel.compile(
        functools.partial(train_step, config=config, loss_fn=loss_fn,
                          grad_transform=grad_transform),
        in_axes=(None, 0, None), donate_argnums=(0,) if donate else ())

    def step_fn(state: TrainState, batch: dict, rng: jax.Array) -> tuple[TrainState, dict]:
        return compiled(state, parallel.shard_rows(complete_batch(batch)), rng)

    step_fn.parallel = parallel
    return step_fn
