"""The separate pure evaluator: reconstruct training rows, score held-out entries.

The network reads rows of the TRAINING matrix in inference mode (no dropout); its output is
compared with the test ratings at the test entries only - the book's
`sqrt(sum((test - sign(test) * recon)^2) / sum(sign(test)))`. Test ratings are never an
input. Blocks return sums (squared error, absolute error, count); the host adds them in
float64, so the blocked result equals the whole-set result.

Cold start: the targets may carry per-entry fields (`coldstart.eval_fields`), "cold" (1 where
the entry's user or item has no training rating) and "fallback" (the `train.cold_start`
rule's prediction). At cold entries "fallback" replaces the network's prediction, and cold
entries are also summed apart (`cold_sse`, `cold_count`).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from autorec_jax.collectives import psum_if
from autorec_jax.rows import DeviceRows, densify, densify_fields

PyTree = Any


@flax.struct.dataclass
class EvalData:
    """Device-resident rows: `inputs` (the training ratings) and `targets` (held-out ones,
    with the cold-start fields "cold" and "fallback" when given)."""

    inputs: DeviceRows
    targets: DeviceRows


def eval_block(params: PyTree, data: EvalData, index_B: jax.Array, *,
               apply_fn: Callable, max_nnz_inputs: int, max_nnz_targets: int,
               clip_range: tuple[float, float] | None = None,
               axis_name: str | None = None) -> dict[str, jax.Array]:
    """Sums over the held-out entries of rows `index_B` (int32 [B], negative = padding).

    `clip_range` clips the network's predictions only: a cold-start rule's value is used as
    given (a mean lies in the training range anyway; a constant is the caller's choice).
    Without a "cold" target field no entry counts as cold.

    Returns:
      {"sse", "abs_err", "count"} over every held-out entry (cold ones with their rule's
      prediction) and {"cold_sse", "cold_count"} over the cold ones: float32 scalars,
      summed over devices.
    """
    inputs_BxN = densify(data.inputs, index_B, max_nnz_inputs)
    heldout = densify_fields(data.targets, index_B, max_nnz_targets)
    targets_BxN = heldout["ratings"]
    pred_BxN = apply_fn({"params": params}, inputs_BxN, train=False)
    if clip_range is not None:
        pred_BxN = jnp.clip(pred_BxN, *clip_range)
    mask_BxN = targets_BxN != 0
    cold_BxN = mask_BxN & (heldout["cold"] != 0) if "cold" in heldout else jnp.zeros_like(
        mask_BxN)
    if "fallback" in heldout:
        pred_BxN = jnp.where(cold_BxN, heldout["fallback"], pred_BxN)
    err_BxN = jnp.where(mask_BxN, pred_BxN - targets_BxN, 0.0)
    sq_err_BxN = err_BxN * err_BxN
    sums = {"sse": jnp.sum(sq_err_BxN), "abs_err": jnp.sum(jnp.abs(err_BxN)),
            "count": jnp.sum(mask_BxN, dtype=jnp.float32),
            "cold_sse": jnp.sum(jnp.where(cold_BxN, sq_err_BxN, 0.0)),
            "cold_count": jnp.sum(cold_BxN, dtype=jnp.float32)}
    return psum_if(sums, axis_name)


def eval_blocks(params: PyTree, data: EvalData, index_KxB: jax.Array, *,
                axis_name: str | None = None, **block_kwargs) -> dict[str, jax.Array]:
    """`eval_block` over K blocks in one compiled call; returns per-block sums, each [K]."""
    return jax.lax.map(
        lambda index_B: eval_block(params, data, index_B, axis_name=axis_name, **block_kwargs),
        index_KxB)


def summarize(block_sums: dict[str, Any]) -> dict[str, float]:
    """Per-block sums -> {"rmse", "mae", "count", "cold_count", "cold_rmse", "warm_rmse"},
    accumulated in float64 on the host; an RMSE or MAE over no entries is NaN."""
    total = {key: float(np.sum(np.asarray(value, np.float64)))
             for key, value in block_sums.items()}
    sse, count = total["sse"], total["count"]
    cold_sse, cold_count = total.get("cold_sse", 0.0), total.get("cold_count", 0.0)
    return {"rmse": _rmse(sse, count), "mae": total["abs_err"] / count if count else _NAN,
            "count": count, "cold_count": cold_count, "cold_rmse": _rmse(cold_sse, cold_count),
            "warm_rmse": _rmse(max(sse - cold_sse, 0.0), count - cold_count)}


_NAN = float("nan")


def _rmse(sse: float, count: float) -> float:
    return float(np.sqrt(sse / count)) if count else _NAN
