"""A fixed split read from files: `--train-ratings`, `--test-ratings`, `--valid-ratings`.

`--train-ratings` names a training file (then `--test-ratings` is required), or a folder
holding `train.*`, `test.*` and optionally `valid.*` (such as `scripts/data.py split`'s
output). Every file is read with the same reader and format options as `--ratings`; raw ids
are mapped over the union of the files in sorted-id order (the same mapping an internal
split of the whole file gets), so a split written by `scripts/data.py split` and read back
gives the same Ratings as the split made internally. Test users or items absent from
training are cold (counted by the cold-start rule). Without a validation file,
`--valid-ratio` carves validation out of the training file exactly as internal splits do.
Every file must be written like the training file (separator, fields, header, id kind).
`file_checksums` (each file's path and SHA-256) is what run.json, summary.json and a parts
folder's meta.json record, and what `--resume` (and a run given parts and files) compares.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from autorec_jax.data import splits
from autorec_jax.data.ratings import Ratings, _plain, map_ids
from autorec_jax.data.readers import Layout, _line_of_row, read_ratings, sniff_layout
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
                names = ", ".join(h.name for h in hits)
                raise DataError(f"folder holds several {part} files ({names}); keep one",
                                path=str(train))
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


def changed_file(recorded: dict, current: dict, *, paths: bool = True) -> str | None:
    """The first difference between two `file_checksums` records, in words naming the file;
    None when they hold the same parts with the same contents (and paths, if `paths`)."""
    for part in dict.fromkeys([*recorded, *current]):
        was, now = recorded.get(part), current.get(part)
        if was is None or now is None:
            return (f"the {part} file {(was or now)['path']} "
                    f"{'is new' if was is None else 'is no longer given'}")
        if paths and was["path"] != now["path"]:
            return f"the {part} file was {was['path']}, now {now['path']}"
        if was["sha256"] != now["sha256"]:
            return (f"the {part} file {now['path']} changed (sha256 {was['sha256'][:12]}... "
                    f"recorded, {now['sha256'][:12]}... now)")
    return None


def load_split_files(data, seed: int, fmt) -> tuple[Ratings, Ratings, Ratings]:
    """(train, valid, test) Ratings in one id space, read from the split files.

    Args:
      data: a DataConfig with `train_ratings` set.
      seed: the split seed (only the `valid_ratio` carve-out draws with it).
      fmt: the `readers.Format` every file is read with.

    Raises:
      DataError: naming file and line: a (user, item) pair in two parts (training and
        test, training and validation, validation and test), a duplicated pair within a
        file, an empty file, files of different formats (separator, number of fields, a
        header in some only, integer ids in some and text ids in others).
    """
    paths = split_paths(data)
    layouts = {part: sniff_layout(path, fmt) for part, path in paths.items()}
    _check_layouts(layouts, paths)
    parts = {part: read_ratings(path, fmt) for part, path in paths.items()}
    _check_id_kinds(parts, paths, layouts)
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
    for first, second in (("train", "valid"), ("train", "test"), ("valid", "test")):
        if first in mapped and second in mapped:
            _check_disjoint(mapped, layouts, paths, first, second, len(item_ids))
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


_FIX = "write every split file the same way (scripts/data.py split writes them alike)"


def _check_layouts(layouts: dict[str, Layout], paths: dict[str, str]) -> None:
    """Every file read as the training file is: same separator, fields and header."""
    ref = layouts["train"]
    for part, layout in layouts.items():
        for a, b in ((f"separator {x.sep!r}" for x in (ref, layout)),
                     (f"{len(x.columns)} fields ({','.join(x.columns)})" for x in (ref, layout)),
                     ("a header line" if x.header else "no header line" for x in (ref, layout))):
            if a != b:
                raise DataError(f"files of different formats: {b} here, {a} in the training "
                                f"file {paths['train']}; {_FIX}", path=paths[part],
                                line=layout.first_line)


def _check_id_kinds(parts: dict[str, Ratings], paths: dict[str, str],
                    layouts: dict[str, Layout]) -> None:
    ref = parts["train"]
    for part, r in parts.items():
        for role, a, b in (("user", ref.user_ids, r.user_ids), ("item", ref.item_ids,
                                                                r.item_ids)):
            if (a.dtype.kind in "iu") != (b.dtype.kind in "iu"):
                kind = {True: "integer", False: "text"}
                raise DataError(f"files of different formats: {kind[b.dtype.kind in 'iu']} "
                                f"{role} ids here, {kind[a.dtype.kind in 'iu']} in the "
                                f"training file {paths['train']}; {_FIX}, or pass "
                                "--id-type str", path=paths[part],
                                line=_line(paths[part], layouts[part], 0))


_NAMES = {"train": "training", "valid": "validation", "test": "test"}


def _check_disjoint(mapped: dict[str, Ratings], layouts: dict[str, Layout],
                    paths: dict[str, str], first: str, second: str, num_items: int) -> None:
    """No (user, item) pair of part `second` is also in part `first`."""
    a, b = mapped[first], mapped[second]
    keys = a.users.astype(np.int64) * num_items + a.items
    bkeys = b.users.astype(np.int64) * num_items + b.items
    both = np.flatnonzero(np.isin(bkeys, keys))
    if len(both):
        row = int(both[0])
        arow = int(np.flatnonzero(keys == bkeys[row])[0])
        raise DataError(f"(user {_plain(b.user_ids[b.users[row]])!r}, item "
                        f"{_plain(b.item_ids[b.items[row]])!r}) is also in the "
                        f"{_NAMES[first]} file ({paths[first]}:"
                        f"{_line(paths[first], layouts[first], arow)}); a pair belongs to "
                        "one part only, remove one of the lines",
                        path=paths[second], line=_line(paths[second], layouts[second], row))


def _line(path: str, layout: Layout, row: int) -> int:
    """The 1-based line of data row `row` of `path` (its header line skipped)."""
    return _line_of_row(Path(path).read_bytes(), row, header=layout.header)
