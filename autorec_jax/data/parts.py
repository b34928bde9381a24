"""Row parts: a split's rows dealt into P parts and saved once, so that each process of a
multi-process run loads only the parts its own devices train on.

    python scripts/data.py parts ml-20m --count 8 --out parts/ml20m   # once, one process
    python scripts/train.py --parts parts/ml20m ...                    # every process

A folder (written whole by `write_parts`, then renamed into place):
  meta.json       what the parts were made from (the data config, split seed and cold-start
                  rule; from split files, each file's path and SHA-256), the matrix shape,
                  rating counts and range, the data fingerprint
  lengths.npz     every part's row lengths of train/valid/test: the static bounds of the
                  compiled calls, the same on every process
  ids.npz         the raw user and item ids (a run's ids.json)
  part-NNNNN.npz  the part's global row ids, its train/valid/test rows (CSR) and the
                  held-out entries' cold-start fields

Training from parts draws batches per part: each step takes B/P rows of every part, each
part shuffled on its own every epoch, and data device d keeps parts [d*k, (d+1)*k) (k =
P/D) for the whole run. The batches depend on P, not on the devices or processes, so one
process with 8 devices, two with 4, and one device all train alike.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np

from autorec_jax.data.ratings import RowMatrix, select_rows
from autorec_jax.fileio import temp_name
from autorec_jax.errors import ConfigError, DataError

FORMAT = 1
HELDOUT = ("valid", "test")
SETS = ("train",) + HELDOUT
# The run's config fields a folder's parts depend on (the rest may differ freely).
DEPENDS_ON = ("orientation", "split", "test_ratio", "valid_ratio", "folds", "fold",
              "leave_last")
FILES_DEPEND_ON = ("orientation", "valid_ratio")  # a split from files: the files are the rest


@dataclasses.dataclass(frozen=True, eq=False)
class PartsInfo:
    """A parts folder's small files: what every process knows about all parts.

    Attributes:
      lengths: set name -> one int array per part, its rows' stored entries.
      meta: meta.json (see the module doc).
    """

    folder: Path
    meta: dict
    lengths: dict[str, list[np.ndarray]]

    @property
    def num_parts(self) -> int:
        return self.meta["num_parts"]

    @property
    def sizes(self) -> np.ndarray:
        """int [P]: rows per part."""
        return np.array([len(a) for a in self.lengths["train"]])

    @property
    def offsets(self) -> np.ndarray:
        """int [P + 1]: where each part starts when the parts' rows are numbered in order."""
        return np.concatenate([[0], np.cumsum(self.sizes)])

    def all_lengths(self, name: str) -> np.ndarray:
        """Every row's stored entries of set `name`, parts in order."""
        return np.concatenate(self.lengths[name])


@dataclasses.dataclass(frozen=True, eq=False)
class Part:
    """One part: `rows` (global row ids, sorted) and their rows of each set, in that order.

    Attributes:
      sets: "train", "valid", "test" -> RowMatrix over this part's rows.
      fields: "valid", "test" -> the evaluator's per-entry cold-start fields (CSR order).
    """

    rows: np.ndarray
    sets: dict[str, RowMatrix]
    fields: dict[str, dict[str, np.ndarray]]


def write_parts(config, out_dir, num_parts: int, *, ratings=None, cache_dir=None) -> PartsInfo:
    """Splits the config's data as a run would, deals its rows into `num_parts` parts (a
    seeded shuffle dealt round-robin: sizes differ by at most one) and writes the folder.

    Raises:
      ConfigError: a bad count, or `out_dir` exists.
    """
    from autorec_jax.data import coldstart, loading, split_files
    from autorec_jax.data.ratings import data_fingerprint, row_matrix

    out = Path(out_dir).expanduser()
    if not isinstance(num_parts, int) or num_parts < 1:
        raise ConfigError(f"the number of parts must be a positive integer, got {num_parts!r}")
    if out.exists():
        raise ConfigError(f"{out} exists; choose a new folder for the parts (or remove it)")
    orientation = config.data.orientation
    train, valid, test = loading.load_split(config.data, config.split_seed, ratings, cache_dir)
    checksums = (split_files.file_checksums(config.data)
                 if config.data.train_ratings is not None else None)
    split = {"train": train, "valid": valid, "test": test}
    matrices = {name: row_matrix(part, orientation) for name, part in split.items()}
    num_rows = matrices["train"].num_rows
    if num_parts > num_rows:
        raise ConfigError(f"{num_parts} parts exceed the {num_rows} rows")
    fields = {name: coldstart.eval_fields(config.train.cold_start, train, split[name],
                                          orientation) for name in HELDOUT}
    dealt = np.random.default_rng(config.split_seed).permutation(num_rows)
    owners = [np.sort(dealt[p::num_parts]) for p in range(num_parts)]
    meta = {
        "format": FORMAT, "num_parts": num_parts, "num_rows": num_rows,
        "num_cols": matrices["train"].num_cols,
        "data": {name: getattr(config.data, name)
                 for name in (DEPENDS_ON if checksums is None else FILES_DEPEND_ON)},
        **({"split_files": checksums} if checksums is not None else {}),
        "dataset": loading.dataset_label(config.data, checksums),
        "split_seed": config.split_seed,
        "cold_start": config.train.cold_start,
        "num_users": train.num_users, "num_items": train.num_items,
        "ratings": {name: len(part) for name, part in split.items()},
        "rating_range": [float(train.ratings.min()), float(train.ratings.max())],
        "fingerprint": data_fingerprint(
            *(np.asarray(a) for part in split.values()
              for a in (part.users, part.items, part.ratings))),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / temp_name(out.name)
    tmp.mkdir()
    try:
        lengths = {}
        for p, rows in enumerate(owners):
            arrays = {"rows": rows}
            for name, matrix in matrices.items():
                sub, pos = select_rows(matrix, rows)
                arrays.update({f"{name}_indptr": sub.indptr, f"{name}_cols": sub.cols,
                               f"{name}_values": sub.values})
                lengths[f"{name}_{p}"] = sub.row_lengths.astype(np.int32)
                for field, values in fields.get(name, {}).items():
                    arrays[f"{name}_field_{field}"] = values[pos]
            np.savez(tmp / _part_file(p), **arrays)
        np.savez(tmp / "lengths.npz", **lengths)
        np.savez(tmp / "ids.npz", users=np.asarray(train.user_ids),
                 items=np.asarray(train.item_ids))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return read_info(out)


def read_info(folder) -> PartsInfo:
    """The folder's meta.json and lengths.npz.

    Raises:
      DataError: not a parts folder, or an unknown format.
    """
    folder = Path(folder).expanduser()
    try:
        meta = json.loads((folder / "meta.json").read_text())
        with np.load(folder / "lengths.npz") as lengths:
            per_part = {name: [lengths[f"{name}_{p}"] for p in range(meta["num_parts"])]
                        for name in SETS}
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"{folder} is not a complete parts folder (scripts/data.py parts "
                        f"writes one): {err}") from None
    if meta.get("format") != FORMAT:
        raise DataError(f"{folder}: parts format {meta.get('format')!r}; this version reads "
                        f"{FORMAT} (write the parts again)")
    return PartsInfo(folder=folder, meta=meta, lengths=per_part)


def load_part(info: PartsInfo, p: int) -> Part:
    """Part `p` from disk (only its own file is read)."""
    path = info.folder / _part_file(p)
    try:
        with np.load(path) as z:
            sets = {name: RowMatrix(indptr=z[f"{name}_indptr"], cols=z[f"{name}_cols"],
                                    values=z[f"{name}_values"], num_cols=info.meta["num_cols"])
                    for name in SETS}
            fields = {name: {key[len(name) + 7:]: z[key] for key in z.files
                             if key.startswith(f"{name}_field_")} for name in HELDOUT}
            rows = z["rows"]
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"part {p} of {info.folder} is unreadable ({path.name}: {err}); "
                        "write the parts again") from None
    return Part(rows=rows, sets=sets, fields=fields)


def check_config(info: PartsInfo, config) -> None:
    """Refuses a run whose data settings differ from those the parts were made with; a run
    that also names split files (`data.train_ratings`) must name those the parts were
    written from, unchanged.

    Raises:
      ConfigError: naming each differing setting, or the first differing split file.
    """
    made = dict(info.meta["data"], split_seed=info.meta["split_seed"],
                cold_start=info.meta["cold_start"])
    wanted = dict({name: getattr(config.data, name) for name in DEPENDS_ON},
                  split_seed=config.split_seed, cold_start=config.train.cold_start)
    differ = [f"{name} {wanted[name]!r} (the parts': {made[name]!r})" for name in made
              if made[name] != wanted[name]]
    if differ:
        raise ConfigError(f"data.parts {info.folder} was written for other settings: "
                          f"{'; '.join(differ)}. Pass the parts' settings or write new parts")
    if config.data.train_ratings is not None:
        from autorec_jax.data import split_files
        recorded = info.meta.get("split_files")
        if recorded is None:
            raise ConfigError(f"data.parts {info.folder} was not written from split files "
                              f"(it holds {info.meta['dataset']}); drop --train-ratings, or "
                              "write the parts with scripts/data.py parts --train-ratings")
        changed = split_files.changed_file(
            recorded, split_files.file_checksums(config.data), paths=False)
        if changed:
            raise ConfigError(f"data.parts {info.folder} does not match --train-ratings: "
                              f"{changed}; write the parts again from these files")
    if config.train.retrain:
        raise ConfigError("train.retrain with data.parts is not supported: write parts of the "
                          "train + validation split (valid_ratio 0) and train on them for "
                          "the selected number of epochs")


def concatenate(parts: list[Part]) -> tuple[dict[str, RowMatrix], dict[str, dict]]:
    """The rows of several parts in order, as one RowMatrix per set, and their fields."""
    sets = {}
    for name in SETS:
        matrices = [part.sets[name] for part in parts]
        lengths = np.concatenate([m.row_lengths for m in matrices])
        sets[name] = RowMatrix(
            indptr=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            cols=np.concatenate([m.cols for m in matrices]),
            values=np.concatenate([m.values for m in matrices]),
            num_cols=matrices[0].num_cols)
    fields = {name: {key: np.concatenate([part.fields[name][key] for part in parts])
                     for key in parts[0].fields[name]} for name in HELDOUT}
    return sets, fields


def rows_per_part(info: PartsInfo, batch_size: int) -> int:
    """b: the rows each part gives a step (B / P; all its rows for a full batch, B = 0).

    Raises:
      ConfigError: B not a multiple of P.
    """
    if batch_size == 0:
        return int(info.sizes.max())
    if batch_size % info.num_parts:
        raise ConfigError(f"train.batch_size {batch_size} must be a multiple of the "
                          f"{info.num_parts} parts of {info.folder} (each part gives a step "
                          "the same number of rows)")
    return batch_size // info.num_parts


def steps_per_epoch(info: PartsInfo, batch_size: int) -> int:
    """Steps of every epoch: enough for the largest part (smaller ones pad)."""
    return math.ceil(int(info.sizes.max()) / rows_per_part(info, batch_size))


def epoch_batches(info: PartsInfo, batch_size: int, seed: np.ndarray, epoch: int
                  ) -> np.ndarray:
    """int32 [S, P * b]: step s takes rows [s*b, (s+1)*b) of each part's order for this
    epoch (PAD_ROW past a part's end); rows are numbered parts in order (`offsets`).

    A part's order depends only on (seed, epoch, part), so any process draws the same
    batches, and a resumed run the same as an uninterrupted one.
    """
    from autorec_jax.data.batching import PAD_ROW
    b = rows_per_part(info, batch_size)
    steps = steps_per_epoch(info, batch_size)
    out = np.full((steps, info.num_parts, b), PAD_ROW, np.int32)
    words = [int(w) for w in np.asarray(seed, np.uint32).ravel()]
    for p, (size, offset) in enumerate(zip(info.sizes, info.offsets)):
        order = np.random.default_rng(words + [epoch, p]).permutation(size) + offset
        padded = np.full(steps * b, PAD_ROW, np.int32)
        padded[:size] = order
        out[:, p] = padded.reshape(steps, b)
    return out.reshape(steps, info.num_parts * b)


def device_parts(info: PartsInfo, data_size: int) -> list[range]:
    """The parts of each data device: device d keeps parts [d*k, (d+1)*k), k = P / D.

    Raises:
      ConfigError: P not a multiple of D.
    """
    if info.num_parts % data_size:
        raise ConfigError(f"the {info.num_parts} parts of {info.folder} do not divide among "
                          f"{data_size} data devices; write a multiple of {data_size} parts")
    k = info.num_parts // data_size
    return [range(d * k, (d + 1) * k) for d in range(data_size)]


def _part_file(p: int) -> str:
    return f"part-{p:05d}.npz"
