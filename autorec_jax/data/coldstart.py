"""The cold-start rule (host NumPy): which held-out ratings are cold, and what they predict.

A held-out rating is cold when its user or its item has no training rating: its row (the
item for I-AutoRec, the user for U-AutoRec) reaches the network as an all-zero input, or its
column is an output unit no training rating ever touched. `train.cold_start` names what such
an entry predicts (see `fallback_values`); the evaluator carries both per-entry arrays beside
the held-out targets (`eval_fields`) and substitutes on the device.
"""

from __future__ import annotations

import re

import numpy as np

from autorec_jax.data.ratings import Ratings, csr_order

# The same choices `config` validates (data/ sits below the config; a test keeps them equal).
ORIENTATIONS = ("item", "user")
COLD_START_RULES = ("network", "global-mean", "user-mean", "item-mean")  # or a number
COLD_START_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)")  # "3", "3.5", "-1"
AUTO = "auto"  # `choose_rule` picks one of COLD_START_RULES on validation


def cold_mask(train: Ratings, heldout: Ratings, orientation: str = "item") -> np.ndarray:
    """Which held-out ratings are cold: bool [n], in `heldout`'s order.

    An entry is cold when its row or its column has no training rating. Rows and columns
    are users and items in either orientation, so the mask is the same for both;
    `orientation` is checked and names which of the two is the row.

    Args:
      train: the training ratings.
      heldout: n held-out ratings in the same id space as `train`.
      orientation: "item" (rows are items) or "user".

    Raises:
      ValueError: an unknown orientation, or different id spaces.
    """
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}")
    _check_same_ids(train, heldout)
    user_seen = np.bincount(train.users, minlength=train.num_users) > 0
    item_seen = np.bincount(train.items, minlength=train.num_items) > 0
    return ~(user_seen[heldout.users] & item_seen[heldout.items])


def fallback_values(rule: str, train: Ratings, heldout: Ratings) -> np.ndarray | None:
    """What the rule predicts at each held-out rating: float32 [n], or None for "network".

    Values are given for every entry (warm ones included); a caller uses them where
    `cold_mask` is True.

    Args:
      rule: "network" (the network's own output: None here), "global-mean" (mean of the
        training ratings), "user-mean" / "item-mean" (the entry's user's / item's mean
        training rating; the global mean for a user / item with none), or a decimal number
        as text ("3", the AutoRec paper's choice) predicted everywhere.
      train: the training ratings (not empty unless `rule` is a number or "network").
      heldout: n held-out ratings in the same id space.

    Raises:
      ValueError: an unknown rule, different id spaces, or no training ratings to average.
    """
    _check_same_ids(train, heldout)
    if rule == "network":
        return None
    if rule not in COLD_START_RULES:
        if not (isinstance(rule, str) and COLD_START_NUMBER.fullmatch(rule)):
            raise ValueError(f"cold-start rule must be one of {', '.join(COLD_START_RULES)} "
                             f"or a decimal number as text, got {rule!r}")
        return np.full(len(heldout), float(rule), np.float32)
    if not len(train):
        raise ValueError(f"cold-start rule {rule!r} needs training ratings; there are none")
    ratings = np.asarray(train.ratings, np.float64)
    global_mean = ratings.mean()
    if rule == "global-mean":
        return np.full(len(heldout), global_mean, np.float32)
    if rule == "user-mean":
        index, size, at = train.users, train.num_users, heldout.users
    else:
        index, size, at = train.items, train.num_items, heldout.items
    counts = np.bincount(index, minlength=size)
    sums = np.bincount(index, weights=ratings, minlength=size)
    means = np.where(counts > 0, sums / np.maximum(counts, 1), global_mean)
    return means[at].astype(np.float32)


def loaded_rule(rule: str) -> str:
    """The rule a run's held-out fields are built with. "auto" trains and selects under
    "global-mean": cold entries then add a constant to every epoch's validation error, so
    the selected epoch is the one of the warm entries alone, as under any mean rule (the
    network's own cold predictions, often far off on sparse data, do not steer it); the
    rule is chosen after selection (`choose_rule`)."""
    return "global-mean" if rule == AUTO else rule


def choose_rule(network_cold_rmse: float, train: Ratings, valid: Ratings,
                orientation: str = "item") -> dict:
    """The cold-start rule of COLD_START_RULES with the lowest RMSE on `valid`'s cold
    entries (ties: the earlier rule), for `train.cold_start` "auto".

    Args:
      network_cold_rmse: the selected network's RMSE on those entries (`evaluate`'s
        "cold_rmse" on validation, in rating units; NaN when there are none).
      train, valid: the run's training ratings and validation carve-out, in one id space
        (rating units).
      orientation: as in `cold_mask`.

    Returns:
      {"rule", "valid_cold_count", "valid_cold_rmse": {rule: RMSE}}; with no cold
      validation entry the rule is "network" (nothing to choose on) and the RMSEs None.
    """
    cold = cold_mask(train, valid, orientation)
    record = {"valid_cold_count": int(cold.sum())}
    if not cold.any():
        return {"rule": "network", **record,
                "valid_cold_rmse": {r: None for r in COLD_START_RULES}}
    target = np.asarray(valid.ratings, np.float64)[cold]
    scores = {"network": float(network_cold_rmse)}
    for rule in COLD_START_RULES[1:]:
        pred = fallback_values(rule, train, valid)[cold].astype(np.float64)
        scores[rule] = float(np.sqrt(np.mean((pred - target) ** 2)))
    finite = {r: v for r, v in scores.items() if np.isfinite(v)}
    best = min(finite, key=lambda r: (finite[r], COLD_START_RULES.index(r)))
    return {"rule": best, **record, "valid_cold_rmse": scores}


def eval_fields(rule: str, train: Ratings, heldout: Ratings,
                orientation: str = "item") -> dict[str, np.ndarray]:
    """The evaluator's per-entry fields of `heldout`, float32 [n] in the CSR order of
    `row_matrix(heldout, orientation)`: "cold" (1 or 0) and, unless the rule is "network",
    "fallback" (see `to_device_rows(..., fields=)`)."""
    order = csr_order(heldout, orientation)
    fields = {"cold": cold_mask(train, heldout, orientation).astype(np.float32)[order]}
    fallback = fallback_values(rule, train, heldout)
    if fallback is not None:
        fields["fallback"] = fallback[order]
    return fields


def summary_fields(rule: str, scores: dict[str, dict]) -> dict:
    """summary.json's cold-start keys from `evaluate`'s scores ("test", and "valid" when
    scored): flat `<set>_cold_count`, `<set>_cold_rmse`, `<set>_warm_rmse`, and a block
    {"cold_start": {"rule", "<set>_count", "<set>_rmse"}}; an RMSE over no entries is None."""
    flat, block = {}, {"rule": rule}
    for name in ("test", "valid"):
        if name in scores:
            score = scores[name]
            count, cold, warm = (int(score["cold_count"]), _finite(score["cold_rmse"]),
                                 _finite(score["warm_rmse"]))
            flat.update({f"{name}_cold_count": count, f"{name}_cold_rmse": cold,
                         f"{name}_warm_rmse": warm})
            block.update({f"{name}_count": count, f"{name}_rmse": cold})
    return {**flat, "cold_start": block}


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _check_same_ids(train: Ratings, heldout: Ratings) -> None:
    if (train.num_users, train.num_items) != (heldout.num_users, heldout.num_items):
        raise ValueError(f"train ({train.num_users} users x {train.num_items} items) and "
                         f"held-out ({heldout.num_users} x {heldout.num_items}) ratings must "
                         "share one id space")
