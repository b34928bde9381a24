"""Using a trained network: reconstruct rows, predict (user, item) pairs, rank a user's top K.

Everything reads the TRAINING ratings of the run (re-derived from its config by
`training_ratings`), as the evaluator does: a prediction is the network's reconstruction of
a training row in inference mode. Rows are densified on the host one block at a time, so no
dense rows x cols matrix is ever built. Raw ids go in and come out; indices stay inside.
Every function takes `model=`: the Flax module of the params when it is not the config's
network (`load_run(...).model` holds it; the contract: `autorec_jax.networks`).
"""

from __future__ import annotations

import csv
import functools
import io
import math
from pathlib import Path
from typing import Any, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from autorec_jax.config import Config
from autorec_jax.data import loading, movielens, scaling
from autorec_jax.data.ratings import Ratings, RowMatrix, row_matrix
from autorec_jax.fileio import atomic_write_bytes
from autorec_jax.errors import DataError
from autorec_jax import networks

PyTree = Any
# Dense entries per block (64 MiB of float32): bounds host and device memory whatever N is.
BLOCK_ENTRIES = 1 << 24


@functools.partial(jax.jit, static_argnums=0)
def _reconstruct(model: nn.Module, params: PyTree, ratings_BxN: jax.Array) -> jax.Array:
    return model.apply({"params": params}, ratings_BxN, train=False)


@functools.partial(jax.jit, static_argnums=0)
def _reconstruct_column(model: nn.Module, params: PyTree, ratings_BxN: jax.Array,
                        col: jax.Array) -> jax.Array:
    # Picking the column on the device moves B floats to the host instead of B x N.
    return model.apply({"params": params}, ratings_BxN, train=False)[:, col]


def dense_rows(rows: RowMatrix, index: np.ndarray, num_rows: int | None = None) -> np.ndarray:
    """Dense float32 [num_rows, N] of CSR rows `index` (0 = unobserved); rows past
    len(index) are zero padding."""
    index = np.asarray(index, np.int64)
    starts = rows.indptr[index]
    lengths = rows.indptr[index + 1] - starts
    out = np.zeros((num_rows or len(index), rows.num_cols), np.float32)
    slot = np.repeat(np.arange(len(index)), lengths)
    pos = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
    out[slot, rows.cols[pos]] = rows.values[pos]
    return out


def _block_size(config: Config, num_cols: int, count: int) -> int:
    # Powers of two bound the number of compiled shapes; padding rows are zeros.
    limit = max(1, min(config.train.eval_batch_size, BLOCK_ENTRIES // max(num_cols, 1)))
    return min(limit, 1 << max(count - 1, 0).bit_length())


def _model(config: Config, params: PyTree, rows: RowMatrix, model=None) -> nn.Module:
    """The module of `params` (`model`, else the config's network), checked against the rows'
    width: its output for a row of the training data must be that row's shape."""
    module = networks.resolve_model(config, rows.num_cols, model)
    probe = rows.num_rows if networks.reads_whole_matrix(module) else 1
    try:
        out = jax.eval_shape(lambda p: module.apply(
            {"params": p}, jnp.zeros((probe, rows.num_cols), jnp.float32), train=False),
            params)
        widths_match = out.shape == (probe, rows.num_cols)
    except (ValueError, TypeError, flax.errors.FlaxError):
        widths_match = False
    if not widths_match:
        raise DataError(f"the network's params do not read and write rows of "
                        f"{rows.num_cols} entries, as the training data's rows have: the "
                        "params belong to another dataset, split, orientation or model")
    return module


def _clip(config: Config, rows: RowMatrix, values: np.ndarray) -> np.ndarray:
    # The evaluator's range: the smallest and largest training rating.
    if config.train.clip_predictions and rows.nnz:
        return np.clip(values, rows.values.min(), rows.values.max())
    return values


def _blocks(config: Config, params: PyTree, rows: RowMatrix, row_index: np.ndarray,
            col: int | None = None, model=None):
    """Yields (start, reconstruction of rows row_index[start:start + b]) block by block:
    float32 [b, N], or [b] (the column `col`) when `col` is given."""
    model = _model(config, params, rows, model)
    size = _block_size(config, rows.num_cols, len(row_index))
    # train.rating_scaling: the network reads and writes ratings / unit (data/scaling.py).
    unit = np.float32(scaling.rating_unit(config.train.rating_scaling, rows.values))
    if networks.reads_whole_matrix(model):
        # GLocal-K's input is every row in index order: one pass, then the rows asked for.
        every = np.arange(rows.num_rows)
        ratings_MxN = dense_rows(rows, every, len(every)) / unit
        out = np.asarray(_reconstruct(model, params, ratings_MxN) if col is None else
                         _reconstruct_column(model, params, ratings_MxN, np.int32(col)))
        out = out * unit if unit != 1 else out
        for start in range(0, len(row_index), size):
            yield start, out[row_index[start:start + size]]
        return
    for start in range(0, len(row_index), size):
        index = row_index[start:start + size]
        ratings_BxN = dense_rows(rows, index, size)
        if unit != 1:
            ratings_BxN = ratings_BxN / unit
        if col is None:
            out = _reconstruct(model, params, ratings_BxN)
        else:
            out = _reconstruct_column(model, params, ratings_BxN, np.int32(col))
        out = np.asarray(out)[:len(index)]
        yield start, out * unit if unit != 1 else out


def predict_matrix_rows(config: Config, params: PyTree, train_rows: RowMatrix,
                        row_index, *, model=None) -> np.ndarray:
    """Reconstructions of training rows in inference mode (no dropout), clipped if configured.

    Args:
      config: the run's config (model shape, eval_batch_size, clip_predictions).
      params: the network's params.
      train_rows: the run's training rows (`row_matrix(train, orientation)`).
      row_index: int [R] rows to reconstruct.

    Returns:
      float32 [R, N].
    """
    row_index = np.asarray(row_index, np.int64).reshape(-1)
    if len(row_index) and (row_index.min() < 0 or row_index.max() >= train_rows.num_rows):
        raise IndexError(f"row indices must lie in [0, {train_rows.num_rows})")
    out = np.zeros((len(row_index), train_rows.num_cols), np.float32)
    for start, block in _blocks(config, params, train_rows, row_index, model=model):
        out[start:start + len(block)] = block
    return _clip(config, train_rows, out)


def lookup_ids(known_ids: np.ndarray, raw) -> np.ndarray:
    """Index of each raw id in `known_ids` (int64, -1 where unknown). Text ids such as "7"
    (from a CSV file or the command line) match integer ids."""
    known_ids = np.asarray(known_ids)
    raw = pd.Series(np.asarray(raw, dtype=object).reshape(-1), dtype=object)
    if known_ids.dtype.kind in "iu":
        text = raw.astype(str).str.strip()
        ok = text.str.fullmatch(r"[+-]?\d+").to_numpy(bool)
        values = np.zeros(len(raw), np.int64)
        values[ok] = text[ok].astype(np.int64).to_numpy()
        index = pd.Index(known_ids.astype(np.int64)).get_indexer(values)
        return np.where(ok, index, -1).astype(np.int64)
    return pd.Index(known_ids.astype(str)).get_indexer(raw.astype(str).to_numpy()).astype(
        np.int64)


def _unknown(kind: str, raw, index: np.ndarray, hint: str) -> DataError:
    bad = pd.unique(pd.Series(np.asarray(raw, dtype=object).reshape(-1)[index < 0]))
    shown = ", ".join(repr(_plain(b)) for b in bad[:3]) + (", ..." if len(bad) > 3 else "")
    return DataError(f"unknown {kind} id{'s' if len(bad) > 1 else ''} {shown} ({len(bad)} in "
                     f"all): not in the run's data{hint}")


def predict_pairs(config: Config, params: PyTree, train: Ratings, user_ids_raw,
                  item_ids_raw, *, cold_start: float | None = None, model=None
                  ) -> np.ndarray:
    """Predicted ratings of raw (user, item) pairs.

    Each needed row (the item for I-AutoRec, the user for U-AutoRec) is reconstructed once,
    from the training ratings. A user or item that is in the run's id space but has no
    training rating gets the network's answer, as evaluation gives under the default
    `train.cold_start` "network" (`coldstart.fallback_values` gives another rule's values).

    Args:
      config: the run's config.
      params: the network's params.
      train: the run's training ratings (`training_ratings`).
      user_ids_raw, item_ids_raw: [P] raw ids (ints or their text).
      cold_start: the prediction for pairs with an id the run never saw; None: such ids are
        an error.

    Returns:
      float32 [P], clipped to the training rating range when config.train.clip_predictions.

    Raises:
      DataError: an unknown id (the first few are named) and no cold_start value.
    """
    users, items = lookup_ids(train.user_ids, user_ids_raw), lookup_ids(train.item_ids,
                                                                        item_ids_raw)
    if len(users) != len(items):
        raise ValueError(f"{len(users)} users but {len(items)} items")
    if cold_start is None:
        hint = "; pass a cold-start value to predict such pairs"
        for kind, raw, index in (("user", user_ids_raw, users), ("item", item_ids_raw, items)):
            if np.any(index < 0):
                raise _unknown(kind, raw, index, hint)
    orientation = config.data.orientation
    known = (users >= 0) & (items >= 0)
    row, col = (items, users) if orientation == "item" else (users, items)
    out = np.full(len(users), np.nan if cold_start is None else cold_start, np.float32)
    out[known] = predict_entries(config, params, row_matrix(train, orientation), row[known],
                                 col[known], model=model)
    return out


def predict_entries(config: Config, params: PyTree, train_rows: RowMatrix, row_index,
                    col_index, *, model=None) -> np.ndarray:
    """The network's predictions at (row, col) entries of the training matrix.

    Each needed row is reconstructed once, in inference mode, block by block (no dense
    rows x cols matrix); clipped to the training rating range when configured.

    Args:
      config: the run's config.
      params: the network's params.
      train_rows: the run's training rows (`row_matrix(train, orientation)`).
      row_index, col_index: int [P] entries (items, users for I-AutoRec).

    Returns:
      float32 [P].
    """
    row, col = np.asarray(row_index, np.int64), np.asarray(col_index, np.int64)
    needed, slot = np.unique(row, return_inverse=True)
    order = np.argsort(slot, kind="stable")
    sorted_slot = slot[order]
    values = np.zeros(len(row), np.float32)
    for start, block in _blocks(config, params, train_rows, needed, model=model):
        lo, hi = np.searchsorted(sorted_slot, [start, start + len(block)])
        pick = order[lo:hi]
        values[pick] = block[slot[pick] - start, col[pick]]
    return _clip(config, train_rows, values)


def top_k(config: Config, params: PyTree, train: Ratings, user_raw_id, k: int = 10, *,
          exclude_rated: bool = True, exclude_untrained: bool = True, model=None
          ) -> list[tuple]:
    """The user's K best-scored items, best first.

    Items are ranked by the unclipped reconstruction (clipping would tie the top); the
    scores returned are what `predict_pairs` gives for the same pairs.

    Args:
      user_raw_id: the user's raw id (or its text).
      k: how many items (fewer when fewer are eligible).
      exclude_rated: leave out the items the user rated in training.
      exclude_untrained: leave out items with no training rating (the network never saw
        them, so their scores come from biases alone).

    Returns:
      [(raw item id, score)], K at most.

    Raises:
      DataError: the user is not in the run's data.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    user = int(lookup_ids(train.user_ids, [user_raw_id])[0])
    if user < 0:
        raise _unknown("user", [user_raw_id], np.array([-1]), "")
    if config.data.orientation == "item":
        rows = row_matrix(train, "item")
        scores = np.zeros(rows.num_rows, np.float32)
        for start, block in _blocks(config, params, rows, np.arange(rows.num_rows), col=user,
                                    model=model):
            scores[start:start + len(block)] = block
    else:
        rows = row_matrix(train, "user")
        scores = next(_blocks(config, params, rows, np.array([user]), model=model))[1][0]
    eligible = np.ones(train.num_items, bool)
    if exclude_rated:
        eligible[train.items[train.users == user]] = False
    if exclude_untrained:
        eligible &= np.bincount(train.items, minlength=train.num_items) > 0
    candidates = np.flatnonzero(eligible)
    best = candidates[np.argsort(-scores[candidates], kind="stable")[:k]]
    shown = _clip(config, rows, scores[best])
    return [(_plain(train.item_ids[i]), float(s)) for i, s in zip(best, shown)]


def training_ratings(config: Config, *, user_ids=None, item_ids=None,
                     cache_dir=None) -> Ratings:
    """The run's training ratings, re-derived from its config (same data, split and seed).

    Args:
      user_ids, item_ids: the ids the run saved; when given they must equal the re-derived
        ones, so that index i means the same user or item as in training.

    Raises:
      DataError: the ids differ (the ratings changed since the run).
    """
    train = loading.load_split(config.data, config.split_seed, cache_dir=cache_dir)[0]
    for kind, saved, ours in (("user", user_ids, train.user_ids),
                              ("item", item_ids, train.item_ids)):
        if saved is None:
            continue
        saved = np.asarray(saved)
        if len(saved) != len(ours) or not np.array_equal(saved.astype(str), ours.astype(str)):
            differ = np.flatnonzero(saved[:len(ours)].astype(str)
                                    != ours[:len(saved)].astype(str))
            where = (f"first difference at index {differ[0]}: {_plain(saved[differ[0]])!r} "
                     f"vs {_plain(ours[differ[0]])!r}" if len(differ) else "")
            raise DataError(f"the run saved {len(saved)} {kind} ids but its data now gives "
                            f"{len(ours)}{'; ' + where if where else ''}: the ratings changed "
                            "since training")
    return train


def item_titles(config: Config, cache_dir=None) -> dict | None:
    """{raw item id: (title, year)} for a named MovieLens dataset; None for a ratings file."""
    if config.data.ratings is not None or config.data.dataset not in movielens.DATASETS:
        return None
    from autorec_jax.data.titles import load_titles
    return load_titles(config.data.dataset, data_dir=config.data.data_dir, cache_dir=cache_dir)


_HEADER_USER = {"user", "userid", "user_id", "user id", "users"}
_HEADER_ITEM = {"item", "itemid", "item_id", "item id", "items", "movie", "movieid", "movie_id"}


def read_pairs(path: str | Path) -> tuple[list[str], list[str]]:
    """(users, items) as text from a `user,item` CSV file, with or without a header line.

    Raises:
      DataError: a missing or undecodable file, or a line without exactly two fields.
    """
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise DataError("no such file", path=str(path)) from None
    except UnicodeDecodeError as err:
        raise DataError(f"not UTF-8 text ({err.reason} at byte {err.start})",
                        path=str(path)) from None
    users, items = [], []
    for number, row in enumerate(csv.reader(io.StringIO(text, newline="")), start=1):
        if not row or not "".join(row).strip():
            continue
        if len(row) != 2:
            raise DataError(f"expected 2 comma-separated fields (user,item), got {len(row)}",
                            path=str(path), line=number)
        user, item = row[0].strip(), row[1].strip()
        if not users and user.lower() in _HEADER_USER and item.lower() in _HEADER_ITEM:
            continue
        users.append(user)
        items.append(item)
    return users, items


def write_predictions(path: str | Path, users: Sequence, items: Sequence,
                      predictions: np.ndarray) -> None:
    """Writes `user,item,prediction` lines (with that header) atomically."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["user", "item", "prediction"])
    for user, item, value in zip(users, items, np.asarray(predictions, np.float64)):
        writer.writerow([user, item, format(value, ".6g") if math.isfinite(value) else ""])
    atomic_write_bytes(Path(path), buffer.getvalue().encode())


def format_title(titles: dict | None, item) -> str:
    """"Toy Story (1995)" when the title is known, else "item 1"."""
    entry = (titles or {}).get(item)
    if entry is None:
        return f"item {item}"
    title, year = entry
    return f"{title} ({year})" if year is not None else title


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value
