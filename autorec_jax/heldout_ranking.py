"""The held-out ranking (GLocal-K's NDCG over each user's held-out ratings, ranked by
prediction), pure and blocked: the pieces `evaluator.rank_blocks` runs on the device;
`ranking` has the definitions and the full ranking.

The held-out ranking's data-only pieces (each user's entries, ideal DCG, whether the user is
counted) are computed once on the host when a held-out set is placed (`prepare_heldout`,
a `HeldoutOrder` in `EvalData.ranking` and each entry's place in it, the target field
`SLOT`); an evaluation then sorts only the predictions (`heldout_ndcg_prepared`).
`heldout_ndcg_sums` computes everything from the entries on the device: the path for
held-out data placed without a `HeldoutOrder`, and the tests' second code path.
"""

from __future__ import annotations

from typing import Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

_INT32_MAX = 2 ** 31 - 1


def heldout_ndcg_sums(user_E: jax.Array, item_E: jax.Array, rating_E: jax.Array,
                      pred_E: jax.Array, valid_E: jax.Array, num_users: int,
                      ks: Sequence[int], num_items: int | None = None
                      ) -> dict[str, jax.Array]:
    """GLocal-K's NDCG over each user's held-out ratings, from E held-out entries in any order.

    Args:
      user_E, item_E: int [E] each entry's user and item (internal indices).
      rating_E, pred_E: float [E] its held-out rating and its prediction.
      valid_E: bool [E], False for padding slots.
      num_users: U, users are in [0, U).
      ks: cut-offs for NDCG@k.
      num_items: I, items are in [0, I): with it (and (U + 1) E, E I < 2^31) the ranks come
        from sorts of single int32 keys (`_ranks_in_users`), ~10x cheaper on XLA:CPU than the
        multi-key sorts used without it; the same ranks either way.

    Returns:
      {"heldout_ndcg", "heldout_ndcg@k" for k in ks}: sums over the users with at least 2
      held-out ratings (and a positive gain), and "heldout_users": how many they are.
    """
    size = user_E.shape[0]
    user_E = jnp.where(valid_E, user_E, num_users)   # padding: a user past the last
    gain_E = jnp.where(valid_E, 2.0 ** rating_E - 1.0, 0.0)
    packed = num_items is not None and max((num_users + 1) * size, size * num_items) < 2 ** 31
    if packed:
        # Each entry's rank in its user by prediction (ties: lower item), in entry order; the
        # gains best first per user, in user order.
        pred_rank_E = _ranks_in_users(user_E, _sortable(-pred_E), item_E, num_users,
                                      num_items)
        by_pred = (user_E, pred_rank_E, gain_E)
        neg_gain_E = _sortable(-gain_E)
        sorted_E = jnp.sort(neg_gain_E)
        key_E = jnp.sort(user_E * size + _lower_bound(sorted_E, neg_gain_E))
        ideal_user_E = key_E // size
        by_gain = (ideal_user_E, _ranks_from_starts(ideal_user_E),
                   -_unsortable(sorted_E[key_E % size]))
    else:
        # Sorted by user, then best first: by prediction (ties: lower item), and by gain.
        sorted_by_pred = jax.lax.sort((user_E, -pred_E, item_E, gain_E), num_keys=3)
        users_E = sorted_by_pred[0]                  # the same order of users in both
        rank_E = _ranks_from_starts(users_E)
        by_pred = (users_E, rank_E, sorted_by_pred[3])
        by_gain = (users_E, rank_E, -jax.lax.sort((user_E, -gain_E), num_keys=2)[1])

    def per_user(term_E, users_E, users_sorted=False):
        return jax.ops.segment_sum(term_E, users_E, num_users + 1,
                                   indices_are_sorted=users_sorted)[:num_users]

    count_U = per_user(jnp.where(user_E < num_users, 1.0, 0.0), user_E)
    positive_U = per_user((gain_E > 0).astype(jnp.float32), user_E)
    # A user whose gains are all <= 0 (ratings <= 0) has no ideal ranking to compare with.
    counted_U = (count_U >= 2) & (positive_U > 0)

    def dcg(order, cutoff):
        users_E, rank_E, g_E = order
        return per_user(jnp.where(rank_E < cutoff, g_E * (1.0 / jnp.log2(rank_E + 2.0)), 0.0),
                        users_E, users_sorted=order is by_gain or not packed)

    def ndcg_sum(cutoff):
        dcg_U, ideal_U = dcg(by_pred, cutoff), dcg(by_gain, cutoff)
        ratio_U = dcg_U / jnp.where(ideal_U > 0, ideal_U, 1.0)
        return jnp.sum(jnp.where(counted_U, ratio_U, 0.0))

    out = {"heldout_users": jnp.sum(counted_U, dtype=jnp.float32),
           "heldout_ndcg": ndcg_sum(size + 1)}
    out.update({f"heldout_ndcg@{k}": ndcg_sum(k) for k in ks})
    return out


SLOT = "heldout_slot"   # the held-out targets' field: each entry's place in its HeldoutOrder


@flax.struct.dataclass
class HeldoutOrder:
    """A held-out set's entries ordered by (user, item), P places (the last ones padding):
    what the held-out NDCG needs besides the predictions, from `prepare_heldout`.

    Attributes:
      user_P: int32, each place's user (sorted; padding: U, a user past the last).
      rank_P: int32, the place's rank within its user's run (0 at the run's start).
      weight_PxC: float32, the entry's gain 2^r - 1 over its user's ideal DCG at cut-off c
        (c = 0: every rank, then each k of `ks`), 0 for a user not counted (fewer than 2
        held-out ratings or no positive gain) and for padding.
      first_P: bool, the first place of each counted user (their count).
    """

    user_P: jax.Array
    rank_P: jax.Array
    weight_PxC: jax.Array
    first_P: jax.Array


def prepare_heldout(user_E, item_E, rating_E, num_users: int, ks: Sequence[int],
                    size: int | None = None) -> tuple[np.ndarray, HeldoutOrder] | None:
    """Host NumPy: the `HeldoutOrder` of E held-out entries (user, item, rating; internal
    indices, ratings as on the device) with `size` >= E places, and each entry's place
    (float32 [E], the target field `SLOT`); None past 2^24 places (not exact in float32).

    The ideal DCG is the user's gains sorted best first, cut at each k (`heldout_ndcg_sums`'
    definition); a user's NDCG at cut-off c is then sum(weight * discount(rank)) over the
    places its entries take when ranked by prediction (`heldout_ndcg_prepared`).
    """
    user_E, item_E = np.asarray(user_E, np.int64), np.asarray(item_E, np.int64)
    count = len(user_E)
    size = max(size or 0, count, 1)
    if size >= 2 ** 24:
        return None
    order = np.lexsort((item_E, user_E))             # by user, then item
    slot_E = np.empty(count, np.float32)
    slot_E[order] = np.arange(count)
    user_P = user_E[order]
    gain_P = 2.0 ** np.asarray(rating_E, np.float64)[order] - 1.0
    count_U = np.bincount(user_P, minlength=num_users)
    rank_P = np.arange(count) - (np.cumsum(count_U) - count_U)[user_P]
    counted_U = (count_U >= 2) & (np.bincount(user_P, gain_P > 0, num_users) > 0)
    # The ideal ranking: each user's gains best first, in the user's own places.
    ideal_P = gain_P[np.lexsort((-gain_P, user_P))] / np.log2(rank_P + 2.0)
    weight_PxC = np.zeros((size, 1 + len(ks)), np.float32)
    for c, cut in enumerate([count + 1, *ks]):
        ideal_U = np.bincount(user_P, np.where(rank_P < cut, ideal_P, 0.0), num_users)
        ideal_U = np.where(ideal_U > 0, ideal_U, 1.0)
        weight_PxC[:count, c] = np.where(counted_U[user_P], gain_P / ideal_U[user_P], 0.0)
    padded = lambda x, fill, dtype: np.concatenate(  # noqa: E731
        [x, np.full(size - count, fill)]).astype(dtype)
    return slot_E, HeldoutOrder(
        user_P=padded(user_P, num_users, np.int32), rank_P=padded(rank_P, 0, np.int32),
        weight_PxC=weight_PxC, first_P=padded((rank_P == 0) & counted_U[user_P], False, bool))


def heldout_ndcg_prepared(order: HeldoutOrder, slot_E: jax.Array, pred_E: jax.Array,
                          valid_E: jax.Array, num_users: int, ks: Sequence[int]
                          ) -> dict[str, jax.Array]:
    """`heldout_ndcg_sums` from a `HeldoutOrder`: the same sums over the users whose entries
    are given (all of a user's or none: a user's row, or every device's entries).

    Args:
      slot_E: [E] each entry's place (the target field `SLOT`); pred_E: its prediction;
        valid_E: False for padding slots. Any order.

    The predictions go to their places; a sort orders the places by prediction (ties: the
    lower place, which is the lower item within a user), a second one by user keeping that
    order, so place q of the user order then holds the entry its user ranks `rank_P[q]`.
    Sorts of single int32 keys where P^2 and (U + 1) P fit int32 (XLA:CPU sorts those
    several times faster than with an operand), else stable sorts with an operand.
    """
    size = order.user_P.shape[0]
    if order.weight_PxC.shape[1] != 1 + len(ks):
        raise ValueError(f"the HeldoutOrder has {order.weight_PxC.shape[1] - 1} cut-offs; "
                         f"expected {len(ks)} ({tuple(ks)})")
    slot_E = jnp.where(valid_E, slot_E.astype(jnp.int32), size)   # padding: dropped
    key_P = jnp.full(size, _INT32_MAX, jnp.int32).at[slot_E].set(_sortable(-pred_E),
                                                                 mode="drop")
    present_P = jnp.zeros(size, bool).at[slot_E].set(True, mode="drop")
    place_P = jnp.arange(size, dtype=jnp.int32)
    if size * size < 2 ** 31:    # the places by (key, place): key's dense rank, then place
        dense_P = _lower_bound(jnp.sort(key_P), key_P)
        by_pred_P = jnp.sort(dense_P * size + place_P) % size
    else:
        by_pred_P = jax.lax.sort((key_P, place_P), num_keys=1, is_stable=True)[1]
    user_P = order.user_P[by_pred_P]
    if (num_users + 1) * size < 2 ** 31:
        at_P = by_pred_P[jnp.sort(user_P * size + place_P) % size]
    else:
        at_P = jax.lax.sort((user_P, by_pred_P), num_keys=1, is_stable=True)[1]
    weight_PxC = jnp.where(present_P[at_P][:, None], order.weight_PxC[at_P], 0.0)
    discount_P = 1.0 / jnp.log2(order.rank_P + 2.0)
    out = {"heldout_users": jnp.sum(present_P & order.first_P, dtype=jnp.float32),
           "heldout_ndcg": jnp.sum(weight_PxC[:, 0] * discount_P)}
    out.update({f"heldout_ndcg@{k}": jnp.sum(jnp.where(order.rank_P < k, weight_PxC[:, c]
                                                       * discount_P, 0.0))
                for c, k in enumerate(ks, start=1)})
    return out


def _ranks_from_starts(users_E: jax.Array) -> jax.Array:
    """Each position's rank in its run of equal users (users sorted): 0 at a run's start."""
    position_E = jnp.arange(users_E.shape[0])
    starts_E = jnp.concatenate([jnp.ones(1, bool), users_E[1:] != users_E[:-1]])
    return position_E - jax.lax.cummax(jnp.where(starts_E, position_E, 0))


def _ranks_in_users(user_E: jax.Array, key_E: jax.Array, item_E: jax.Array, num_users: int,
                    num_items: int) -> jax.Array:
    """Each entry's rank among its user's entries by (key, item) ascending: int [E].

    Three sorts of one int32 key each and binary searches: the key's dense rank d; the rank r
    of (d, item), unique within a user; then the entry's place among (user, r). Needs
    (U + 1) E and E I below 2^31 (a user has one entry per item; padding shares user U).
    """
    size = user_E.shape[0]
    dense_E = _lower_bound(jnp.sort(key_E), key_E)
    tied_E = dense_E * num_items + item_E
    unique_E = _lower_bound(jnp.sort(tied_E), tied_E)
    packed_E = user_E * size + unique_E
    place_E = _lower_bound(jnp.sort(packed_E), packed_E)
    # Minus the entries of lower users: where the user's run starts.
    count_V = jax.ops.segment_sum(jnp.ones_like(user_E), user_E, num_users + 1)
    return place_E - (jnp.cumsum(count_V) - count_V)[user_E]


def _lower_bound(sorted_E: jax.Array, query_Q: jax.Array) -> jax.Array:
    """`jnp.searchsorted(sorted_E, query_Q)` (side left), a binary search whose loop state
    starts from `query_Q`: jnp's starts from constants, which shard_map's varying check
    refuses when the arrays vary over devices."""
    size = sorted_E.shape[0]

    def step(_, bounds):
        low_Q, high_Q = bounds
        mid_Q = (low_Q + high_Q) // 2
        ahead_Q = (mid_Q < high_Q) & (sorted_E[jnp.minimum(mid_Q, size - 1)] < query_Q)
        return jnp.where(ahead_Q, mid_Q + 1, low_Q), jnp.where(ahead_Q, high_Q, mid_Q)

    zero_Q = query_Q * 0
    return jax.lax.fori_loop(0, max(size, 1).bit_length(), step, (zero_Q, zero_Q + size))[0]


def _sortable(x: jax.Array) -> jax.Array:
    """float32 -> int32 in the same order (-0.0 as 0.0, as `lax.sort` has them equal)."""
    bits = jax.lax.bitcast_convert_type(jnp.where(x == 0, 0.0, x), jnp.int32)
    return jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)


def _unsortable(key: jax.Array) -> jax.Array:
    """The inverse of `_sortable`."""
    return jax.lax.bitcast_convert_type(jnp.where(key < 0, key ^ jnp.int32(0x7FFFFFFF), key),
                                        jnp.float32)
