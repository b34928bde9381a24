"""A fixed split read from files: `--train-ratings`, `--test-ratings`, `--valid-ratings`.

`--train-ratings` names a training file (then `--test-ratings` is required), or a folder
holding `train.*`, `test.*` and optionally `valid.*` (such as `scripts/data.py split`'s
output). Every file is read with the same reader and format options as `--ratings`; raw ids
are mapped over the union of the files in sorted-id order (the same mapping an internal
split of the whole file gets), so a split written by `scripts/data.py split` and read back
gives the same Ratings as the split made internally. Test users or items absent from
training are cold (counted by the cold-start rule). Without a validation file,
`--valid-ratio` carves validation out of the training file exactly as internal splits do.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from autorec_jax.data import splits
from autorec_jax.data.ratings import Ratings, map_ids
from autorec_jax.data.readers import _line_of_row, read_ratings
from autorec_jax.errors import DataError

PARTS = ("train", "valid", "test")


def split_paths(data) -> dict[str, str]:
    """{"train": path, "test": path[, "valid": path]} a DataConfig's split files name.

    Raises:
      DataError: a folder without exactly one train.* and one test.* (at most one valid.*),
        or a training file given without `--test-ratings`.
    """
    train = Path(data.train_ratings)
    if train.is_dir():
        found = {}
        for part in PARTS:
            hits = sorted(p for p in train.glob(f"{part}.*") if p.is_file()
                          and not p.name.endswith(".json") and ".tmp" not in p.name)
            if len(hits) > 1:
                raise DataError(f"folder holds several {part} files ({', '.join(h.name for h in hits)}); "
                                "keep one", path=str(train))
            if hits:
                found[part] = str(hits[0])
        for part in ("train", "test"):
            if part not in found:
                raise DataError(f"folder holds no {part}.* file; --train-ratings DIR needs "
                                "train.* and test.* (scripts/data.py split writes them)",
                                path=str(train))
        return found
    if data.test_ratings is None:
        raise DataError("--train-ratings FILE needs --test-ratings FILE (or give a folder "
                        "holding train.* and test.*)", path=str(train))
    out = {"train": str(train), "test": data.test_ratings}
    if data.valid_ratings is not None:
        out["valid"] = data.valid_ratings
    return out


def file_checksums(data) -> dict[str, dict[str, str]]:
    """{part: {"path": ..., "sha256": ...}} of the split files (for run.json, summary.json)."""
    out = {}
    for part, path in split_paths(data).items():
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        out[part] = {"path": path, "sha256": digest.hexdigest()}
    return out


def load_split_files(data, seed: int, fmt) -> tuple[Ratings, Ratings, Ratings]:
    """(train, valid, test) Ratings in one id space, read from the split files.

    Args:
      data: a DataConfig with `train_ratings` set.
      seed: the split seed (only the `valid_ratio` carve-out draws with it).
      fmt: the `readers.Format` every file is read with.

    Raises:
      DataError: naming file and line: a (user, item) pair in both training and test (or
        validation), a duplicated pair within a file, an empty file, files of different
        formats (timestamps in some only, integer ids in some and text ids in others).
    """
    paths = split_paths(data)
    parts = {part: read_ratings(path, fmt) for part, path in paths.items()}
    _check_formats(parts, paths)
    users = np.concatenate([r.user_ids[r.users] for r in parts.values()])
    items = np.concatenate([r.item_ids[r.items] for r in parts.values()])
    user_ids, users = map_ids(users)
    item_ids, items = map_ids(items)
    mapped, start = {}, 0
    for part, r in parts.items():
        stop = start + len(r)
        mapped[part] = Ratings(users=users[start:stop], items=items[start:stop],
                               ratings=r.ratings, timestamps=r.timestamps,
                               user_ids=user_ids, item_ids=item_ids)
        start = stop
    train, test = mapped["train"], mapped["test"]
    for part in ("valid", "test"):
        if part in mapped:
            _check_disjoint(train, mapped[part], paths["train"], paths[part], len(item_ids))
    if "valid" in mapped:
        valid = mapped["valid"]
    else:
        valid = train.take(np.zeros(0, np.int64))
        if data.valid_ratio:
            perm = np.random.default_rng([seed, splits.VALID_STREAM]).permutation(len(train))
            chosen = np.zeros(len(train), bool)
            chosen[perm[:round(data.valid_ratio * len(train))]] = True
            train, valid = train.take(~chosen), train.take(chosen)
    return train, valid, test


def _check_formats(parts: dict[str, Ratings], paths: dict[str, str]) -> None:
    first = "train"
    ref = parts[first]
    for part, r in parts.items():
        for what, a, b in (("timestamps", ref.timestamps is not None, r.timestamps is not None),
                           ("integer user ids", ref.user_ids.dtype.kind in "iu",
                            r.user_ids.dtype.kind in "iu"),
                           ("integer item ids", ref.item_ids.dtype.kind in "iu",
                            r.item_ids.dtype.kind in "iu")):
            if a != b:
                raise DataError(f"files of different formats: {paths[first]} has "
                                f"{what if a else 'no ' + what}, this file "
                                f"{what if b else 'no ' + what}; write every split file "
                                "with the same columns and id kind", path=paths[part],
                                line=_line(paths[part], r, 0))


def _check_disjoint(train: Ratings, other: Ratings, train_path: str, other_path: str,
                    num_items: int) -> None:
    keys = train.users.astype(np.int64) * num_items + train.items
    okeys = other.users.astype(np.int64) * num_items + other.items
    both = np.flatnonzero(np.isin(okeys, keys))
    if len(both):
        row = int(both[0])
        trow = int(np.flatnonzero(keys == okeys[row])[0])
        raise DataError(f"(user {other.user_ids[other.users[row]]!r}, item "
                        f"{other.item_ids[other.items[row]]!r}) is also in the training "
                        f"file ({train_path}:{_line(train_path, train, trow)}); a pair "
                        "belongs to one part only, remove one of the lines",
                        path=other_path, line=_line(other_path, other, row))


def _line(path: str, r: Ratings, row: int) -> int:
    """The 1-based line of data row `row` of `path` (a header line is skipped if present)."""
    data = Path(path).read_bytes()
    nonblank = sum(1 for line in data.splitlines() if line.strip())
    return _line_of_row(data, row, header=nonblank > len(r))
