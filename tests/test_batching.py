"""Batch planning: gluon's rollover semantics, padding, and the exact nnz bound."""

import itertools

import numpy as np
import pytest

from autorec_jax.data import batching
from autorec_jax.errors import ConfigError


class GluonBatchSampler:
    """mxnet.gluon.data.BatchSampler, verbatim in logic, over given per-epoch orders."""

    def __init__(self, batch_size, last_batch):
        self._batch_size, self._last_batch, self._prev = batch_size, last_batch, []

    def epoch(self, order):
        batch, self._prev = self._prev, []
        for i in order:
            batch.append(i)
            if len(batch) == self._batch_size:
                yield batch
                batch = []
        if batch:
            if self._last_batch == "keep":
                yield batch
            elif self._last_batch == "rollover":
                self._prev = batch


@pytest.mark.parametrize("num_rows, batch_size", [(1682, 256), (10, 3), (9, 3), (7, 7)])
def test_rollover_equals_gluon_batch_sampler(num_rows, batch_size):
    rng = np.random.default_rng(0)
    gluon = GluonBatchSampler(batch_size, "rollover")
    carry = np.zeros(0, np.int32)
    for _ in range(6):
        order = rng.permutation(num_rows)
        batches, carry = batching.epoch_batches(order, carry, batch_size, "rollover")
        expected = list(gluon.epoch(order))
        assert batches.tolist() == expected


@pytest.mark.parametrize("last_batch", ["rollover", "pad", "drop"])
@pytest.mark.parametrize("num_rows, batch_size", [(1682, 256), (10, 3), (12, 4), (5, 5)])
def test_steps_per_epoch_predicts_epoch_batches(last_batch, num_rows, batch_size):
    carry = np.zeros(0, np.int32)
    seen = []
    for order in itertools.repeat(np.arange(num_rows), 7):
        batches, carry = batching.epoch_batches(order, carry, batch_size, last_batch)
        seen.append(len(batches))
    assert seen == batching.steps_per_epoch(num_rows, batch_size, 7, last_batch)


def test_pad_keeps_every_row_once_and_pads_with_pad_row():
    batches, _ = batching.epoch_batches(np.arange(10), np.zeros(0, np.int32), 4, "pad")
    assert batches.shape == (3, 4)
    assert sorted(batches[batches >= 0].tolist()) == list(range(10))
    assert (batches == batching.PAD_ROW).sum() == 2


def test_batch_larger_than_the_data_is_a_config_error_unless_padding():
    with pytest.raises(ConfigError, match="train.batch_size 300 exceeds the 100"):
        batching.steps_per_epoch(100, 300, 2, "rollover")
    assert batching.steps_per_epoch(100, 300, 2, "pad") == [1, 1]


def test_blocks_cover_all_rows_in_order():
    b = batching.blocks(10, 4)
    assert b.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, -1, -1]]
    assert batching.blocks(3, 1024).tolist() == [[0, 1, 2]]
    assert batching.blocks(1682, 1024).shape == (2, 841)


@pytest.mark.parametrize("repeats", [1, 2])
def test_max_nnz_is_the_largest_batch_total(repeats):
    lengths = np.random.default_rng(1).integers(0, 50, 8)
    # Brute force: every batch of 5 slots where a row fills at most `repeats` of them.
    pool = np.repeat(np.arange(8), repeats)
    largest = max(int(lengths[list(c)].sum()) for c in itertools.combinations(pool, 5))
    assert batching.max_nnz(lengths, 5, repeats) == largest
