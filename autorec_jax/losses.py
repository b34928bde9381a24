"""The masked reconstruction loss, as sums and counts so that it reduces exactly across devices.

Only observed entries enter: the error at an unobserved entry contributes nothing to the loss
and nothing to any gradient (it is selected away, not multiplied by a mask, so even a
non-finite prediction there cannot leak into the gradients).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def observed_mask(target_BxN: jax.Array) -> jax.Array:
    """The default mask: an entry is observed where its rating is non-zero (bool [B, N])."""
    return target_BxN != 0


def masked_sse(pred_BxN: jax.Array, target_BxN: jax.Array, mask_BxN: jax.Array
               ) -> tuple[jax.Array, jax.Array]:
    """Sum of squared errors over observed entries, and their count (both float32 scalars)."""
    err_BxN = jnp.where(mask_BxN, pred_BxN - target_BxN, 0.0)
    return jnp.sum(err_BxN * err_BxN), jnp.sum(mask_BxN, dtype=jnp.float32)


def loss_denominator(kind: str, *, num_rows: jax.Array, num_observed: jax.Array,
                     row_width: int) -> jax.Array:
    """What the global SSE is divided by to give the loss.

    Args:
      kind: "book": 0.5 * mean over all B x N entries (gluon L2Loss averaged over the batch);
        "observed": mean over observed entries; "sum": the plain SSE.
      num_rows: real (non-padding) rows in the whole batch, over all devices.
      num_observed: observed entries in the whole batch, over all devices.
      row_width: N.
    """
    if kind == "book":
        return 2.0 * jnp.maximum(num_rows, 1.0) * row_width
    if kind == "observed":
        return jnp.maximum(num_observed, 1.0)
    if kind == "sum":
        return jnp.ones((), jnp.float32)
    raise ValueError(f"unknown loss normalisation {kind!r}")
