"""Device-resident sparse rows (CSR) and their densification into one batch, inside jit.

The whole training matrix lives on the device as CSR (a few MB for MovieLens 100K); a step
receives only int32 row indices and builds its dense [B, N] batch here. No code path holds a
dense rows x cols matrix.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class DeviceRows:
    """CSR rows on the device. Shapes: indptr [R + 1], cols [nnz], values [nnz].

    `fields` holds extra per-entry arrays aligned with `values` (e.g. loss weights), each
    densified beside the ratings into a batch field of its name.
    """

    indptr: jax.Array
    cols: jax.Array
    values: jax.Array
    num_cols: int = flax.struct.field(pytree_node=False)
    fields: dict = flax.struct.field(default_factory=dict)


def to_device_rows(rows, pad_to: int | None = None,
                   fields: dict[str, np.ndarray] | None = None) -> DeviceRows:
    """Host CSR (`data.ratings.RowMatrix`: indptr, cols, values, nnz, num_cols) ->
    `DeviceRows` (int32 indices, float32 values) as NumPy, ready to transfer.

    `pad_to` lengthens cols/values with unused zeros, so that several matrices share one
    shape (and one compiled executable); entries past indptr[-1] are never read. `fields`
    maps names to float arrays [nnz] in the CSR order of `rows` (`data.ratings.csr_order`).
    """
    size = max(rows.nnz, pad_to or 0, 1)
    if size >= np.iinfo(np.int32).max:
        raise ValueError(f"{rows.nnz} stored entries exceed int32 indexing")

    def padded(array, dtype):
        out = np.zeros(size, dtype)
        out[:rows.nnz] = array
        return out

    extra = {}
    for name, array in (fields or {}).items():
        if np.shape(array) != (rows.nnz,):
            raise ValueError(f"entry field {name!r} has shape {np.shape(array)}; expected "
                             f"one value per training rating ({rows.nnz},)")
        extra[name] = padded(array, np.float32)
    return DeviceRows(indptr=np.asarray(rows.indptr, np.int32), cols=padded(rows.cols, np.int32),
                      values=padded(rows.values, np.float32), num_cols=rows.num_cols,
                      fields=extra)


def densify(rows: DeviceRows, index_B: jax.Array, max_nnz: int) -> jax.Array:
    """Dense ratings of the rows `index_B`: float32 [B, N], 0 where unobserved.

    (`densify_fields` also densifies the extra per-entry fields.)

    Args:
      rows: the CSR rows.
      index_B: int32 [B] row indices; negative entries are padding and give all-zero rows.
      max_nnz: static upper bound on the stored entries of the B rows together
        (see `data.batching.max_nnz`); entries beyond it would be dropped, so callers size it
        exactly.
    """
    return densify_fields(rows, index_B, max_nnz, with_fields=False)["ratings"]


def densify_fields(rows: DeviceRows, index_B: jax.Array, max_nnz: int, *,
                   with_fields: bool = True) -> dict[str, jax.Array]:
    """{"ratings": [B, N], **fields: [B, N]} of the rows `index_B`, 0 where unobserved."""
    flat, values = gather_entries(rows, index_B, max_nnz, with_fields=with_fields)
    return scatter_entries(flat, values, index_B.shape[0], rows.num_cols)


def gather_entries(rows: DeviceRows, index_B: jax.Array, max_nnz: int, *,
                   with_fields: bool = True) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The stored entries of the rows `index_B`, laid end to end: the first half of `densify`.

    Returns:
      (flat: int32 [max_nnz], each entry's position b * N + col in the [B, N] batch, B * N
       for unused slots; {"ratings": float32 [max_nnz], **fields}: their values). An epoch
       gathers the next step's entries while a step trains (`train.train_epoch`).
    """
    batch, width = index_B.shape[0], rows.num_cols
    if batch * width >= np.iinfo(np.int32).max:
        raise ValueError(f"a batch of {batch} rows x {width} columns exceeds int32 indexing; "
                         "use a smaller batch")
    valid = index_B >= 0
    safe = jnp.where(valid, index_B, 0)
    starts = rows.indptr[safe]
    lengths = jnp.where(valid, rows.indptr[safe + 1] - starts, 0)
    ends = jnp.cumsum(lengths)
    # Entry k of the B rows laid end to end sits in batch slot `slot` (B past the last entry):
    # mark where each slot ends, then count marks.
    slot = jnp.cumsum(jnp.zeros(max_nnz, jnp.int32).at[ends].add(1, mode="drop"))
    shift = jnp.append(starts - (ends - lengths), 0)
    pos = jnp.minimum(jnp.arange(max_nnz, dtype=jnp.int32) + shift[slot], rows.cols.shape[0] - 1)
    flat = jnp.where(slot < batch, slot * width + rows.cols[pos], batch * width)
    arrays = {"ratings": rows.values, **(rows.fields if with_fields else {})}
    return flat, {name: values[pos] for name, values in arrays.items()}


def scatter_entries(flat: jax.Array, values: dict[str, jax.Array], batch: int, width: int
                    ) -> dict[str, jax.Array]:
    """`gather_entries`' output as dense [B, N] arrays (B = batch, N = width), 0 elsewhere."""
    return {name: jnp.zeros(batch * width, v.dtype).at[flat].set(v, mode="drop").reshape(
                batch, width)
            for name, v in values.items()}
