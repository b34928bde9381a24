"""One entry point from the data config to `Ratings` and its split."""

from __future__ import annotations

import numpy as np

from autorec_jax.data import movielens, netflix, splits
from autorec_jax.data.ratings import Ratings
from autorec_jax.data.readers import Format, read_ratings
from autorec_jax.errors import DataError


def load_ratings(data, cache_dir=None) -> Ratings:
    """The ratings `data` (a DataConfig) names: its `ratings` file, else its dataset."""
    if data.ratings is None:
        return movielens.load(data.dataset, data_dir=data.data_dir, cache_dir=cache_dir,
                              duplicates=data.duplicates)
    kind = data.ratings_format
    if kind == "auto":
        kind = "netflix" if netflix.looks_like_netflix(data.ratings) else "delimited"
    if kind == "netflix":
        scale = tuple(data.rating_scale) if data.rating_scale is not None else (1.0, 5.0)
        return netflix.read_netflix(data.ratings, rating_scale=scale,
                                    duplicates=data.duplicates)
    return read_ratings(data.ratings, file_format(data))


def file_format(data) -> Format:
    """The `readers.Format` a `DataConfig`'s ratings file is read with."""
    columns = None if data.columns is None else tuple(
        c.strip() for c in data.columns.split(","))
    return Format(sep=data.sep, columns=columns, header=data.header,
                  rating_scale=None if data.rating_scale is None else tuple(
                      float(v) for v in data.rating_scale),
                  duplicates=data.duplicates, id_type=data.id_type)


def dataset_label(data, checksums: dict | None = None) -> str:
    """The data's name in logs and records; split files are named with their SHA-256.

    Args:
      checksums: the split files' `split_files.file_checksums`, when already computed (or
        recorded by row parts written from split files); None: computed here.
    """
    if checksums is None and getattr(data, "train_ratings", None) is not None:
        from autorec_jax.data import split_files
        checksums = split_files.file_checksums(data)
    if checksums is not None:
        return "files:" + ",".join(f"{part}={f['path']}@sha256:{f['sha256']}"
                                   for part, f in checksums.items())
    return f"file:{data.ratings}" if data.ratings is not None else data.dataset


def load_split(data, seed: int, ratings: Ratings | None = None, cache_dir=None
               ) -> tuple[Ratings, Ratings, Ratings]:
    """(train, valid, test) Ratings in one id space; valid is empty without a carve-out.

    Raises:
      DataError: a split nothing can be learned or measured from (see `check_split`).
    """
    if getattr(data, "train_ratings", None) is not None:
        from autorec_jax.data import split_files
        train, valid, test = split_files.load_split_files(data, seed, file_format(data))
        check_split(data, train, valid, test)
        return train, valid, test
    if ratings is None:
        ratings = load_ratings(data, cache_dir)
    parts = splits.make_split(ratings, data.split, seed=seed, test_ratio=data.test_ratio,
                              valid_ratio=data.valid_ratio, folds=data.folds, fold=data.fold,
                              leave_last=data.leave_last)
    train, valid, test = (ratings.take(parts.train), ratings.take(parts.valid),
                          ratings.take(parts.test))
    check_split(data, train, valid, test)
    return train, valid, test


def check_split(data, train: Ratings, valid: Ratings, test: Ratings) -> None:
    """Refuses a split with no training ratings, no test ratings, or only cold test ratings.

    A test rating is cold when its row (the item for orientation "item", the user for "user")
    or its column has no training rating: nothing learned reaches its prediction. Some cold
    ratings are normal; only when every one is cold (on rows, or on columns) is the split
    refused. An empty validation part is fine (no carve-out).

    Raises:
      DataError: naming the split and how to fix it.
    """
    where = (f"split {data.split!r} of {dataset_label(data)}"
             if getattr(data, "train_ratings", None) is None
             else f"the split files (test {split_files_test(data)})")
    if not len(train) or not len(test):
        part = "training" if not len(train) else "test"
        raise DataError(f"{where} leaves no {part} ratings (train {len(train)}, valid "
                        f"{len(valid)}, test {len(test)}); {_empty_part_fix(data, part)}")
    rows, cols = ("items", "users") if data.orientation == "item" else ("users", "items")
    for axis in (rows, cols):
        seen = np.zeros(getattr(train, f"num_{axis}"), bool)
        seen[getattr(train, axis)] = True
        if not seen[getattr(test, axis)].any():
            raise DataError(f"{where}: all {len(test)} test ratings are cold (no test rating's "
                            f"{axis[:-1]} has a training rating), so nothing learned applies "
                            f"to them; choose a split that keeps ratings of the test "
                            f"{axis} in training (e.g. --split random)")


def _empty_part_fix(data, part: str) -> str:
    """What makes the empty `part` ("training" or "test") of `data`'s split non-empty."""
    if part == "training" and data.valid_ratio:
        return "lower --valid-ratio, or use more ratings"
    if data.split in ("random", "ratio"):
        return f"{'raise' if part == 'test' else 'lower'} --test-ratio, or use more ratings"
    if data.split in ("seq-aware", "leave-last"):
        return "use users with more than one rating, or another --split"
    return "use more ratings, or another --split"


def split_files_test(data) -> str:
    from autorec_jax.data import split_files
    return split_files.split_paths(data)["test"]
