"""Splits: the book's random and seq-aware splits, reproduced draw for draw."""

import numpy as np
import pandas as pd
import pytest

from autorec_jax.data import splits
from autorec_jax.errors import DataError
from synthetic import random_ratings


def book_random_split(data: pd.DataFrame, seed: int, test_ratio: float = 0.1):
    """d2l's split_data_ml100k, split_mode='random', after np.random.seed(seed)."""
    np.random.seed(seed)
    mask = [True if x == 1 else False
            for x in np.random.uniform(0, 1, (len(data))) < 1 - test_ratio]
    neg_mask = [not x for x in mask]
    return data[mask], data[neg_mask]


def book_seq_aware_split(data: pd.DataFrame, num_users: int):
    """d2l's split_data_ml100k, split_mode='seq-aware', verbatim in logic."""
    train_items, test_items, train_list = {}, {}, []
    for line in data.itertuples():
        u, i, rating, time = line[1], line[2], line[3], line[4]
        train_items.setdefault(u, []).append((u, i, rating, time))
        if u not in test_items or test_items[u][-1] < time:
            test_items[u] = (i, rating, time)
    for u in range(1, num_users + 1):
        train_list.extend(sorted(train_items[u], key=lambda k: k[3]))
    test_data = [(key, *value) for key, value in test_items.items()]
    train_data = [item for item in train_list if item not in test_data]
    return pd.DataFrame(train_data), pd.DataFrame(test_data)


def frame(r):
    return pd.DataFrame({"user_id": r.user_ids[r.users], "item_id": r.item_ids[r.items],
                         "rating": r.ratings.astype(int), "timestamp": r.timestamps})


def as_set(df):
    return set(map(tuple, np.asarray(df)[:, :4].astype(np.int64).tolist()))


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_random_split_equals_the_books_split(seed):
    r = random_ratings(num_users=60, num_items=50, seed=seed)
    train_index, test_index = splits.random_split(r, 0.1, seed)
    book_train, book_test = book_random_split(frame(r), seed)
    np.testing.assert_array_equal(train_index, np.asarray(book_train.index))
    np.testing.assert_array_equal(test_index, np.asarray(book_test.index))


def test_random_split_leaves_numpy_global_state_alone():
    np.random.seed(123)
    expected = np.random.uniform()
    np.random.seed(123)
    splits.random_split(random_ratings(), 0.1, 5)
    assert np.random.uniform() == expected


def test_seq_aware_split_equals_the_books_split_with_timestamp_ties():
    r = random_ratings(num_users=30, num_items=25, seed=2)
    # Force ties on the latest timestamp for some users: the first in file order must win.
    times = r.timestamps.copy()
    for user in range(0, r.num_users, 3):
        mine = np.flatnonzero(r.users == user)
        times[mine] = times[mine].max()
    r = r.__class__(r.users, r.items, r.ratings, times, r.user_ids, r.item_ids)
    train, test = splits.split(r, "seq-aware", test_ratio=0.1, seed=0)
    book_train, book_test = book_seq_aware_split(frame(r), r.num_users)
    assert as_set(frame(train)) == as_set(book_train)
    assert as_set(frame(test)) == as_set(book_test)
    assert len(test) == r.num_users


@pytest.mark.parametrize("kind", ["random", "seq-aware"])
def test_splits_partition_the_ratings(kind):
    r = random_ratings(seed=4)
    if kind == "random":
        train_index, test_index = splits.random_split(r, 0.25, 4)
    else:
        train_index, test_index = splits.seq_aware_split(r)
    both = np.concatenate([train_index, test_index])
    np.testing.assert_array_equal(np.sort(both), np.arange(len(r)))


def test_seq_aware_split_without_timestamps_is_an_error():
    with pytest.raises(DataError, match="timestamps"):
        splits.seq_aware_split(random_ratings(timestamps=False))
