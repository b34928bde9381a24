"""The separate pure evaluator: reconstruct training rows, score held-out entries.

The network reads rows of the TRAINING matrix in inference mode (no dropout); its output is
compared with the test ratings at the test entries only - the book's
`sqrt(sum((test - sign(test) * recon)^2) / sum(sign(test)))`. Test ratings are never an
input. Blocks return sums (squared error, absolute error, count); the host adds them in
float64, so the blocked result equals the whole-set result.

Cold start: the targets may carry per-entry fields (`coldstart.eval_fields`), "cold" (1 where
the entry's user or item has no training rating) and "fallback" (the `train.cold_start`
rule's prediction). At cold entries "fallback" replaces the network's prediction, and cold
entries are also summed apart (`cold_sse`, `cold_count`).
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from autorec_jax import heldout_ranking, ranking
from autorec_jax.collectives import gather_if, psum_if, pvary_if
from autorec_jax.rows import DeviceRows, densify, gather_entries

PyTree = Any


@flax.struct.dataclass
class EvalData:
    """Device-resident rows: `inputs` (the training ratings) and `targets` (held-out ones,
    with the cold-start fields "cold" and "fallback" when given); `ranking`, when given, the
    held-out set's `heldout_ranking.HeldoutOrder`, with each target entry's place in it as the
    target field `heldout_ranking.SLOT` (`placement.heldout_ranking`): the held-out NDCG then sorts
    only the predictions."""

    inputs: DeviceRows
    targets: DeviceRows
    ranking: heldout_ranking.HeldoutOrder | None = None


def eval_block(params: PyTree, data: EvalData, index_B: jax.Array, *,
               apply_fn: Callable, max_nnz_inputs: int, max_nnz_targets: int,
               clip_range: tuple[float, float] | None = None,
               axis_name: str | None = None) -> dict[str, jax.Array]:
    """Sums over the held-out entries of rows `index_B` (int32 [B], negative = padding).

    `clip_range` clips the network's predictions only: a cold-start rule's value is used as
    given (a mean lies in the training range anyway; a constant is the caller's choice).
    Without a "cold" target field no entry counts as cold.

    Returns:
      {"sse", "abs_err", "count"} over every held-out entry (cold ones with their rule's
      prediction) and {"cold_sse", "cold_count"} over the cold ones: float32 scalars,
      summed over devices.
    """
    inputs_BxN = densify(data.inputs, index_B, max_nnz_inputs)
    flat_E, values = gather_entries(data.targets, index_B, max_nnz_targets)
    values.pop(heldout_ranking.SLOT, None)
    scores_BxN = _scores(params, inputs_BxN, apply_fn, clip_range)
    size = index_B.shape[0] * data.targets.num_cols
    pred_E = scores_BxN.reshape(-1)[jnp.minimum(flat_E, size - 1)]
    return psum_if(entry_sums(pred_E, values, flat_E < size)[0], axis_name)


def _scores(params, inputs_BxN, apply_fn, clip_range):
    """The network's reconstruction of the rows (inference mode), clipped if asked."""
    scores_BxN = apply_fn({"params": params}, inputs_BxN, train=False)
    return scores_BxN if clip_range is None else jnp.clip(scores_BxN, *clip_range)


def entry_sums(pred_E: jax.Array, values: dict[str, jax.Array], valid_E: jax.Array
               ) -> tuple[dict[str, jax.Array], jax.Array]:
    """`eval_block`'s sums on this device from E held-out entries (`gather_entries`' values,
    `valid_E` False for unused slots) and the network's scores at them: (the sums, the
    predictions [E]: the cold-start rule's value at cold entries). Summing the E entries,
    not dense [B, N] copies of the held-out fields, keeps one block's scores the largest
    array an evaluation holds."""
    mask_E = valid_E & (values["ratings"] != 0)
    cold_E = mask_E & (values["cold"] != 0) if "cold" in values else jnp.zeros_like(mask_E)
    if "fallback" in values:
        pred_E = jnp.where(cold_E, values["fallback"], pred_E)
    err_E = jnp.where(mask_E, pred_E - values["ratings"], 0.0)
    sq_err_E = err_E * err_E
    sums = {"sse": jnp.sum(sq_err_E), "abs_err": jnp.sum(jnp.abs(err_E)),
            "count": jnp.sum(mask_E, dtype=jnp.float32),
            "cold_sse": jnp.sum(jnp.where(cold_E, sq_err_E, 0.0)),
            "cold_count": jnp.sum(cold_E, dtype=jnp.float32)}
    return sums, pred_E


def eval_blocks(params: PyTree, data: EvalData, index_KxB: jax.Array, *,
                axis_name: str | None = None, **block_kwargs) -> dict[str, jax.Array]:
    """`eval_block` over K blocks in one compiled call; returns per-block sums, each [K]."""
    return jax.lax.map(
        lambda index_B: eval_block(params, data, index_B, axis_name=axis_name, **block_kwargs),
        index_KxB)


def rank_blocks(params: PyTree, data: EvalData, index_KxB: jax.Array, rows_KxB: jax.Array, *,
                apply_fn: Callable, max_nnz_inputs: int, max_nnz_targets: int,
                users_are_rows: bool, num_users: int, ks: tuple[int, ...], threshold: float,
                num_items: int | None = None, clip_range: tuple[float, float] | None = None,
                axis_name: str | None = None) -> dict[str, jax.Array]:
    """`eval_blocks`' sums and the ranking metrics' sums (`ranking`), from one inference pass.

    Args:
      index_KxB: int32 [K, B] this device's evaluation blocks (its local rows, -1 padding).
      rows_KxB: int32 [K, B] the same rows' global indices (ties between equal scores go to
        the lower one; with item rows that is the lower item).
      users_are_rows: the rows are users (U-AutoRec): a user's scores are a row of the
        reconstruction; else (I-AutoRec) a column, ranked by a running top-K over the blocks.
      num_users: U, the users' count (the row width N for I-AutoRec).
      num_items: the items' count, when known: the held-out ranks then come from cheaper
        sorts (`heldout_ranking.heldout_ndcg_sums`); the same metrics either way.
      ks: the cut-offs; threshold: the smallest relevant held-out rating (full ranking).

    With `data.ranking` (a `heldout_ranking.HeldoutOrder` made with these `ks`, and each target
    entry's place in the field `heldout_ranking.SLOT`) the held-out NDCG sorts only the predictions
    (`heldout_ranking.heldout_ndcg_prepared`); without it,
    `heldout_ranking.heldout_ndcg_sums`. Either way
    the blocks must cover every row of the set once (as `placed.eval_index` does).

    Returns:
      the RMSE sums per block ([K] each, summed over devices) and the ranking sums
      (`ranking.rank_sums`, `heldout_ranking.heldout_ndcg_sums`: scalars), identical on
      every device.
    """
    kmax = max(ks)
    # One block on one device: rank the entries against the candidates of
    # `ranking.topk_candidates` (no second top k); else against exact running top-k lists.
    single_block = index_KxB.shape[0] == 1 and axis_name is None

    def block(carry, xs):
        index_B, rows_B = xs
        batch, width = index_B.shape[0], data.targets.num_cols
        inputs_BxN = densify(data.inputs, index_B, max_nnz_inputs)
        flat_E, values = gather_entries(data.targets, index_B, max_nnz_targets)
        place_E = values.pop(heldout_ranking.SLOT, None)   # each entry's place in `data.ranking`
        scores_BxN = _scores(params, inputs_BxN, apply_fn, clip_range)
        valid_E = flat_E < batch * width
        slot_E = jnp.minimum(flat_E, batch * width - 1)
        # The RMSE sums from the E entries: no dense [B, N] copy of the held-out fields.
        sums, pred_E = entry_sums(scores_BxN.reshape(-1)[slot_E], values, valid_E)
        row_E, col_E = rows_B[slot_E // width], slot_E % width
        # Full ranking: candidates are the items without a training rating (real rows only).
        candidate_BxN = (inputs_BxN == 0) & (index_B >= 0)[:, None]
        # -0.0 -> 0.0: `lax.top_k` puts 0.0 before -0.0, the comparisons of `entry_ranks`
        # call them equal; one order for both keeps an entry from being counted twice.
        ranked_BxN = jnp.where(candidate_BxN, jnp.where(scores_BxN == 0, 0.0, scores_BxN),
                               ranking.NEG_INF)
        ranked_E = ranked_BxN.reshape(-1)[slot_E]      # each entry's score as ranked
        relevant_E = valid_E & (values["ratings"] != 0) & (values["ratings"] >= threshold)
        entries = ((row_E, col_E) if users_are_rows else (col_E, row_E)) + (
            values["ratings"], pred_E, valid_E, ranked_E) + (
            () if place_E is None else (place_E,))
        if users_are_rows:   # each of the block's users: its row's candidates (item columns)
            if width < kmax:   # fewer items than K: the missing ranks are empty
                ranked_BxN = jnp.pad(ranked_BxN, ((0, 0), (0, kmax - width)),
                                     constant_values=ranking.NEG_INF)
            scores_BxC, items_BxC = ranking.topk_candidates(ranked_BxN, kmax, rows_first=False)
            local_E = slot_E // width
            rank_E = ranking.entry_ranks(scores_BxC, items_BxC, local_E, col_E, ranked_E)
            return carry, (sums, entries, ranking.rank_sums(
                rank_E, local_E, relevant_E, ranked_E > ranking.NEG_INF, batch, ks))
        if single_block:    # the candidates, items as global rows; ranked after the scan
            scores_UxC, rows_UxC = ranking.topk_candidates(ranked_BxN, kmax)
            return (scores_UxC, rows_B[jnp.minimum(rows_UxC, batch - 1)]), (sums, entries, {})
        carry = ranking.running_topk(carry, ranked_BxN.T, rows_B,
                                     carry_is_empty=index_KxB.shape[0] == 1)
        return carry, (sums, entries, {})

    if single_block and not users_are_rows:   # the carry's shape: the candidates'
        carry = jax.eval_shape(lambda: block(None, (index_KxB[0], rows_KxB[0]))[0])
        carry = tuple(jnp.zeros(x.shape, x.dtype) for x in carry)
    else:
        carry = ranking.empty_topk(num_users, kmax, relevance=False)
    if not users_are_rows and axis_name is not None:
        carry = pvary_if(carry, axis_name)
    carry, (sums_K, entries_KxE, block_ranks_K) = jax.lax.scan(block, carry,
                                                               (index_KxB, rows_KxB))
    # Held-out ranking. User rows: a user's entries are all in one of this device's rows, so
    # each device ranks its own and the sums add up. Item rows: a user's entries may sit on
    # several devices; every device's entries, then one ranking.
    if not users_are_rows:
        entries_KxE = [gather_if(x, axis_name) for x in entries_KxE]
    user_E, item_E, rating_E, pred_E, valid_E, ranked_E, *place_E = (
        x.reshape(-1) for x in entries_KxE)
    if place_E and data.ranking is not None:   # data-only pieces from the host: sort preds
        ranks = heldout_ranking.heldout_ndcg_prepared(data.ranking, place_E[0], pred_E, valid_E,
                                              num_users, ks)
        if not users_are_rows and axis_name is not None:
            # Every device's sums are the same (all entries, one copy of the order each, which
            # a sharded layout types as varying): device 0's, typed replicated.
            ranks = {key: gather_if(value, axis_name)[0] for key, value in ranks.items()}
    else:
        ranks = heldout_ranking.heldout_ndcg_sums(user_E, item_E, rating_E, pred_E, valid_E,
                                          num_users, ks, num_items)
    if users_are_rows:
        ranks = psum_if({**ranks, **{k: jnp.sum(v) for k, v in block_ranks_K.items()}},
                        axis_name)
    else:
        scores_UxC, items_UxC = carry
        if axis_name is not None:   # every device's top K: the best K of them, ties by item
            merged = [jnp.moveaxis(gather_if(x, axis_name), 0, 1).reshape(num_users, -1)
                      for x in carry]
            scores_UxC, items_UxC = ranking.merge_topk(*merged, k=kmax)
        # Each relevant held-out entry (all devices' already) against its user's list.
        relevant_E = valid_E & (rating_E != 0) & (rating_E >= threshold)
        rank_E = ranking.entry_ranks(scores_UxC, items_UxC, user_E, item_E, ranked_E)
        ranks.update(ranking.rank_sums(rank_E, user_E, relevant_E, ranked_E > ranking.NEG_INF,
                                       num_users, ks))
    return {**psum_if(sums_K, axis_name), **ranks}


def summarize(block_sums: dict[str, Any]) -> dict[str, float]:
    """Per-block sums -> {"rmse", "mae", "count", "cold_count", "cold_rmse", "warm_rmse"},
    accumulated in float64 on the host; an RMSE or MAE over no entries is NaN. With
    `rank_blocks`' sums also the ranking metrics, each a mean over the users it covers
    ("heldout_ndcg..." over "heldout_users", the full-ranking ones over "rank_users"; NaN
    over none)."""
    total = {key: float(np.sum(np.asarray(value, np.float64)))
             for key, value in block_sums.items()}
    sse, count = total["sse"], total["count"]
    cold_sse, cold_count = total.get("cold_sse", 0.0), total.get("cold_count", 0.0)
    out = {"rmse": _rmse(sse, count), "mae": total["abs_err"] / count if count else _NAN,
           "count": count, "cold_count": cold_count, "cold_rmse": _rmse(cold_sse, cold_count),
           "warm_rmse": _rmse(max(sse - cold_sse, 0.0), count - cold_count)}
    for key in RANKING_COUNTS:
        if key in total:
            out[key] = total[key]
    for key, value in total.items():
        users = total.get("heldout_users" if key.startswith("heldout_ndcg") else "rank_users")
        if key.startswith("heldout_ndcg") or "@" in key:
            out[key] = value / users if users else _NAN
    return out


RANKING_COUNTS = ("heldout_users", "rank_users")   # users each family of ranking metrics covers
_NAN = float("nan")


def _rmse(sse: float, count: float) -> float:
    return float(np.sqrt(sse / count)) if count else _NAN
