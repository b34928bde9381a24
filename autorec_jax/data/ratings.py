"""Host-side rating containers: `Ratings` (coordinate list) and `RowMatrix` (CSR rows).

Nothing here builds a dense users x items matrix except `to_dense`, which exists for
small data, inspection and tests; training densifies one batch of rows at a time.
"""

from __future__ import annotations

import dataclasses

import numpy as np

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
                 source: str | None = None) -> "Ratings":
        """Maps raw ids (any sortable type) to indices in sorted-id order.

        With MovieLens' integer ids 1..n this gives index = id - 1, the book's mapping.

        Raises:
          DataError: duplicate (user, item) pairs or non-finite ratings.
        """
        user_ids, users = np.unique(np.asarray(raw_users), return_inverse=True)
        item_ids, items = np.unique(np.asarray(raw_items), return_inverse=True)
        out = cls(users=users.astype(np.int32).reshape(-1),
                  items=items.astype(np.int32).reshape(-1),
                  ratings=np.asarray(ratings, dtype=np.float32).reshape(-1),
                  timestamps=None if timestamps is None else np.asarray(timestamps, np.int64),
                  user_ids=user_ids, item_ids=item_ids)
        out.validate(source)
        return out

    def validate(self, source: str | None = None) -> None:
        """Raises DataError naming the first problem: lengths, ranges, NaN, duplicates."""
        n = len(self.ratings)
        arrays = [self.users, self.items] + ([] if self.timestamps is None else [self.timestamps])
        if any(len(a) != n for a in arrays):
            raise DataError("rating arrays have different lengths", path=source)
        if n and (self.users.min() < 0 or self.users.max() >= self.num_users
                  or self.items.min() < 0 or self.items.max() >= self.num_items):
            raise DataError("user or item index outside the id mapping", path=source)
        bad = np.flatnonzero(~np.isfinite(self.ratings))
        if len(bad):
            raise DataError(f"rating {self.ratings[bad[0]]} at entry {bad[0]} is not finite",
                            path=source)
        zero = np.flatnonzero(self.ratings == 0)
        if len(zero):
            raise DataError(f"rating 0 at entry {zero[0]}: 0 marks 'unobserved' in AutoRec's "
                            "matrices; shift the rating scale", path=source)
        pair = self.users.astype(np.int64) * self.num_items + self.items
        order = np.argsort(pair, kind="stable")
        dup = np.flatnonzero(pair[order][1:] == pair[order][:-1])
        if len(dup):
            i = order[dup[0] + 1]
            raise DataError(f"duplicate rating of item {_plain(self.item_ids[self.items[i]])!r} "
                            f"by user {_plain(self.user_ids[self.users[i]])!r} (entry {i})",
                            path=source)

    def take(self, index: np.ndarray) -> "Ratings":
        """The entries at `index` (bool mask or integer index), in the same id space."""
        return dataclasses.replace(
            self, users=self.users[index], items=self.items[index],
            ratings=self.ratings[index],
            timestamps=None if self.timestamps is None else self.timestamps[index])


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


def row_matrix(ratings: Ratings, orientation: str = "item") -> RowMatrix:
    """CSR rows of R: items x users for "item" (I-AutoRec), users x items for "user"."""
    if orientation == "item":
        rows, cols, num_rows, num_cols = ratings.items, ratings.users, ratings.num_items, \
            ratings.num_users
    elif orientation == "user":
        rows, cols, num_rows, num_cols = ratings.users, ratings.items, ratings.num_users, \
            ratings.num_items
    else:
        raise ValueError(f"orientation must be 'item' or 'user', got {orientation!r}")
    order = np.lexsort((cols, rows))
    indptr = np.zeros(num_rows + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=num_rows), out=indptr[1:])
    return RowMatrix(indptr=indptr, cols=cols[order].astype(np.int32),
                     values=ratings.ratings[order].astype(np.float32), num_cols=num_cols)


def to_dense(rows: RowMatrix) -> np.ndarray:
    """The dense float32 [num_rows, num_cols] matrix, 0 where unobserved (the book's layout)."""
    dense = np.zeros((rows.num_rows, rows.num_cols), np.float32)
    dense[np.repeat(np.arange(rows.num_rows), rows.row_lengths), rows.cols] = rows.values
    return dense
