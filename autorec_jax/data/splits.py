"""Train/test splits: pure functions of (ratings, seed, options) returning index arrays.

Each split returns (train_index, test_index): int64 positions into the ratings, disjoint,
together covering every rating once, each in ascending (file) order.
"""

from __future__ import annotations

import numpy as np

from autorec_jax.data.ratings import Ratings
from autorec_jax.errors import ConfigError, DataError


def random_split(ratings: Ratings, test_ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The book's "random" split (d2l `split_data_ml100k`), draw for draw.

    The book runs `np.random.seed(seed)` and then, in file order,
    `mask = np.random.uniform(0, 1, len(data)) < 1 - test_ratio`; True rows train. A private
    `RandomState(seed)` draws the same stream without touching NumPy's global state.
    """
    if not 0.0 < test_ratio < 1.0:
        raise ConfigError(f"data.test_ratio must be in (0, 1), got {test_ratio!r}")
    draws = np.random.RandomState(seed).uniform(0, 1, len(ratings))
    train_mask = draws < 1 - test_ratio
    return np.flatnonzero(train_mask), np.flatnonzero(~train_mask)


def seq_aware_split(ratings: Ratings) -> tuple[np.ndarray, np.ndarray]:
    """The book's "seq-aware" split: each user's latest rating is the test set.

    As in d2l, the first rating in file order among a user's ratings with the latest
    timestamp is the test rating (the book keeps a rating only if strictly later).
    """
    if ratings.timestamps is None:
        raise DataError("the seq-aware split needs timestamps, and these ratings have none")
    n = len(ratings)
    # Sort by user, then timestamp descending, then file position ascending: the first entry
    # of each user's run is its latest rating, earliest in the file among ties.
    order = np.lexsort((np.arange(n), -ratings.timestamps, ratings.users))
    users_sorted = ratings.users[order]
    first = np.ones(n, bool)
    first[1:] = users_sorted[1:] != users_sorted[:-1]
    test_index = np.sort(order[first])
    train_mask = np.ones(n, bool)
    train_mask[test_index] = False
    return np.flatnonzero(train_mask), test_index


def split(ratings: Ratings, kind: str, *, test_ratio: float, seed: int
          ) -> tuple[Ratings, Ratings]:
    """Dispatches on `kind` ("random" or "seq-aware") and returns (train, test) Ratings."""
    if kind == "random":
        train_index, test_index = random_split(ratings, test_ratio, seed)
    elif kind == "seq-aware":
        train_index, test_index = seq_aware_split(ratings)
    else:
        raise ConfigError(f"data.split must be one of random, seq-aware, got {kind!r}")
    return ratings.take(train_index), ratings.take(test_index)
