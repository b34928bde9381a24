"""The masked reconstruction loss and the loss contract, as sums and counts.

Only observed entries enter: the error at an unobserved entry contributes nothing to the loss
and nothing to any gradient (it is selected away, not multiplied by a mask, so even a
non-finite prediction there cannot leak into the gradients).

The loss contract (the `loss_fn=` seam of `train_step`, `setup`, `train_and_evaluate`):

    loss_fn(outputs: ModelOutputs, batch: dict, *, params, rng) -> LossTerms

It returns this device's SUMS, never means: the library psums `sum`, `count` and every
metric over devices and divides the summed `sum` by the normaliser that `train.loss` names
(`loss_denominator`), so any loss stays exact however the rows fall across devices.
The batch it gets has `batch["mask"]` already AND-ed with `batch["row_mask"]`
(`train.complete_batch`), so a per-entry term that reads the mask skips rows marked False;
a per-row term (a penalty on the hidden code, say) must read `batch["row_mask"]` itself.
A term of the params alone (a weight penalty, `kernel.kernel_penalty`) goes in `penalty`:
it is counted once whatever the number of devices, and is not divided by the normaliser,
so the objective is sum / denominator + penalty.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from autorec_jax.errors import ConfigError

PyTree = Any


class ModelOutputs(NamedTuple):
    """What the network computed on a batch (training mode)."""

    pred: jax.Array                 # float32 [B, N] reconstruction
    hidden: tuple[jax.Array, ...]   # each hidden layer's activations [B, H_i], before dropout


class LossTerms(NamedTuple):
    """This device's share of a loss, as sums (see the module docstring)."""

    sum: jax.Array                  # scalar: the objective's sum over this device's rows
    count: jax.Array                # scalar: what `train.loss=observed` divides by
    metrics: dict | None = None     # extra scalar sums, psummed and logged as train/<name>
    penalty: jax.Array | None = None  # scalar: a global term of the params alone, the same
                                    # on every device; added once, not normalised


LossFn = Callable[..., LossTerms]


def observed_mask(target_BxN: jax.Array) -> jax.Array:
    """The default mask: an entry is observed where its rating is non-zero (bool [B, N])."""
    return target_BxN != 0


def masked_sse(pred_BxN: jax.Array, target_BxN: jax.Array, mask_BxN: jax.Array, *,
               weights_BxN: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(Weighted) sum of squared errors over observed entries, and the matching count.

    Args:
      pred_BxN, target_BxN: float [B, N].
      mask_BxN: bool [B, N], True where observed. A float array here is an error: pass
        per-entry weights as `weights_BxN`.
      weights_BxN: optional float [B, N] per-entry weights; unobserved entries are ignored
        whatever their weight.

    Returns:
      (sum of w * err^2, sum of w) over observed entries, float32 scalars; w = 1 by default,
      so the count is then the number of observed entries.
    """
    if mask_BxN.dtype != jnp.bool_:
        raise ConfigError(f"masked_sse: mask must be a bool array, got {mask_BxN.dtype}; "
                          "pass per-entry weights as weights_BxN=")
    err_BxN = jnp.where(mask_BxN, pred_BxN - target_BxN, 0.0)
    if weights_BxN is None:
        return jnp.sum(err_BxN * err_BxN), jnp.sum(mask_BxN, dtype=jnp.float32)
    w_BxN = jnp.where(mask_BxN, weights_BxN, 0.0)
    return jnp.sum(w_BxN * err_BxN * err_BxN), jnp.sum(w_BxN, dtype=jnp.float32)


def reconstruction_loss(outputs: ModelOutputs, batch: dict, *, params: PyTree = None,
                        rng: jax.Array | None = None) -> LossTerms:
    """The default loss: masked SSE, weighted by `batch["weights"]` when the batch has it."""
    del params, rng
    sse, count = masked_sse(outputs.pred, batch["ratings"], batch["mask"],
                            weights_BxN=batch.get("weights"))
    return LossTerms(sum=sse, count=count)


def loss_denominator(kind: str, *, num_rows: jax.Array, num_observed: jax.Array,
                     row_width: int) -> jax.Array:
    """What the global loss sum is divided by to give the loss.

    Args:
      kind: "book": 0.5 * mean over all B x N entries (gluon L2Loss averaged over the batch);
        "observed": mean over observed entries (weighted: over the weights' sum);
        "sum": the plain sum.
      num_rows: real (non-padding) rows in the whole batch, over all devices.
      num_observed: the loss's count summed over all devices.
      row_width: N.
    """
    if kind == "book":
        return 2.0 * jnp.maximum(num_rows, 1.0) * row_width
    if kind == "observed":
        return jnp.maximum(num_observed, 1e-12)
    if kind == "sum":
        return jnp.ones((), jnp.float32)
    raise ValueError(f"unknown loss normalisation {kind!r}")
