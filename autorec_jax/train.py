"""The train state and the one pure per-device train step, in pieces, and the epoch scan.

Nothing here does I/O (the loop is `experiment.py`). The step is split as in Flax's mnist
example, so that a caller can hold the globally summed gradients between the pieces:

    grads, metrics = compute_grads(state, batch, keys, ...)   # loss, local grads, one psum
    grads = grad_transform(grads, params=..., rng=keys.grads)  # optional research seam
    state, updates = apply_grads(state, grads)                  # the optax optimiser
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import flax.training.train_state
import jax
import jax.numpy as jnp
import optax

from autorec_jax.config import Config
from autorec_jax.errors import ConfigError
from autorec_jax.losses import (LossFn, ModelOutputs, loss_denominator, observed_mask,
                                reconstruction_loss)
from autorec_jax import networks
from autorec_jax.optim import create_optimizer
from autorec_jax.collectives import axis_index_if, psum_if, pvary_if
from autorec_jax.rows import DeviceRows, densify_fields

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
                       optimizer=None, model=None, initial_params: PyTree | None = None
                       ) -> TrainState:
    """A fresh state for rows of width `num_outputs` (N).

    Args:
      optimizer: replaces the config's optimiser: an optax.GradientTransformation, or a
        function of `config.optim` returning one.
      model: replaces the config's network: a Flax module or a function (config.model, N)
        -> module (the contract: `autorec_jax.networks`); `state.apply_fn` is its apply.
      initial_params: start from these params (a warm start, e.g. GLocal-K's pre-trained
        layers) instead of the module's init; the same tree, shapes and dtypes.

    Raises:
      ConfigError: `initial_params` is not shaped like the module's params.
    """
    module = networks.resolve_model(config, num_outputs, model)
    params = networks.init_params(module, rng, num_outputs)
    if initial_params is not None:
        params = networks.check_params_like(initial_params, params)
    state = TrainState.create(apply_fn=module.apply, params=params,
                              tx=resolve_optimizer(config, optimizer))
    # An int32 array from the start, as every step returns it: one compiled signature. Each
    # leaf its own buffer: an optimiser's init may share one (optax.lbfgs's zeros), and a
    # donating step cannot take one buffer twice.
    return state.replace(step=jnp.zeros((), jnp.int32),
                         opt_state=jax.tree.map(jnp.copy, state.opt_state))


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
                                rngs={"dropout": dropout_rng}, method=networks.forward)
    return ModelOutputs(pred=pred_BxN, hidden=hidden)


def resolve_loss(config: Config, loss_fn: LossFn | None = None) -> LossFn:
    """The loss a step minimises: `loss_fn` (default: the masked reconstruction loss), with
    the kernel penalty of `config.model` added when the network is "kernel" or "glocal"."""
    loss_fn = loss_fn or reconstruction_loss
    model = config.model
    if model.network in ("kernel", "glocal") and (model.lambda_s > 0 or model.lambda_2 > 0):
        from autorec_jax.kernel import make_kernel_loss
        return make_kernel_loss(model.lambda_s, model.lambda_2, loss_fn)
    return loss_fn


def compute_grads(state: TrainState, batch: dict[str, jax.Array], keys: StepKeys, *,
                  config: Config, loss_fn: LossFn | None = None,
                  axis_name: str | None = None) -> tuple[PyTree, dict]:
    """Gradients of the global loss, summed over devices, and the reduced loss metrics.

    Args:
      batch: "ratings" float32 [B, N] (0 = unobserved), "mask" bool [B, N] (default:
        ratings != 0), "row_mask" bool [B] (False: the row counts nowhere, see
        `complete_batch`; default: all True),
        optional "weights" float32 [B, N] and any other per-entry or per-row fields a loss_fn
        reads. Under pmap: this device's rows.
      keys: from `step_keys`.
      loss_fn: replaces `losses.reconstruction_loss` (see the loss contract there).

    Returns:
      (grads of loss = sum / denominator, identical on every device;
       {"loss", "loss_sum", "loss_count", "penalty", "rows", "observed",
        "train/<name>"...}); loss = loss_sum / denominator + penalty).
    """
    loss_fn = resolve_loss(config, loss_fn)
    batch = complete_batch(batch)

    def local_sum(params):
        outputs = model_outputs(state.apply_fn, params, batch["ratings"], keys.dropout)
        terms = loss_fn(outputs, batch, params=params, rng=keys.loss)
        penalty = jnp.zeros((), jnp.float32) if terms.penalty is None else terms.penalty
        return (terms.sum, penalty), (terms.count, terms.metrics or {})

    # Forward pass, then the normaliser from counts summed over devices, then the backward
    # pass seeded with 1/denominator (the gradients come out scaled, with no extra pass over
    # them), then ONE psum of the local gradients: exact on any split of rows over devices.
    # The params are marked varying over the devices (a no-op on one device and under pmap)
    # so that under shard_map's check_vma autodiff does not psum their gradients itself.
    # A penalty (the same on every device) is seeded with 1 / devices: counted once.
    (local, penalty), backward, (count, extra) = jax.vjp(
        local_sum, pvary_if(state.params, axis_name), has_aux=True)
    num_rows = jnp.sum(batch["row_mask"], dtype=jnp.float32)
    num_observed = jnp.sum(batch["mask"], dtype=jnp.float32)
    loss_sum, count, extra, num_rows, num_observed, penalty_sum, num_devices = psum_if(
        (local, count, extra, num_rows, num_observed, penalty, jnp.ones((), jnp.float32)),
        axis_name)
    denominator = loss_denominator(config.train.loss, num_rows=num_rows,
                                   num_observed=jax.lax.stop_gradient(count),
                                   row_width=batch["ratings"].shape[1])
    (grads,) = backward((jnp.ones_like(local) / denominator,
                         jnp.ones_like(penalty) / num_devices))
    grads = psum_if(grads, axis_name)
    penalty = penalty_sum / num_devices
    metrics = {"loss": loss_sum / denominator + penalty, "loss_sum": loss_sum,
               "loss_count": count, "penalty": penalty,
               "rows": num_rows, "observed": num_observed,
               **{f"train/{name}": value for name, value in extra.items()}}
    return grads, metrics


def objective_fn(state: TrainState, batch: dict[str, jax.Array], keys: StepKeys, *,
                 config: Config, loss_fn: LossFn | None = None,
                 axis_name: str | None = None) -> Callable[[PyTree], jax.Array]:
    """params -> the loss `compute_grads` differentiates (sum / denominator + penalty, summed
    over devices; the same batch, dropout masks and keys): the `value_fn` a loss-aware
    optimiser's line search calls (optax.lbfgs). Its value and its gradient (local
    gradients, one psum, as `compute_grads`) are the same on every device, so a line search
    takes the same branches everywhere."""
    loss_fn = resolve_loss(config, loss_fn)
    batch = complete_batch(batch)
    row_width = batch["ratings"].shape[1]

    def local_terms(params):  # params: marked varying over the devices
        outputs = model_outputs(state.apply_fn, params, batch["ratings"], keys.dropout)
        terms = loss_fn(outputs, batch, params=params, rng=keys.loss)
        penalty = jnp.zeros((), jnp.float32) if terms.penalty is None else terms.penalty
        return terms.sum, penalty, terms.count

    def local_objective(params, inverse_denominator, inverse_devices):
        local, penalty, _ = local_terms(params)
        return local * inverse_denominator + penalty * inverse_devices

    def normalisers(params):  # 1 / denominator and 1 / devices (counts: no gradient)
        _, _, count = local_terms(params)
        count, rows, devices = psum_if((jax.lax.stop_gradient(count), jnp.sum(
            batch["row_mask"], dtype=jnp.float32), jnp.ones((), jnp.float32)), axis_name)
        denominator = loss_denominator(config.train.loss, num_rows=rows, num_observed=count,
                                       row_width=row_width)
        return 1.0 / denominator, 1.0 / devices

    @jax.custom_vjp
    def value_fn(params):
        varying = pvary_if(params, axis_name)
        return psum_if(local_objective(varying, *normalisers(varying)), axis_name)

    def forward(params):
        return value_fn(params), params

    def backward(params, cotangent):
        varying = pvary_if(params, axis_name)
        scale = jax.tree.map(jax.lax.stop_gradient, normalisers(varying))
        grads = jax.grad(local_objective)(varying, *scale)
        return (jax.tree.map(lambda g: g * cotangent, psum_if(grads, axis_name)),)

    value_fn.defvjp(forward, backward)
    return value_fn


def apply_grads(state: TrainState, grads: PyTree, *, value: jax.Array | None = None,
                value_fn: Callable[[PyTree], jax.Array] | None = None
                ) -> tuple[TrainState, PyTree]:
    """One optimiser update; returns (new state, the updates applied).

    `value` (the loss at `state.params`) and `value_fn` (`objective_fn`) reach an optimiser
    that takes extra arguments (optax's GradientTransformationExtraArgs: optax.lbfgs reads
    them, the others ignore them).
    """
    if value_fn is not None and isinstance(state.tx, optax.GradientTransformationExtraArgs):
        updates, opt_state = state.tx.update(grads, state.opt_state, state.params,
                                             value=value, grad=grads, value_fn=value_fn)
    else:
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
        may be traced, so an epoch pays for the norms only on the steps it reports.

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
    # 4. Update; weight decay is part of the optimiser, applied once after the reduction. A
    # loss-aware optimiser (optax.lbfgs) also gets the loss and the objective as a function.
    new_state, updates = apply_grads(state, grads, value=metrics["loss"], value_fn=objective_fn(
        state, batch, keys, config=config, loss_fn=loss_fn, axis_name=axis_name))
    # 5. Metrics: reduced scalars and norms.
    norms = jax.lax.cond(
        with_norms, lambda: norm_metrics(grads, updates, new_state.params),
        lambda: jax.tree.map(jnp.zeros_like, jax.eval_shape(
            norm_metrics, grads, updates, new_state.params)))
    return new_state, {**metrics, **norms}


def train_epoch(state: TrainState, rows: DeviceRows, index_SxB: jax.Array, rng: jax.Array, *,
                config: Config, max_nnz: int, axis_name: str | None = None,
                loss_fn: LossFn | None = None, grad_transform: GradTransform | None = None
                ) -> tuple[TrainState, dict]:
    """S steps in one compiled call: each densifies its rows on the device and trains.

    Args:
      rows: the training rows; their extra per-entry `fields` become batch fields.
      index_SxB: int32 [S, B] row indices per step (negative = padding row).
      max_nnz: static bound on the stored entries of one batch (`batching.max_nnz`).

    Returns:
      (state after S steps, metrics stacked along a leading [S] axis; the norms are those
      of the last step, and zero before it).
    """
    num_steps = index_SxB.shape[0]

    def body(state, step_and_index):
        step, index_B = step_and_index
        batch = densify_fields(rows, index_B, max_nnz)
        batch.update(mask=observed_mask(batch["ratings"]), row_mask=index_B >= 0)
        return train_step(state, batch, rng, config=config, axis_name=axis_name,
                          loss_fn=loss_fn, grad_transform=grad_transform,
                          with_norms=step == num_steps - 1)

    return jax.lax.scan(body, state, (jnp.arange(num_steps), index_SxB))


def complete_batch(batch: dict) -> dict:
    """Fills in a caller's dense batch and makes "row_mask" authoritative.

    "row_mask" defaults to all rows; "mask" (default: ratings != 0) becomes
    mask & row_mask[:, None], so a row marked row_mask=False counts nowhere: not in the
    loss, its gradients, the observed count or any denominator. Idempotent.
    """
    out = dict(batch)
    ratings = jnp.asarray(out["ratings"])
    row_mask = jnp.asarray(out.get("row_mask", jnp.ones(ratings.shape[:1], bool)))
    mask = jnp.asarray(out.get("mask", ratings != 0))
    if row_mask.dtype != jnp.bool_ or row_mask.shape != ratings.shape[:1]:
        raise ConfigError(f"batch['row_mask'] must be bool [B] = {ratings.shape[:1]}, got "
                          f"{row_mask.dtype} {row_mask.shape}")
    if mask.dtype != jnp.bool_:
        raise ConfigError(f"batch['mask'] must be a bool array, got {mask.dtype}; pass "
                          "per-entry weights as batch['weights']")
    out["row_mask"] = row_mask
    out["mask"] = mask & row_mask[:, None]
    return out
