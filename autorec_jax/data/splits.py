"""Splits: pure functions of (ratings, seed, options) returning index arrays.

Every split returns a `Split` of int64 positions into the ratings - train, valid (possibly
empty) and test - that are disjoint, together cover every rating exactly once, and are each
in ascending (file) order.

  random      the book's split, draw for draw: Bernoulli(1 - test_ratio) per rating in file
              order from np.random.RandomState(seed) (d2l `split_data_ml100k`)
  seq-aware   the book's other split: each user's latest rating is the test set (the first in
              file order among ties)
  ratio       exactly round(test_ratio * n) ratings, drawn without replacement (seeded)
  kfold       a seeded permutation cut into `folds` near-equal parts; part `fold` is the test
  leave-last  each user's last `leave_last` ratings by timestamp (ties: later in the file is
              later) are the test set; a user always keeps at least one training rating
  ml100k-u1..u5, ml100k-ua, ml100k-ub
              MovieLens 100K's official splits rebuilt from u.data (mku.sh, allbut.pl):
              uK.test is lines 20000(K-1)+1..20000K; ua.test (ub.test) holds each user's
              1st-10th (11th-20th) ratings in file order
A validation set (valid_ratio > 0) is then carved out of the training part: exactly
round(valid_ratio * len(train)) ratings, drawn with a seed stream of its own.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from autorec_jax.data.ratings import Ratings
from autorec_jax.errors import ConfigError, DataError

SPLITS = ("random", "seq-aware", "ratio", "kfold", "leave-last", "ml100k-u1", "ml100k-u2",
          "ml100k-u3", "ml100k-u4", "ml100k-u5", "ml100k-ua", "ml100k-ub")
ML100K_SIZE = 100_000
VALID_STREAM = 0x76616C69  # "vali": keeps the carve-out's draws apart from the split's


@dataclasses.dataclass(frozen=True)
class Split:
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray


def random_split(ratings: Ratings, test_ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The book's "random" split (d2l `split_data_ml100k`), draw for draw.

    The book runs `np.random.seed(seed)` and then, in file order,
    `mask = np.random.uniform(0, 1, len(data)) < 1 - test_ratio`; True rows train. A private
    `RandomState(seed)` draws the same stream without touching NumPy's global state.
    """
    _check_ratio(test_ratio, "data.test_ratio")
    draws = np.random.RandomState(seed).uniform(0, 1, len(ratings))
    train_mask = draws < 1 - test_ratio
    return np.flatnonzero(train_mask), np.flatnonzero(~train_mask)


def seq_aware_split(ratings: Ratings) -> tuple[np.ndarray, np.ndarray]:
    """The book's "seq-aware" split: each user's latest rating is the test set.

    As in d2l, the first rating in file order among a user's ratings with the latest
    timestamp is the test rating (the book keeps a rating only if strictly later).
    """
    order = np.lexsort((np.arange(len(ratings)), -_timestamps(ratings, "seq-aware"),
                        ratings.users))
    return _complement(len(ratings), order[_run_starts(ratings.users[order])])


def ratio_split(ratings: Ratings, test_ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Exactly round(test_ratio * n) test ratings, drawn without replacement."""
    _check_ratio(test_ratio, "data.test_ratio")
    perm = np.random.default_rng(seed).permutation(len(ratings))
    return _complement(len(ratings), perm[:round(test_ratio * len(ratings))])


def kfold_split(ratings: Ratings, folds: int, fold: int, seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Fold `fold` of a seeded permutation cut into `folds` parts (sizes differ by <= 1)."""
    if not 2 <= folds <= len(ratings) or not 0 <= fold < folds:
        raise ConfigError(f"data.folds must be in [2, {len(ratings)}] and data.fold in "
                          f"[0, folds), got folds={folds}, fold={fold}")
    perm = np.random.default_rng(seed).permutation(len(ratings))
    return _complement(len(ratings), np.array_split(perm, folds)[fold])


def leave_last_split(ratings: Ratings, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Each user's last `count` ratings (timestamp, then file position) are the test set;
    a user with `count` or fewer ratings keeps its earliest one for training."""
    if count < 1:
        raise ConfigError(f"data.leave_last must be >= 1, got {count}")
    n = len(ratings)
    order = np.lexsort((np.arange(n), _timestamps(ratings, "leave-last"), ratings.users))
    users = ratings.users[order]
    starts = np.flatnonzero(_run_starts(users))
    lengths = np.diff(np.append(starts, n))
    rank_from_end = np.repeat(starts + lengths, lengths) - np.arange(n)  # 1 = the latest
    take = np.minimum(count, lengths - 1)
    return _complement(n, order[rank_from_end <= np.repeat(take, lengths)])


def ml100k_split(ratings: Ratings, name: str) -> tuple[np.ndarray, np.ndarray]:
    """MovieLens 100K's official uK / ua / ub splits, rebuilt from u.data in file order."""
    if len(ratings) != ML100K_SIZE:
        raise ConfigError(f"data.split {name} rebuilds MovieLens 100K's official split and "
                          f"needs u.data's {ML100K_SIZE} ratings in file order, got "
                          f"{len(ratings)} ratings")
    part = name.removeprefix("ml100k-")
    if part in ("u1", "u2", "u3", "u4", "u5"):  # mku.sh: head -K*20000 | tail -20000
        k = int(part[1])
        test = np.arange(20000 * (k - 1), 20000 * k)
        return _complement(ML100K_SIZE, test)
    start, stop = (1, 10) if part == "ua" else (11, 20)  # allbut.pl NAME START STOP 100000
    order = np.lexsort((np.arange(ML100K_SIZE), ratings.users))
    users = ratings.users[order]
    starts = np.flatnonzero(_run_starts(users))
    counts = np.arange(ML100K_SIZE) - np.repeat(starts, np.diff(np.append(starts,
                                                                          ML100K_SIZE))) + 1
    return _complement(ML100K_SIZE, order[(counts >= start) & (counts <= stop)])


def make_split(ratings: Ratings, kind: str, *, seed: int, test_ratio: float = 0.1,
               valid_ratio: float = 0.0, folds: int = 5, fold: int = 0,
               leave_last: int = 1) -> Split:
    """The named split (see the module docstring), then the validation carve-out."""
    if kind == "random":
        train, test = random_split(ratings, test_ratio, seed)
    elif kind == "seq-aware":
        train, test = seq_aware_split(ratings)
    elif kind == "ratio":
        train, test = ratio_split(ratings, test_ratio, seed)
    elif kind == "kfold":
        train, test = kfold_split(ratings, folds, fold, seed)
    elif kind == "leave-last":
        train, test = leave_last_split(ratings, leave_last)
    elif kind in SPLITS and kind.startswith("ml100k-"):
        train, test = ml100k_split(ratings, kind)
    else:
        raise ConfigError(f"data.split must be one of {', '.join(SPLITS)}, got {kind!r}")
    valid = np.zeros(0, np.int64)
    if valid_ratio:
        if not 0.0 < valid_ratio < 1.0:
            raise ConfigError(f"data.valid_ratio must be in [0, 1), got {valid_ratio!r}")
        perm = np.random.default_rng([seed, VALID_STREAM]).permutation(len(train))
        chosen = np.zeros(len(train), bool)
        chosen[perm[:round(valid_ratio * len(train))]] = True
        train, valid = train[~chosen], train[chosen]
    return Split(train=train.astype(np.int64), valid=valid.astype(np.int64),
                 test=test.astype(np.int64))


def split(ratings: Ratings, kind: str, *, test_ratio: float, seed: int
          ) -> tuple[Ratings, Ratings]:
    """(train, test) Ratings of a split without a validation part."""
    parts = make_split(ratings, kind, seed=seed, test_ratio=test_ratio)
    return ratings.take(parts.train), ratings.take(parts.test)


def _check_ratio(value: float, field: str) -> None:
    if not 0.0 < value < 1.0:
        raise ConfigError(f"{field} must be in (0, 1), got {value!r}")


def _timestamps(ratings: Ratings, kind: str) -> np.ndarray:
    if ratings.timestamps is None:
        raise DataError(f"the {kind} split needs timestamps, and these ratings have none")
    return ratings.timestamps


def _run_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Boolean mask of the first entry of each run of equal keys."""
    first = np.ones(len(sorted_keys), bool)
    first[1:] = sorted_keys[1:] != sorted_keys[:-1]
    return first


def _complement(n: int, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros(n, bool)
    mask[test] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)
