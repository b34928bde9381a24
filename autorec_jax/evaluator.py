"""The separate pure evaluator: reconstruct training rows, score held-out entries.

The network reads rows of the TRAINING matrix in inference mode (no dropout); its output is
compared with the test ratings at the test entries only - the book's
`sqrt(sum((test - sign(test) * recon)^2) / sum(sign(test)))`. Test ratings are never an
input. Blocks return sums (squared error, absolute error, count); the host adds them in
float64, so the blocked result equals the whole-set result.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from autorec_jax.parallel import psum_if
from autorec_jax.rows import DeviceRows, densify

PyTree = Any


@flax.struct.dataclass
class EvalData:
    """Device-resident rows: `inputs` (the training ratings) and `targets` (held-out ones)."""

    inputs: DeviceRows
    targets: DeviceRows


def eval_block(params: PyTree, data: EvalData, index_B: jax.Array, *,
               apply_fn: Callable, max_nnz_inputs: int, max_nnz_targets: int,
               clip_range: tuple[float, float] | None = None,
               axis_name: str | None = None) -> dict[str, jax.Array]:
    """Sums over the held-out entries of rows `index_B` (int32 [B], negative = padding).

    Returns:
      {"sse", "abs_err", "count"}: float32 scalars, summed over devices.
    """
    inputs_BxN = densify(data.inputs, index_B, max_nnz_inputs)
    targets_BxN = densify(data.targets, index_B, max_nnz_targets)
    pred_BxN = apply_fn({"params": params}, inputs_BxN, train=False)
    if clip_range is not None:
        pred_BxN = jnp.clip(pred_BxN, *clip_range)
    mask_BxN = targets_BxN != 0
    err_BxN = jnp.where(mask_BxN, pred_BxN - targets_BxN, 0.0)
    sums = {"sse": jnp.sum(err_BxN * err_BxN), "abs_err": jnp.sum(jnp.abs(err_BxN)),
            "count": jnp.sum(mask_BxN, dtype=jnp.float32)}
    return psum_if(sums, axis_name)


def eval_blocks(params: PyTree, data: EvalData, index_KxB: jax.Array, *,
                axis_name: str | None = None, **block_kwargs) -> dict[str, jax.Array]:
    """`eval_block` over K blocks in one compiled call; returns per-block sums, each [K]."""
    return jax.lax.map(
        lambda index_B: eval_block(params, data, index_B, axis_name=axis_name, **block_kwargs),
        index_KxB)


def summarize(block_sums: dict[str, Any]) -> dict[str, float]:
    """Per-block sums -> {"rmse", "mae", "count"}, accumulated in float64 on the host."""
    sse = float(np.sum(np.asarray(block_sums["sse"], np.float64)))
    abs_err = float(np.sum(np.asarray(block_sums["abs_err"], np.float64)))
    count = float(np.sum(np.asarray(block_sums["count"], np.float64)))
    if count == 0:
        return {"rmse": float("nan"), "mae": float("nan"), "count": 0.0}
    return {"rmse": float(np.sqrt(sse / count)), "mae": abs_err / count, "count": count}
