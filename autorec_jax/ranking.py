"""Ranking metrics, pure and blocked: the pieces `evaluator.rank_blocks` runs on the device.

Two protocols, both per user, both from the network's inference pass over the TRAINING rows
(no held-out rating is ever an input):

  held-out ranking  each user's held-out ratings ranked by their predictions (GLocal-K's NDCG):
                    gain 2^r - 1 at rank i discounted by log2(i + 1); NDCG = DCG / ideal DCG
                    (the same ratings sorted by rating); users with fewer than 2 held-out
                    ratings are skipped. NDCG@K counts the first K ranks of both. The
                    predictions are the ones RMSE scores (clipped and cold-start filled).
  full ranking      the top K of every item the user has no training rating of (the network's
                    scores, clipped if so configured); relevant: the user's held-out ratings at
                    or above the relevance threshold. Per user: Recall@K = hits / relevant,
                    Precision@K = hits / K, NDCG@K = DCG / ideal DCG with binary gains
                    (ideal: min(K, relevant) hits first), HR@K = 1 if any hit, MRR@K =
                    1 / rank of the first hit in the top K (0 without one). Users without a
                    relevant held-out rating are skipped.

Ties are broken deterministically: of two equal scores the item with the lower internal index
(the lower raw id; under `data.parts` with item rows, the parts' row order) ranks first, on
every parallel mode.

All functions return sums over users and the count of users they cover; the host divides
(`evaluator.summarize`), so blocks and devices add up exactly.

The held-out ranking lives in `heldout_ranking`.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf
_INT32_MAX = 2 ** 31 - 1


def topk_sums(relevant_UxK: jax.Array, num_relevant_U: jax.Array, ks: Sequence[int]
              ) -> dict[str, jax.Array]:
    """Full-ranking sums over users from their top-K lists.

    Args:
      relevant_UxK: bool [U, Kmax], whether the user's item at rank k (best first) is
        relevant; Kmax >= max(ks).
      num_relevant_U: [U] relevant held-out items of each user (0: the user is skipped).
      ks: the cut-offs.

    Returns:
      {"recall@k", "precision@k", "ndcg@k", "hr@k", "mrr@k"} summed over the users with a
      relevant item, for every k in ks, and "rank_users": how many they are (float32).
    """
    counted_U = num_relevant_U > 0
    num_relevant_U = jnp.maximum(num_relevant_U.astype(jnp.float32), 1.0)
    out = {"rank_users": jnp.sum(counted_U, dtype=jnp.float32)}
    for k in ks:
        hit_Uxk = relevant_UxK[:, :k].astype(jnp.float32)
        discount_k = 1.0 / jnp.log2(jnp.arange(k, dtype=jnp.float32) + 2.0)
        hits_U = jnp.sum(hit_Uxk, axis=1)
        dcg_U = hit_Uxk @ discount_k
        ideal_U = jnp.cumsum(discount_k)[jnp.minimum(num_relevant_U, k).astype(jnp.int32) - 1]
        first_U = jnp.argmax(hit_Uxk, axis=1)
        per_user = {"recall": hits_U / num_relevant_U, "precision": hits_U / k,
                    "ndcg": dcg_U / ideal_U, "hr": (hits_U > 0).astype(jnp.float32),
                    "mrr": jnp.where(hits_U > 0, 1.0 / (first_U + 1.0), 0.0)}
        out.update({f"{name}@{k}": jnp.sum(jnp.where(counted_U, value_U, 0.0))
                    for name, value_U in per_user.items()})
    return out


def merge_topk(scores_UxC: jax.Array, items_UxC: jax.Array, *others_UxC: jax.Array, k: int
               ) -> tuple[jax.Array, ...]:
    """The k best of C candidates per user: (scores, items, *others), each [U, k], best first
    (`others`: fields carried along, such as relevance).

    Of equal scores the lower item index wins (`lax.top_k` alone prefers the lower position,
    which is the lower item only when the candidates are in item order: not across devices).
    """
    negated_UxC, *rest = jax.lax.sort((-scores_UxC, items_UxC, *others_UxC), dimension=1,
                                      num_keys=2)
    return (-negated_UxC[:, :k], *(x[:, :k] for x in rest))


def running_topk(carry, scores_UxB: jax.Array, items_B: jax.Array,
                 relevant_BxU: jax.Array | None = None, *, carry_is_empty: bool = False):
    """Folds one block of B candidate items (ascending item index, after every item already in
    `carry`) into the running top-k of each user; `carry` = (scores, items) [U, k], best
    first (ties: lower item first), or (scores, items, relevant) with `relevant_BxU`.

    `relevant_BxU` is the block's relevance in its rows' layout (items x users): only the k
    entries per user that reach the top are read (the evaluator carries no relevance: it
    ranks its relevant entries against the final lists, `entry_ranks`). The block's own top
    k first (`lax.top_k` keeps the earlier position on a tie: the lower item), then a merge
    of the two sorted lists by comparison counts, the carry first on a tie (its items are
    lower): elementwise work over [U, k, k], where a second `lax.top_k` over [U, 2k] costs
    ~1.6 us per user on XLA:CPU. `carry_is_empty` (the caller knows it is `empty_topk`'s)
    skips the merge.
    """
    k = carry[0].shape[1]
    num_users, block = scores_UxB.shape
    users_Ux1 = jnp.arange(num_users)[:, None]
    relevant = (lambda top_UxK: ()) if relevant_BxU is None else (
        lambda top_UxK: (relevant_BxU[top_UxK, users_Ux1],))
    if block <= k:   # a block narrower than k: its scores are not sorted; the best k of 2k
        top_UxB = jnp.broadcast_to(jnp.arange(block), scores_UxB.shape)
        found = (scores_UxB, items_B[top_UxB], *relevant(top_UxB))
        joined = [jnp.concatenate([mine, theirs], axis=1) for mine, theirs in zip(carry, found)]
        _, order_UxK = jax.lax.top_k(joined[0], k)
        return tuple(jnp.take_along_axis(x, order_UxK, axis=1) for x in joined)
    block_UxK, top_UxK = block_top_k(scores_UxB.T, k)
    # A -inf slot is no candidate's: not relevant, as the empty carry's that fill it in a merge.
    found = (block_UxK, items_B[top_UxK],
             *(r & (block_UxK > NEG_INF) for r in relevant(top_UxK)))
    return found if carry_is_empty else merge_sorted(carry, found)


GROUP = 8   # `topk_candidates`' group of rows; groups are used from 4 k groups on


def topk_candidates(scores_BxU: jax.Array, k: int, *, rows_first: bool = True
                    ) -> tuple[jax.Array, jax.Array]:
    """Each user's candidates for its top k of B rows: (scores [U, C], rows [U, C]), C >= k,
    holding the user's whole top k (by score, ties: the lower row) and such that any row
    outside them has at least k candidates ahead of it. `rows_first=False`: scores as [U, B].

    The B rows are cut into groups of `GROUP`; the candidates are the rows of each user's k
    best groups by their maxima (ties: the lower group), C = k * GROUP, in row order (past
    the last row: -inf). A row outside them has k groups ahead of its own, each with a row
    ahead of it (at least as good and, when equal, lower). So `lax.top_k` runs over only
    [U, B / GROUP] maxima (its cost per element dominates on XLA:CPU, and the [B, U] ->
    [U, B] transpose it would need costs as much as the top k itself). Fewer than 4 k
    groups: the exact top k (`lax.top_k`, C = k, best first).
    """
    scores_UxB = None if rows_first else scores_BxU
    block, num_users = scores_BxU.shape[::1 if rows_first else -1]
    full, tail = divmod(block, GROUP)
    if full + (tail > 0) < 4 * k:
        return jax.lax.top_k(scores_BxU.T if rows_first else scores_UxB, k)
    if rows_first:
        maxima_UxG = jnp.max(scores_BxU[:full * GROUP].reshape(full, GROUP, num_users),
                             axis=1).T
    else:
        maxima_UxG = jnp.max(scores_UxB[:, :full * GROUP].reshape(num_users, full, GROUP),
                             axis=2)
    if tail:   # a last, shorter group (no padded copy of the block)
        tail_Ux1 = (jnp.max(scores_BxU[full * GROUP:], axis=0)[:, None] if rows_first
                    else jnp.max(scores_UxB[:, full * GROUP:], axis=1, keepdims=True))
        maxima_UxG = jnp.concatenate([maxima_UxG, tail_Ux1], axis=1)
    _, best_UxK = jax.lax.top_k(maxima_UxG, k)
    best_UxK = jnp.sort(best_UxK, axis=1)           # the candidates in row order
    rows_UxKxC = best_UxK[:, :, None] * GROUP + jnp.arange(GROUP)[None, None, :]
    safe_UxKxC, users_Ux1x1 = jnp.minimum(rows_UxKxC, block - 1), jnp.arange(num_users)[
        :, None, None]
    picked_UxKxC = (scores_BxU[safe_UxKxC, users_Ux1x1] if rows_first
                    else scores_UxB[users_Ux1x1, safe_UxKxC])
    # Past the last row (the shorter group, last in order): -inf, after every real row.
    candidates_UxKxC = jnp.where(rows_UxKxC < block, picked_UxKxC, NEG_INF)
    return (candidates_UxKxC.reshape(num_users, k * GROUP),
            rows_UxKxC.reshape(num_users, k * GROUP))


def block_top_k(scores_BxU: jax.Array, k: int, *, rows_first: bool = True
                ) -> tuple[jax.Array, jax.Array]:
    """`lax.top_k(scores_BxU.T, k)`, equal to it (ties included), without transposing B x U;
    `rows_first=False`: `lax.top_k(scores_UxB, k)` of scores given as [U, B]. The top k of
    `topk_candidates` (in row order, so `lax.top_k`'s tie rule is the lower row's).

    Returns:
      (scores [U, k], rows [U, k]), best first; rows index the B rows.
    """
    scores_UxC, rows_UxC = topk_candidates(scores_BxU, k, rows_first=rows_first)
    if scores_UxC.shape[1] == k:
        return scores_UxC, rows_UxC
    scores_UxK, at_UxK = jax.lax.top_k(scores_UxC, k)
    return scores_UxK, jnp.take_along_axis(rows_UxC, at_UxK, axis=1)


def entry_ranks(scores_UxC: jax.Array, items_UxC: jax.Array, user_E: jax.Array,
                item_E: jax.Array, score_E: jax.Array) -> jax.Array:
    """Each entry's rank (0: best) in its user's ranking, exact where it is below k: the
    number of the user's candidates ahead of it (a greater score, or an equal one and a
    lower item). int32 [E].

    Args:
      scores_UxC, items_UxC: every user's candidates (`topk_candidates`, with rows as items,
        or a top-k list such as `running_topk`'s); items_UxC in the entries' index space.
      user_E, item_E: int [E] each entry's user and item; score_E: float [E] its score as
        ranked (-inf for no candidate: its rank is then meaningless).

    An entry in the top k has only better entries of the top k ahead of it, all candidates;
    an entry outside it has the k of the top k ahead (`topk_candidates`), so its rank is
    >= k. The comparisons fuse with their sum: no [E, C] array is stored.
    """
    other_ExC, item_ExC = scores_UxC[user_E], items_UxC[user_E]
    score_Ex1, mine_Ex1 = score_E[:, None], item_E[:, None]
    ahead_ExC = (other_ExC > score_Ex1) | ((other_ExC == score_Ex1) & (item_ExC < mine_Ex1))
    return jnp.sum(ahead_ExC, axis=1, dtype=jnp.int32)


def rank_sums(rank_E: jax.Array, user_E: jax.Array, relevant_E: jax.Array,
              ranked_E: jax.Array, num_users: int, ks: Sequence[int]) -> dict[str, jax.Array]:
    """`topk_sums` from E held-out entries (any order, one per (user, item)) and their ranks
    (`entry_ranks`), without top-K lists: the same sums.

    Args:
      rank_E: int [E] each entry's rank in its user's full ranking (exact below max(ks)).
      user_E: int [E] its user, in [0, U); relevant_E: bool [E] whether it is relevant
        (False for padding slots); every relevant entry counts in the user's relevant count.
      ranked_E: bool [E] whether it is among the ranked candidates (no training rating):
        only those can be hits.
      num_users: U; ks: the cut-offs.
    """
    user_E = jnp.where(relevant_E, user_E, 0)

    def per_user(value_E):
        return jax.ops.segment_sum(jnp.where(relevant_E, value_E, 0), user_E, num_users)

    num_relevant_U = per_user(jnp.ones_like(rank_E))
    counted_U = num_relevant_U > 0
    num_relevant_U = jnp.maximum(num_relevant_U, 1).astype(jnp.float32)
    rank_E = jnp.where(relevant_E & ranked_E, rank_E, _INT32_MAX - 1)
    first_U = jax.ops.segment_min(rank_E, user_E, num_users)
    out = {"rank_users": jnp.sum(counted_U, dtype=jnp.float32)}
    for k in ks:
        hit_E = rank_E < k
        hits_U = per_user(hit_E.astype(jnp.float32))
        dcg_U = per_user(jnp.where(hit_E, 1.0 / jnp.log2(rank_E.astype(jnp.float32) + 2.0),
                                   0.0))
        discount_k = 1.0 / jnp.log2(jnp.arange(k, dtype=jnp.float32) + 2.0)
        ideal_U = jnp.cumsum(discount_k)[jnp.minimum(num_relevant_U, k).astype(jnp.int32) - 1]
        per_user_metric = {"recall": hits_U / num_relevant_U, "precision": hits_U / k,
                           "ndcg": dcg_U / ideal_U, "hr": (hits_U > 0).astype(jnp.float32),
                           "mrr": jnp.where(first_U < k, 1.0 / (first_U + 1.0), 0.0)}
        out.update({f"{name}@{k}": jnp.sum(jnp.where(counted_U, value_U, 0.0))
                    for name, value_U in per_user_metric.items()})
    return out


def merge_sorted(first, second):
    """The k best of two best-first lists (scores, items, relevant) [U, k] each, best first;
    on equal scores `first`'s entry ranks before `second`'s (a stable merge).

    Each entry's place in the merged list is its own rank plus the number of the other
    list's entries ahead of it; the places are distinct (a permutation of 0..2k-1), so one
    scatter of the sources and one gather per array make the merged list, and nothing
    bigger than [U, 2k] is stored (the [U, k, k] comparisons are summed as they are made).
    """
    k = first[0].shape[1]
    a_UxK, b_UxK = first[0], second[0]
    ahead_of_a_UxK = jnp.sum(b_UxK[:, None, :] > a_UxK[:, :, None], axis=2)
    ahead_of_b_UxK = jnp.sum(a_UxK[:, None, :] >= b_UxK[:, :, None], axis=2)
    ranks_1xK = jnp.arange(k)[None, :]
    place_Ux2K = jnp.concatenate([ranks_1xK + ahead_of_a_UxK, ranks_1xK + ahead_of_b_UxK],
                                 axis=1)
    users_Ux1 = jnp.arange(place_Ux2K.shape[0])[:, None]
    source_Ux2K = jnp.zeros_like(place_Ux2K).at[users_Ux1, place_Ux2K].set(
        jnp.broadcast_to(jnp.arange(2 * k), place_Ux2K.shape), mode="drop")
    return tuple(jnp.take_along_axis(jnp.concatenate([x_a, x_b], axis=1), source_Ux2K[:, :k],
                                     axis=1) for x_a, x_b in zip(first, second))


def empty_topk(num_users: int, k: int, *, relevance: bool = True):
    """The running top-k before any block: no candidate (score -inf, item -1, not relevant;
    `relevance=False`: (scores, items) only)."""
    empty = (jnp.full((num_users, k), NEG_INF, jnp.float32),
             jnp.full((num_users, k), -1, jnp.int32))
    return (*empty, jnp.zeros((num_users, k), bool)) if relevance else empty
