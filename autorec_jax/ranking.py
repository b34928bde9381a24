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
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

NEG_INF = -jnp.inf


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


def merge_topk(scores_UxC: jax.Array, items_UxC: jax.Array, relevant_UxC: jax.Array, k: int
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The k best of C candidates per user: (scores, items, relevant), each [U, k], best first.

    Of equal scores the lower item index wins (`lax.top_k` alone prefers the lower position,
    which is the lower item only when the candidates are in item order: not across devices).
    """
    negated_UxC, items_UxC, relevant_UxC = jax.lax.sort(
        (-scores_UxC, items_UxC, relevant_UxC), dimension=1, num_keys=2)
    return -negated_UxC[:, :k], items_UxC[:, :k], relevant_UxC[:, :k]


def running_topk(carry, scores_UxB: jax.Array, items_B: jax.Array, relevant_BxU: jax.Array):
    """Folds one block of B candidate items (ascending item index, after every item already in
    `carry`) into the running top-k of each user; `carry` = (scores, items, relevant) [U, k].

    `relevant_BxU` is the block's relevance in its rows' layout (items x users): only the k
    entries per user that reach the top are read. The block's own top k first, then the
    best k of the 2k: `lax.top_k` keeps the earlier position on a tie, which is the lower
    item index in both steps, so no sort is needed.
    """
    k = carry[0].shape[1]
    num_users, block = scores_UxB.shape
    if block > k:
        block_UxK, top_UxK = jax.lax.top_k(scores_UxB, k)
    else:
        block_UxK, top_UxK = scores_UxB, jnp.broadcast_to(jnp.arange(block), scores_UxB.shape)
    found = (block_UxK, items_B[top_UxK],
             relevant_BxU[top_UxK, jnp.arange(num_users)[:, None]])
    scores_Ux2K, items_Ux2K, relevant_Ux2K = (jnp.concatenate([mine, theirs], axis=1)
                                              for mine, theirs in zip(carry, found))
    _, order_UxK = jax.lax.top_k(scores_Ux2K, k)
    return tuple(jnp.take_along_axis(x, order_UxK, axis=1)
                 for x in (scores_Ux2K, items_Ux2K, relevant_Ux2K))


def empty_topk(num_users: int, k: int):
    """The running top-k before any block: no candidate (score -inf, item -1)."""
    return (jnp.full((num_users, k), NEG_INF, jnp.float32),
            jnp.full((num_users, k), -1, jnp.int32), jnp.zeros((num_users, k), bool))


def heldout_ndcg_sums(user_E: jax.Array, item_E: jax.Array, rating_E: jax.Array,
                      pred_E: jax.Array, valid_E: jax.Array, num_users: int,
                      ks: Sequence[int]) -> dict[str, jax.Array]:
    """GLocal-K's NDCG over each user's held-out ratings, from E held-out entries in any order.

    Args:
      user_E, item_E: int [E] each entry's user and item (internal indices).
      rating_E, pred_E: float [E] its held-out rating and its prediction.
      valid_E: bool [E], False for padding slots.
      num_users: U, users are in [0, U).
      ks: cut-offs for NDCG@k.

    Returns:
      {"heldout_ndcg", "heldout_ndcg@k" for k in ks}: sums over the users with at least 2
      held-out ratings (and a positive gain), and "heldout_users": how many they are.
    """
    user_E = jnp.where(valid_E, user_E, num_users)   # padding: a user past the last
    gain_E = jnp.where(valid_E, 2.0 ** rating_E - 1.0, 0.0)
    # Sorted by user, then best first: by prediction (ties: lower item), and by gain (ideal).
    by_pred = jax.lax.sort((user_E, -pred_E, item_E, gain_E), num_keys=3)
    by_gain = jax.lax.sort((user_E, -gain_E), num_keys=2)
    users_E = by_pred[0]                             # the same order of users in both
    position_E = jnp.arange(users_E.shape[0])
    starts_E = jnp.concatenate([jnp.ones(1, bool), users_E[1:] != users_E[:-1]])
    rank_E = position_E - jax.lax.cummax(jnp.where(starts_E, position_E, 0))
    discount_E = 1.0 / jnp.log2(rank_E + 2.0)
    terms = {"pred": by_pred[3] * discount_E, "ideal": -by_gain[1] * discount_E}

    def per_user(term_E):
        return jax.ops.segment_sum(term_E, users_E, num_users + 1,
                                   indices_are_sorted=True)[:num_users]

    count_U = per_user(jnp.where(users_E < num_users, 1.0, 0.0))
    positive_U = per_user((by_pred[3] > 0).astype(jnp.float32))
    # A user whose gains are all <= 0 (ratings <= 0) has no ideal ranking to compare with.
    counted_U = (count_U >= 2) & (positive_U > 0)

    def ndcg_sum(cutoff):
        dcg_U, ideal_U = (per_user(jnp.where(rank_E < cutoff, terms[n], 0.0))
                          for n in ("pred", "ideal"))
        ratio_U = dcg_U / jnp.where(ideal_U > 0, ideal_U, 1.0)
        return jnp.sum(jnp.where(counted_U, ratio_U, 0.0))

    out = {"heldout_users": jnp.sum(counted_U, dtype=jnp.float32),
           "heldout_ndcg": ndcg_sum(user_E.shape[0] + 1)}
    out.update({f"heldout_ndcg@{k}": ndcg_sum(k) for k in ks})
    return out
