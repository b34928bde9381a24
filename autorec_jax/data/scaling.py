"""Rating scaling (`train.rating_scaling`): the network sees ratings divided by one unit.

  "none"  the ratings as read (the book's).
  "max"   every rating divided by the largest |training rating| (1-5 stars: 0.2-1;
          1-100: 0.01-1). Inputs, training targets, held-out targets, the cold-start
          fallbacks and the clipping range are all divided by the same unit; the metrics
          (RMSE, MAE) and served predictions are multiplied back, so they are in rating
          units. Ratings x c give exactly the device values of the original (correctly
          rounded float32 division of equal quotients), hence the same network and
          predictions x c: the learning rate, init and weight decay mean the same on any
          rating scale.

Why divide and not map to (r - min) / (max - min): AutoRec's matrices mark "unobserved"
with 0 (`losses.observed_mask`: value != 0), so the smallest rating must not become 0; a
division keeps every nonzero rating nonzero and its sign. It removes the scale, not an
offset (a 101-105 scale would still be squeezed into 0.96-1).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from autorec_jax.data.ratings import Ratings

RATING_SCALINGS = ("none", "max")  # the same choices `config` validates (a test checks)


def rating_unit(mode: str, train_values: np.ndarray) -> float:
    """The unit the device ratings are divided by: 1.0 for "none", else max |training rating|
    (1.0 with no training rating).

    Raises:
      ValueError: an unknown mode.
    """
    if mode not in RATING_SCALINGS:
        raise ValueError(f"rating scaling must be one of {RATING_SCALINGS}, got {mode!r}")
    values = np.asarray(train_values)
    if mode == "none" or not len(values):
        return 1.0
    return float(np.max(np.abs(values)))


def scaled(ratings: Ratings, unit: float) -> Ratings:
    """`ratings` with every rating divided by `unit` (float32); the same object for 1.0."""
    if unit == 1.0:
        return ratings
    return dataclasses.replace(ratings, ratings=(ratings.ratings / np.float32(unit)).astype(
        np.float32))
