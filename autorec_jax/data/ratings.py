"""Host-side rating containers: `Ratings` (coordinate list) and `RowMatrix` (CSR rows).

Nothing here builds a dense users x items matrix except `to_dense`, which exists for
small data, inspection and tests; training densifies one batch of rows at a time.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Callable

import numpy as np
import pandas as pd

from autorec_jax.errors import DataError


@dataclasses.dataclass(frozen=True, eq=False)
class Ratings:
    """Observed ratings as parallel arrays, R entries, ids mapped to contiguous indices.

    Attributes:
      users: int32 [R], user index in [0, num_users).
      items: int32 [R], item index in [0, num_items).
      ratings: float32 [R].
      timestamps: int64 [R] (seconds), or None when the source has none.
      user_ids: [num_users] raw id of each user index (the mapping is kept, never guessed).
      item_ids: [num_items] raw id of each item index.
    """

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray | None
    user_ids: np.ndarray
    item_ids: np.ndarray

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def __len__(self) -> int:
        return len(self.ratings)

    @classmethod
    def from_raw(cls, raw_users, raw_items, ratings, timestamps=None, *,
                 source: str | None = None, duplicates: str = "error",
                 line_of: Callable[[int], int] | None = None) -> "Ratings":
        """Maps raw ids (any sortable type) to indices in sorted-id order.

        With MovieLens' integer ids 1..n this gives index = id - 1, the book's mapping.

        Args:
          raw_users, raw_items, ratings, timestamps: parallel arrays, one entry per rating.
          source: the file named in error messages.
          duplicates: repeated (user, item) pairs: "error", "keep-last" (the last entry wins),
            or "mean" (ratings averaged, latest timestamp kept).
          line_of: maps an entry index to its line in `source`, for messages.

        Raises:
          DataError: duplicate pairs under "error", or non-finite or zero ratings.
        """
        user_ids, users = map_ids(np.asarray(raw_users))
        item_ids, items = map_ids(np.asarray(raw_items))
        ratings = np.asarray(ratings, dtype=np.float32).reshape(-1)
        if timestamps is not None:
            timestamps = np.asarray(timestamps, np.int64)
        keep, merged = resolve_duplicates(users, items, len(item_ids), ratings, timestamps,
                                          duplicates, source, line_of, user_ids, item_ids)
        if keep is not None:
            users, items, ratings = users[keep], items[keep], merged[0]
            timestamps = merged[1]
        out = cls(users=users, items=items, ratings=ratings, timestamps=timestamps,
                  user_ids=user_ids, item_ids=item_ids)
        out.validate(source, line_of)
        return out

    def validate(self, source: str | None = None,
                 line_of: Callable[[int], int] | None = None) -> None:
        """Raises DataError naming the first problem: lengths, ranges, NaN, zero ratings."""
        n = len(self.ratings)
        arrays = [self.users, self.items] + ([] if self.timestamps is None else [self.timestamps])
        if any(len(a) != n for a in arrays):
            raise DataError("rating arrays have different lengths", path=source)
        if n and (self.users.min() < 0 or self.users.max() >= self.num_users
                  or self.items.min() < 0 or self.items.max() >= self.num_items):
            raise DataError("user or item index outside the id mapping", path=source)
        where = (lambda i: {"line": line_of(i)}) if line_of else (lambda i: {})
        entry = (lambda i: "") if line_of else (lambda i: f" (entry {i})")
        bad = np.flatnonzero(~np.isfinite(self.ratings))
        if len(bad):
            raise DataError(f"rating {self.ratings[bad[0]]} is not finite{entry(bad[0])}",
                            path=source, **where(int(bad[0])))
        zero = np.flatnonzero(self.ratings == 0)
        if len(zero):
            raise DataError(f"rating 0{entry(zero[0])}: 0 marks 'unobserved' in AutoRec's "
                            "matrices; shift the rating scale (e.g. add 1 to every rating)",
                            path=source, **where(int(zero[0])))

    def take(self, index: np.ndarray) -> "Ratings":
        """The entries at `index` (bool mask or integer index), in the same id space."""
        return dataclasses.replace(
            self, users=self.users[index], items=self.items[index],
            ratings=self.ratings[index],
            timestamps=None if self.timestamps is None else self.timestamps[index])


def map_ids(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique raw ids, int32 index of each entry into them), without a full sort.

    Non-negative integer ids of moderate range (MovieLens, Netflix) go through a presence
    table; anything else is hashed.
    """
    if raw.dtype.kind in "iu" and len(raw):
        low, high = int(raw.min()), int(raw.max())
        if low >= 0 and high < 8 * len(raw) + (1 << 20):
            present = np.zeros(high + 1, bool)
            present[raw] = True
            rank = np.cumsum(present, dtype=np.int32) - 1
            return np.flatnonzero(present).astype(raw.dtype), rank[raw]
    codes, uniques = pd.factorize(raw, sort=False)
    uniques = np.asarray(uniques)
    order = np.argsort(uniques, kind="stable")
    rank = np.empty(len(order), np.int32)
    rank[order] = np.arange(len(order), dtype=np.int32)
    return uniques[order], rank[codes]


def resolve_duplicates(users, items, num_items, ratings, timestamps, policy, source, line_of,
                       user_ids, item_ids):
    """Applies the duplicate policy; returns (kept entry indices, (ratings, timestamps)), or
    (None, None) when every (user, item) pair is unique."""
    pair = users.astype(np.int64) * num_items + items
    ordered = np.sort(pair)  # vectorised sort: the fast test for the common, clean case
    if not np.any(ordered[1:] == ordered[:-1]):
        return None, None
    codes, uniques = pd.factorize(pair, sort=False)
    repeated = pd.Series(codes).duplicated(keep="first").to_numpy()
    if policy == "error":
        second = int(np.flatnonzero(repeated)[0])
        first = int(np.flatnonzero(codes == codes[second])[0])
        where = f"line {line_of(first)}" if line_of else f"entry {first}"
        raise DataError(
            f"user {_plain(user_ids[users[second]])!r} rates item "
            f"{_plain(item_ids[items[second]])!r} again (first at {where}); pass --duplicates "
            "keep-last or --duplicates mean to resolve repeats", path=source,
            line=line_of(second) if line_of else None)
    last = ~pd.Series(codes).duplicated(keep="last").to_numpy()
    keep = np.flatnonzero(last)
    if policy == "keep-last":
        return keep, (ratings[keep], None if timestamps is None else timestamps[keep])
    if policy == "mean":
        sums = np.bincount(codes, weights=ratings, minlength=len(uniques))
        counts = np.bincount(codes, minlength=len(uniques))
        merged = (sums / counts)[codes[keep]].astype(np.float32)
        times = None
        if timestamps is not None:
            latest = np.full(len(uniques), np.iinfo(np.int64).min)
            np.maximum.at(latest, codes, timestamps)
            times = latest[codes[keep]]
        return keep, (merged, times)
    raise ValueError(f"unknown duplicates policy {policy!r}")


def _plain(value):
    """A NumPy scalar as the Python value it holds (for readable messages)."""
    return value.item() if isinstance(value, np.generic) else value


@dataclasses.dataclass(frozen=True, eq=False)
class RowMatrix:
    """A sparse matrix in CSR form: row r holds cols[indptr[r]:indptr[r+1]], sorted.

    For I-AutoRec the rows are items and the columns users (one row = one item's column of R).

    Attributes:
      indptr: int64 [num_rows + 1].
      cols: int32 [nnz], column index of each stored entry.
      values: float32 [nnz].
      num_cols: width of a dense row (N).
    """

    indptr: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    num_cols: int

    @property
    def num_rows(self) -> int:
        return len(self.indptr) - 1

    @property
    def nnz(self) -> int:
        return len(self.values)

    @property
    def row_lengths(self) -> np.ndarray:
        return np.diff(self.indptr)


def select_rows(matrix: RowMatrix, index: np.ndarray) -> tuple[RowMatrix, np.ndarray]:
    """The rows `index` (int [K]; a negative entry gives an empty row) as their own CSR, in
    that order, and the positions of their entries in `matrix` (to carry per-entry arrays
    along)."""
    index = np.asarray(index)
    valid = index >= 0
    safe = np.where(valid, index, 0)
    lengths = np.where(valid, matrix.indptr[safe + 1] - matrix.indptr[safe], 0)
    starts = np.repeat(matrix.indptr[safe], lengths)
    pos = starts + np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    selected = RowMatrix(indptr=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                         cols=matrix.cols[pos], values=matrix.values[pos],
                         num_cols=matrix.num_cols)
    return selected, pos


def row_matrix(ratings: Ratings, orientation: str = "item") -> RowMatrix:
    """CSR rows of R: items x users for "item" (I-AutoRec), users x items for "user".

    Entry k of the CSR is rating `csr_order(ratings, orientation)[k]` of `ratings`.
    """
    rows, cols, num_rows, num_cols = _row_col(ratings, orientation)
    order = csr_order(ratings, orientation)
    indptr = np.zeros(num_rows + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=num_rows), out=indptr[1:])
    return RowMatrix(indptr=indptr, cols=cols[order].astype(np.int32),
                     values=ratings.ratings[order].astype(np.float32), num_cols=num_cols)


def csr_order(ratings: Ratings, orientation: str = "item") -> np.ndarray:
    """The permutation taking `ratings`' entries to the CSR order of `row_matrix`."""
    rows, cols, _, _ = _row_col(ratings, orientation)
    return np.lexsort((cols, rows))


def _row_col(ratings: Ratings, orientation: str):
    if orientation == "item":
        rows, cols, num_rows, num_cols = ratings.items, ratings.users, ratings.num_items, \
            ratings.num_users
    elif orientation == "user":
        rows, cols, num_rows, num_cols = ratings.users, ratings.items, ratings.num_users, \
            ratings.num_items
    else:
        raise ValueError(f"orientation must be 'item' or 'user', got {orientation!r}")
    return rows, cols, num_rows, num_cols


def to_dense(rows: RowMatrix) -> np.ndarray:
    """The dense float32 [num_rows, num_cols] matrix, 0 where unobserved (the book's layout)."""
    dense = np.zeros((rows.num_rows, rows.num_cols), np.float32)
    dense[np.repeat(np.arange(rows.num_rows), rows.row_lengths), rows.cols] = rows.values
    return dense


def data_fingerprint(*arrays: np.ndarray) -> str:
    """SHA-256 (hex) over the dtypes, shapes and bytes of the given NumPy arrays, in order."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        if array.dtype.hasobject:
            raise TypeError("data_fingerprint needs arrays of fixed-size types, not object")
        digest.update(f"{array.dtype.str}{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
