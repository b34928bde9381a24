"""Where a run's rows live: loaded (whole, or only this process's row parts) and placed
on the devices, with the facts about the split that every process needs.

Three layouts, chosen by the mode and `data.parts`:
  replicated  jit and pmap: every device holds all rows; a step names its rows by index.
  shares      sharded: each device holds only the rows it works on, rebuilt every epoch
              from the epoch's batches (the host holds all rows).
  parts       sharded with `data.parts`: data device d keeps its row parts for the whole
              run, and a process loads only its own devices' parts (`data.parts`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from autorec_jax.data import (batching, coldstart, loading, parts as parts_lib, scaling,
                              split_files)
from autorec_jax.data.ratings import (Ratings, RowMatrix, csr_order, data_fingerprint, row_matrix,
                                      select_rows)
from autorec_jax import heldout_ranking as heldout_lib
from autorec_jax.errors import ConfigError
from autorec_jax.evaluator import EvalData
from autorec_jax.distributed.parallel import Parallel
from autorec_jax.rows import DeviceRows, to_device_rows


@dataclasses.dataclass(frozen=True, eq=False)
class SplitFacts:
    """What a run reports and checks about its split, with or without its ratings at hand.

    Attributes:
      counts: "train", "valid", "test" -> number of ratings.
      rating_range: (min, max) training rating.
      fingerprint: () -> the SHA-256 of the split (`data_fingerprint`).
      rating_unit: the ratings on the devices are the file's divided by this
        (`train.rating_scaling`; 1.0: unscaled); `rating_range` is in device units.
      split_files: a split read from files: {part: {"path", "sha256"}}
        (`split_files.file_checksums`, or the parts' record of them); else None.
    """

    num_users: int
    num_items: int
    counts: dict
    rating_range: tuple[float, float]
    user_ids: np.ndarray
    item_ids: np.ndarray
    fingerprint: Callable[[], str]
    rating_unit: float = 1.0
    split_files: dict | None = None


@dataclasses.dataclass(frozen=True, eq=False)
class HostData:
    """A run's rows on this host. `train_rows`, `heldout_rows` and `cold_fields` cover all
    rows, except in the parts layout, where `device_rows` holds this process's devices'
    rows instead ({d: (sets, fields)}, see `parts.concatenate`)."""

    facts: SplitFacts
    num_rows: int
    num_cols: int
    train_lengths: np.ndarray              # every row's training entries (static bounds)
    heldout_lengths: dict[str, np.ndarray]
    local_ratings: int                     # ratings this process holds
    train_rows: RowMatrix | None = None
    heldout_rows: dict | None = None
    cold_fields: dict | None = None
    entry_fields: dict = dataclasses.field(default_factory=dict)
    splits: tuple | None = None            # (train, valid, test) Ratings, when loaded whole
    parts: parts_lib.PartsInfo | None = None
    device_rows: dict | None = None


def load(config, parallel: Parallel, ratings: Ratings | None = None, cache_dir=None,
         entry_fields: dict | None = None) -> HostData:
    """The split's rows on this host: all of them, or only this process's parts."""
    if config.data.parts:
        return _load_parts(config, parallel, entry_fields)
    train, valid, test = loading.load_split(config.data, config.split_seed, ratings, cache_dir)
    checksums = (split_files.file_checksums(config.data)
                 if config.data.train_ratings is not None else None)
    orientation = config.data.orientation
    # train.rating_scaling: the device rows are in units of `unit` (data/scaling.py); the
    # splits kept on the host stay in rating units.
    unit = scaling.rating_unit(config.train.rating_scaling, train.ratings)
    train_rows = row_matrix(scaling.scaled(train, unit), orientation)
    heldout_rows = {"test": row_matrix(scaling.scaled(test, unit), orientation)}
    if len(valid):
        heldout_rows["valid"] = row_matrix(scaling.scaled(valid, unit), orientation)
    # Per held-out entry: cold or not, and the cold-start rule's prediction (`coldstart`).
    cold_fields = {name: coldstart.eval_fields(coldstart.loaded_rule(config.train.cold_start),
                                               train,
                                               {"test": test, "valid": valid}[name],
                                               orientation)
                   for name in heldout_rows}
    for fields_ in cold_fields.values():
        if "fallback" in fields_:  # a rule's value, in rating units
            fields_["fallback"] = (fields_["fallback"] / np.float32(unit)).astype(np.float32)
    order = csr_order(train, orientation)
    fields = {name: np.asarray(fn(train), np.float32)[order]
              for name, fn in (entry_fields or {}).items()}
    facts = SplitFacts(
        num_users=train.num_users, num_items=train.num_items,
        counts={"train": len(train), "valid": len(valid), "test": len(test)},
        rating_range=(float(train.ratings.min() / np.float32(unit)),
                      float(train.ratings.max() / np.float32(unit))), rating_unit=unit,
        user_ids=train.user_ids, item_ids=train.item_ids, split_files=checksums,
        fingerprint=lambda: data_fingerprint(
            *(np.asarray(a) for part in (train, valid, test)
              for a in (part.users, part.items, part.ratings))))
    return HostData(facts=facts, num_rows=train_rows.num_rows, num_cols=train_rows.num_cols,
                    train_lengths=train_rows.row_lengths,
                    heldout_lengths={n: r.row_lengths for n, r in heldout_rows.items()},
                    local_ratings=len(train) + len(valid) + len(test),
                    train_rows=train_rows, heldout_rows=heldout_rows, cold_fields=cold_fields,
                    entry_fields=fields, splits=(train, valid, test))


def _load_parts(config, parallel: Parallel, entry_fields) -> HostData:
    info = parts_lib.read_info(config.data.parts)
    parts_lib.check_config(info, config)
    if entry_fields:
        raise ConfigError("entry_fields need the training Ratings; they are not available "
                          "with data.parts")
    if config.train.last_batch != "pad":
        raise ConfigError(f"data.parts pads each part's last batch: set train.last_batch "
                          f"pad (got {config.train.last_batch})")
    meta = info.meta
    with np.load(info.folder / "ids.npz", allow_pickle=False) as ids:
        user_ids, item_ids = ids["users"], ids["items"]
    facts = SplitFacts(num_users=meta["num_users"], num_items=meta["num_items"],
                       counts=dict(meta["ratings"]), rating_range=tuple(meta["rating_range"]),
                       user_ids=user_ids, item_ids=item_ids,
                       fingerprint=lambda: meta["fingerprint"],
                       split_files=meta.get("split_files"))
    heldout_names = ["test"] + (["valid"] if meta["ratings"]["valid"] else [])
    common = dict(facts=facts, num_rows=meta["num_rows"], num_cols=meta["num_cols"],
                  train_lengths=info.all_lengths("train"),
                  heldout_lengths={n: info.all_lengths(n) for n in heldout_names}, parts=info)
    if parallel.mode == "sharded":
        owned = parts_lib.device_parts(info, parallel.data_size)
        device_rows = {d: _concatenated(info, owned[d], heldout_names)
                       for d in parallel.addressable_data_indices()}
        local = sum(m.nnz for sets, _ in device_rows.values() for m in sets.values())
        return HostData(local_ratings=local, device_rows=device_rows, **common)
    sets, fields = _concatenated(info, range(info.num_parts), heldout_names)
    return HostData(local_ratings=sum(m.nnz for m in sets.values()), train_rows=sets["train"],
                    heldout_rows={n: sets[n] for n in heldout_names},
                    cold_fields={n: fields[n] for n in heldout_names}, **common)


def _concatenated(info, part_ids, heldout_names) -> tuple[dict, dict]:
    sets, fields = parts_lib.concatenate([parts_lib.load_part(info, p) for p in part_ids])
    return ({n: sets[n] for n in ["train", *heldout_names]},
            {n: fields[n] for n in heldout_names})


@dataclasses.dataclass(frozen=True, eq=False)
class Placed:
    """The rows on the devices: `train_data` (None for shares: built each epoch),
    `heldout` (name -> EvalData), `eval_index` (the evaluation blocks, sharded, in the
    layout's row numbering), `eval_rows` (the same rows' global indices, which rank ties:
    `evaluator.rank_blocks`), and for the parts layout `row_offsets` (int [D]: the first
    global row of each data device)."""

    train_data: object
    heldout: dict
    eval_index: np.ndarray
    layout: str
    eval_rows: np.ndarray
    row_offsets: np.ndarray | None = None


def place(data: HostData, parallel: Parallel, eval_batch_size: int, *,
          orientation: str = "item", ranking_k: Sequence[int] | None = None) -> Placed:
    """Puts the training and held-out rows on the devices in this mode's layout; with
    `ranking_k` (the ranking cut-offs) each held-out set with its `heldout_lib.HeldoutOrder`
    (`heldout_ranking`), except in the parts layout, whose host holds only its own parts
    (the evaluator then ranks the held-out entries from the device alone)."""
    eval_index = parallel.shard(batching.blocks(data.num_rows, eval_batch_size))
    if data.device_rows is not None:
        return _place_parts(data, parallel, eval_index.shape[-1])
    size = max(rows.nnz for rows in data.heldout_rows.values())
    prepared = {name: heldout_ranking(rows, data.cold_fields[name], orientation,
                                      data.facts.num_users, ranking_k, size)
                for name, rows in data.heldout_rows.items()}
    if parallel.shares_rows:
        # Each device holds only its rows: its evaluation blocks' here, and each epoch's
        # batches' in `epoch_data` (a process builds its own devices' shares only).
        block_rows = eval_index[0].size
        in_size = batching.max_nnz(data.train_lengths, block_rows)
        target_size = max(batching.max_nnz(lengths, block_rows)
                          for lengths in data.heldout_lengths.values())

        def eval_share(rows, fields, order):
            def build(d):
                inputs, local = take_rows(data.train_rows, eval_index[d], in_size)
                return EvalData(inputs, take_rows(rows, eval_index[d], target_size,
                                                  fields)[0], order), local
            return parallel.put_shares(build)

        shared = {name: eval_share(rows, *prepared[name])
                  for name, rows in data.heldout_rows.items()}
        return Placed(train_data=None, heldout={n: d for n, (d, _) in shared.items()},
                      eval_index=shared["test"][1], layout="shares", eval_rows=eval_index)
    train_data = parallel.replicate(to_device_rows(data.train_rows, fields=data.entry_fields))
    # Held-out sets share one shape (padded CSR, orders of `size` places), hence one
    # compiled evaluation.
    heldout = {name: parallel.replicate(EvalData(
                   to_device_rows(data.train_rows), to_device_rows(rows, size,
                                                                   prepared[name][0]),
                   prepared[name][1]))
               for name, rows in data.heldout_rows.items()}
    return Placed(train_data=train_data, heldout=heldout, eval_index=eval_index,
                  layout="replicated", eval_rows=eval_index)


def heldout_ranking(rows: RowMatrix, fields: dict, orientation: str, num_users: int,
                    ranking_k: Sequence[int] | None, size: int
                    ) -> tuple[dict, heldout_lib.HeldoutOrder | None]:
    """(`fields` with each entry's place, `heldout_lib.SLOT`; the set's
    `heldout_lib.HeldoutOrder` of `size` places) for the held-out `rows` (all of them);
    without `ranking_k`, or past
    `heldout_lib.prepare_heldout`'s size, (`fields`, None)."""
    if ranking_k is None:
        return fields, None
    row_E = np.repeat(np.arange(rows.num_rows), np.diff(rows.indptr))
    col_E = np.asarray(rows.cols[:len(row_E)])
    user_E, item_E = (row_E, col_E) if orientation == "user" else (col_E, row_E)
    prepared = heldout_lib.prepare_heldout(user_E, item_E, rows.values[:len(row_E)],
                                           num_users, tuple(ranking_k), size)
    if prepared is None:
        return fields, None
    return {**fields, heldout_lib.SLOT: prepared[0]}, prepared[1]


def _place_parts(data: HostData, parallel: Parallel, block_size: int) -> Placed:
    """Each data device keeps its parts' rows, numbered from 0, for the whole run."""
    info = data.parts
    owned = parts_lib.device_parts(info, parallel.data_size)
    offsets, counts = info.offsets[[r.start for r in owned]], np.array(
        [int(info.sizes[list(r)].sum()) for r in owned])

    def nnz(name, r):
        return int(sum(info.lengths[name][p].sum() for p in r))

    train_size = max(nnz("train", r) for r in owned)
    target_size = max(nnz(name, r) for name in data.heldout_lengths for r in owned)
    rows = int(counts.max())  # every device's CSR gets as many rows (empty ones at the end)
    train_data = parallel.put_shares(
        lambda d: to_device_rows(_with_rows(data.device_rows[d][0]["train"], rows),
                                 train_size))
    heldout = {name: EvalData(train_data, parallel.put_shares(lambda d, name=name: (
                   to_device_rows(_with_rows(data.device_rows[d][0][name], rows),
                                  target_size, data.device_rows[d][1][name]))))
               for name in data.heldout_lengths}
    blocks = batching.blocks(int(counts.max()), block_size)
    eval_index = np.stack([np.where(blocks < count, blocks, batching.PAD_ROW)
                           for count in counts])
    # Global rows in the parts' order (data device d's rows start at offsets[d]).
    eval_rows = np.where(eval_index >= 0, eval_index + offsets[:, None, None],
                         batching.PAD_ROW).astype(np.int32)
    return Placed(train_data=train_data, heldout=heldout, eval_index=eval_index,
                  layout="parts", eval_rows=eval_rows, row_offsets=offsets)


def _with_rows(matrix: RowMatrix, num_rows: int) -> RowMatrix:
    """`matrix` with empty rows appended up to `num_rows`."""
    extra = num_rows - matrix.num_rows
    indptr = np.concatenate([matrix.indptr, np.full(extra, matrix.indptr[-1])])
    return dataclasses.replace(matrix, indptr=indptr)


def epoch_data(placed: Placed, data: HostData, parallel: Parallel, index: np.ndarray):
    """(the training rows, the sharded index [D, S, b]) for an epoch of sharded batches."""
    if placed.layout == "parts":
        local = index - placed.row_offsets.reshape((-1,) + (1,) * (index.ndim - 1))
        return placed.train_data, np.where(index >= 0, local, batching.PAD_ROW).astype(
            np.int32)
    if placed.layout == "shares":
        # This epoch's rows of each device, in batch order (rows may repeat: rollover).
        size = batching.max_nnz(data.train_lengths, index[0].size, 2)
        return parallel.put_shares(lambda d: take_rows(data.train_rows, index[d], size,
                                                       data.entry_fields))
    return placed.train_data, index


def plan_epoch(config, data: HostData, batch_size: int, shuffle: np.random.Generator,
               carry: np.ndarray, seed: np.ndarray, epoch: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """(batches int32 [S, B], the next carry): from `shuffle` over all rows (rows in index
    order without `train.shuffle`), or per part."""
    if data.parts is not None:
        return parts_lib.epoch_batches(data.parts, config.train.batch_size, seed, epoch), carry
    order = (shuffle.permutation(data.num_rows) if config.train.shuffle
             else np.arange(data.num_rows)).astype(np.int32)
    return batching.epoch_batches(order, carry, batch_size, config.train.last_batch)


def rows_per_step(config, data: HostData) -> int:
    """B: the config's batch size (all rows for 0, full batch); from parts, B/P rows of each
    part (the largest part's rows for a full batch)."""
    if data.parts is not None:
        return parts_lib.rows_per_part(data.parts, config.train.batch_size) * \
            data.parts.num_parts
    return config.train.batch_size or data.num_rows


def steps_per_epoch(config, data: HostData, batch_size: int) -> list[int]:
    if data.parts is not None:
        return [parts_lib.steps_per_epoch(data.parts, config.train.batch_size)] * \
            config.train.epochs
    return batching.steps_per_epoch(data.num_rows, batch_size, config.train.epochs,
                                    config.train.last_batch)


def take_rows(rows: RowMatrix, index: np.ndarray, size: int,
              fields: dict[str, np.ndarray] | None = None) -> tuple[DeviceRows, np.ndarray]:
    """The rows `index` (int, any shape, negative = padding) as their own CSR, in order.

    Returns (`DeviceRows` as NumPy with `size` entry slots, the local index: position k of
    `index` becomes row k, padding stays negative). A device given only these rows and
    the local index builds exactly the batches `index` names: a device's share of the
    data, in place of all rows on every device.
    """
    flat = np.asarray(index).reshape(-1)
    local, pos = select_rows(rows, flat)
    if len(pos) > size:
        raise ValueError(f"{len(pos)} entries exceed the {size} slots")
    extra = {name: np.asarray(a)[pos] for name, a in (fields or {}).items()}
    local_index = np.where(flat >= 0, np.arange(len(flat)), -1).astype(np.int32)
    return to_device_rows(local, size, extra), local_index.reshape(np.shape(index))
