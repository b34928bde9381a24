"""Host-side batch planning: which rows go into which step, as int32 index arrays.

Batches are index arrays into a `RowMatrix`; padding slots hold PAD_ROW (-1), which the
device turns into an all-zero, fully masked row (a no-op in loss and gradients).
"""

from __future__ import annotations

import math

import numpy as np

from autorec_jax.errors import ConfigError

PAD_ROW = -1


def epoch_batches(order: np.ndarray, carry: np.ndarray, batch_size: int, last_batch: str
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Cuts one epoch's shuffled row order into full batches.

    Args:
      order: int [R], this epoch's permutation of the rows.
      carry: int [C], rows left over from the previous epoch ("rollover" only, else empty).
      batch_size: B.
      last_batch: "rollover" (gluon: leftovers start the next epoch), "pad" (last batch
        filled with PAD_ROW), or "drop" (leftovers discarded).

    Returns:
      (batches int32 [S, B], new carry int32 [C']).
    """
    empty = np.zeros(0, np.int32)
    if last_batch == "rollover":
        rows = np.concatenate([carry, order]).astype(np.int32)
        steps = len(rows) // batch_size
        return rows[:steps * batch_size].reshape(steps, batch_size), rows[steps * batch_size:]
    rows = np.asarray(order, np.int32)
    if last_batch == "drop":
        steps = len(rows) // batch_size
        return rows[:steps * batch_size].reshape(steps, batch_size), empty
    if last_batch == "pad":
        steps = math.ceil(len(rows) / batch_size)
        padded = np.full(steps * batch_size, PAD_ROW, np.int32)
        padded[:len(rows)] = rows
        return padded.reshape(steps, batch_size), empty
    raise ConfigError(f"train.last_batch must be rollover, pad or drop, got {last_batch!r}")


def steps_per_epoch(num_rows: int, batch_size: int, epochs: int, last_batch: str) -> list[int]:
    """The number of steps of each epoch, known before training (it fixes compiled shapes)."""
    if last_batch in ("rollover", "drop") and batch_size > num_rows:
        raise ConfigError(f"train.batch_size {batch_size} exceeds the {num_rows} training rows; "
                          "lower it or use train.last_batch=pad")
    if last_batch == "pad":
        return [math.ceil(num_rows / batch_size)] * epochs
    if last_batch == "drop":
        return [num_rows // batch_size] * epochs
    steps, carry = [], 0
    for _ in range(epochs):
        steps.append((carry + num_rows) // batch_size)
        carry = (carry + num_rows) % batch_size
    return steps


def blocks(num_rows: int, max_block_size: int) -> np.ndarray:
    """All rows in order, cut into int32 [num_blocks, block_size], PAD_ROW-padded at the end.

    Uses the fewest blocks of at most `max_block_size` rows, balanced so that padding is
    less than one row per block (1682 rows, at most 1024 a block: 2 blocks of 841).
    """
    num_blocks = math.ceil(num_rows / max_block_size)
    block_size = math.ceil(num_rows / num_blocks)
    padded = np.full(num_blocks * block_size, PAD_ROW, np.int32)
    padded[:num_rows] = np.arange(num_rows, dtype=np.int32)
    return padded.reshape(num_blocks, block_size)


def max_nnz(row_lengths: np.ndarray, rows_per_batch: int, repeats: int = 1) -> int:
    """An exact upper bound on the stored entries of any batch of `rows_per_batch` rows.

    The sum of the largest `rows_per_batch` row lengths when each row may appear at most
    `repeats` times in a batch (2 under "rollover", whose first batch of an epoch mixes the
    previous epoch's leftovers with the new order). It sizes the fixed-shape buffers that
    carry a batch's entries on the device, so no batch can overflow them.
    """
    lengths = np.tile(np.asarray(row_lengths), repeats)
    k = min(rows_per_batch, len(lengths))
    largest = np.partition(lengths, len(lengths) - k)[len(lengths) - k:]
    return max(int(largest.sum()), 1)
