"""Ratings containers: id mapping, validation, CSR rows and the dense interaction matrix."""

import numpy as np
import pytest

from autorec_jax.data.ratings import Ratings, row_matrix, to_dense
from autorec_jax.errors import DataError
from synthetic import random_ratings


def test_from_raw_maps_sorted_ids_to_contiguous_indices_and_keeps_them():
    r = Ratings.from_raw(["b", "a", "c"], [30, 10, 30], [4, 5, 1], [3, 2, 1])
    np.testing.assert_array_equal(r.user_ids, ["a", "b", "c"])
    np.testing.assert_array_equal(r.item_ids, [10, 30])
    np.testing.assert_array_equal(r.users, [1, 0, 2])
    np.testing.assert_array_equal(r.items, [1, 0, 1])
    assert (r.num_users, r.num_items, len(r)) == (3, 2, 3)


def test_integer_ids_one_to_n_map_to_id_minus_one_like_the_book():
    r = random_ratings()
    np.testing.assert_array_equal(r.user_ids, np.arange(1, r.num_users + 1))
    np.testing.assert_array_equal(r.item_ids, np.arange(1, r.num_items + 1))


@pytest.mark.parametrize("users, items, ratings, message", [
    ([1, 1], [2, 2], [3, 4], r"user 1 rates item 2 again \(first at entry 0\)"),
    ([1, 2], [2, 2], [3, np.nan], "not finite"),
    ([1, 2], [2, 2], [3, 0], "rating 0"),
])
def test_from_raw_rejects_bad_ratings(users, items, ratings, message):
    with pytest.raises(DataError, match=message):
        Ratings.from_raw(users, items, ratings)


@pytest.mark.parametrize("orientation", ["item", "user"])
def test_row_matrix_is_the_csr_of_the_dense_matrix(orientation):
    r = random_ratings(num_users=17, num_items=11, seed=3)
    rows = row_matrix(r, orientation)
    dense = np.zeros((r.num_users, r.num_items), np.float32)
    dense[r.users, r.items] = r.ratings
    expected = dense.T if orientation == "item" else dense
    np.testing.assert_array_equal(to_dense(rows), expected)
    assert rows.nnz == len(r) and rows.num_rows == expected.shape[0]
    for row in range(rows.num_rows):  # sorted columns, lengths match the dense row
        cols = rows.cols[rows.indptr[row]:rows.indptr[row + 1]]
        np.testing.assert_array_equal(cols, np.flatnonzero(expected[row]))


def test_take_keeps_the_id_space():
    r = random_ratings()
    part = r.take(np.arange(5))
    assert part.num_users == r.num_users and part.num_items == r.num_items and len(part) == 5
