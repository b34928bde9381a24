"""Helpers for gradient-level research that the train step does not need itself."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from autorec_jax.config import Config
from autorec_jax.errors import ConfigError
from autorec_jax.losses import LossFn, loss_denominator, reconstruction_loss
from autorec_jax.networks import resolve_model
from autorec_jax.train import TrainState, complete_batch, model_outputs, step_keys

PyTree = Any


def per_row_grads(state: TrainState, batch: dict, rng: jax.Array, *, config: Config,
                  loss_fn: LossFn | None = None, model=None) -> PyTree:
    """Per-row (per-example) gradients of one batch's loss, by `jax.vmap` over its rows.

    Row b's gradient is that of its share of the batch loss: its loss sum over the batch's
    global normaliser (`train.loss`). For a loss that is a sum over rows (the default, and
    any per-entry or per-row penalty), the rows' gradients therefore add up to the batch
    gradient of `train_step` under every normalisation. Each row draws the dropout mask it
    has in the batched step (hash dropout seeded by its batch position), with the same step
    keys as `train_step` under jit at `state.step`.

    A loss's `penalty` (a global term of the params, `LossTerms.penalty`) belongs to no
    row and is left out. The dropout check applies to `model.AutoRec`; another module must
    draw its per-row randomness from `row_ids` (the `networks` contract).

    Args:
      state: the train state (not donated).
      batch: a dense batch as for `make_train_step` ("ratings" [B, N], ...).
      rng: the run's step key, as given to `train_step`.
      model: replaces `state.apply_fn` (a Flax module or a function (config.model, N)).

    Returns:
      A tree shaped like `state.params` with a leading [B] axis.
    """
    if config.model.dropout > 0 and config.model.dropout_rng != "hash":
        raise ConfigError("per_row_grads needs model.dropout_rng=hash (a row cannot redraw "
                          "its slice of flax's batch-wide dropout mask) or dropout 0")
    loss_fn = loss_fn or reconstruction_loss
    batch = complete_batch(batch)
    if model is not None:
        state = state.replace(apply_fn=resolve_model(
            config, batch["ratings"].shape[1], model).apply)
    keys = step_keys(rng, state.step)
    ratings_BxN = batch["ratings"]
    whole = loss_fn(model_outputs(state.apply_fn, state.params, ratings_BxN, keys.dropout),
                    batch, params=state.params, rng=keys.loss)
    denominator = loss_denominator(
        config.train.loss, num_rows=jnp.sum(batch["row_mask"], dtype=jnp.float32),
        num_observed=whole.count, row_width=ratings_BxN.shape[1])

    def row_loss(params, row, row_id):
        row_batch = jax.tree.map(lambda x: x[None], row)
        outputs = model_outputs(state.apply_fn, params, row_batch["ratings"], keys.dropout,
                                row_ids=row_id[None])
        return loss_fn(outputs, row_batch, params=params, rng=keys.loss).sum / denominator

    return jax.vmap(jax.grad(row_loss), in_axes=(None, 0, 0))(
        state.params, batch, jnp.arange(ratings_BxN.shape[0]))
