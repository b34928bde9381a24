"""Device-side densification of CSR rows equals NumPy indexing of the dense matrix."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

from autorec_jax.data import batching
from autorec_jax.data.ratings import row_matrix, to_dense
from autorec_jax.rows import densify, to_device_rows
from synthetic import random_ratings


class DensifyTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(
        ("distinct_rows", [3, 0, 7, 29, 12], 1),
        ("padding_rows", [5, -1, 2, -1], 1),
        ("repeated_rows", [4, 4, 9, 4], 3),
        ("all_padding", [-1, -1], 1),
    )
    def test_densify_equals_dense_rows(self, index, repeats):
        rows = row_matrix(random_ratings(num_users=23, num_items=30, density=0.3), "item")
        dense = to_dense(rows)
        index = np.asarray(index, np.int32)
        bound = batching.max_nnz(rows.row_lengths, len(index), repeats)
        densify_fn = self.variant(lambda r, i: densify(r, i, bound))
        got = densify_fn(jax.device_put(to_device_rows(rows)), jnp.asarray(index))
        expected = np.where((index >= 0)[:, None], dense[np.maximum(index, 0)], 0)
        np.testing.assert_array_equal(np.asarray(got), expected)

    def test_densify_of_the_heaviest_rows_fills_the_bound_exactly(self):
        rows = row_matrix(random_ratings(num_users=40, num_items=30, density=0.4), "item")
        heaviest = np.argsort(-rows.row_lengths)[:6].astype(np.int32)
        bound = batching.max_nnz(rows.row_lengths, 6)
        assert bound == rows.row_lengths[heaviest].sum()
        got = densify(jax.device_put(to_device_rows(rows)), jnp.asarray(heaviest), bound)
        np.testing.assert_array_equal(np.asarray(got), to_dense(rows)[heaviest])


def test_a_devices_share_of_rows_densifies_like_all_rows():
    from autorec_jax.distributed.placement import take_rows
    rows = row_matrix(random_ratings(num_users=23, num_items=30, density=0.3), "item")
    index = np.array([[4, 4, 17], [-1, 0, 29]], np.int32)  # repeats and padding
    size = batching.max_nnz(rows.row_lengths, index.size, 2)
    share, local = take_rows(rows, index, size)
    assert local.tolist() == [[0, 1, 2], [-1, 4, 5]]
    full = jax.device_put(to_device_rows(rows))
    for step in range(2):
        bound = batching.max_nnz(rows.row_lengths, 3, 2)
        np.testing.assert_array_equal(
            np.asarray(densify(jax.device_put(share), jnp.asarray(local[step]), bound)),
            np.asarray(densify(full, jnp.asarray(index[step]), bound)))
