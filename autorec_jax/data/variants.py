"""Variants of a rating dataset for "does it carry?" checks (issue 16, part 2), host NumPy.

  thin(ratings, fraction, seed)  a seeded uniform sample of the ratings: round(fraction * R)
                                 entries drawn without replacement (each rating equally
                                 likely, independently of its user, item or value), kept in
                                 their original order; the id space is kept (users or items
                                 left with no rating stay in the mapping; a file written
                                 from the result and read back drops them).
  rescale(ratings, factor)       every rating multiplied by `factor` (> 0): 1-5 stars x 20
                                 gives 20-100, the scale of a 1-100 benchmark.

`scripts/data.py thin` and `rescale` write the result as a tab-separated ratings file
(user, item, rating[, timestamp], raw ids) that `--ratings FILE` reads back.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from autorec_jax.data.ratings import Ratings


def thin(ratings: Ratings, fraction: float, seed: int) -> Ratings:
    """A uniform random `fraction` of the ratings, drawn with `np.random.default_rng(seed)`.

    Args:
      ratings: R ratings.
      fraction: in (0, 1]; round(fraction * R) ratings are kept (at least 1).
      seed: the draw's seed (the same seed gives the same sample).

    Raises:
      ValueError: a fraction outside (0, 1], or no ratings.
    """
    if not (isinstance(fraction, (int, float)) and 0.0 < fraction <= 1.0):
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    if not len(ratings):
        raise ValueError("there are no ratings to thin")
    keep = max(1, int(round(fraction * len(ratings))))
    chosen = np.random.default_rng(seed).choice(len(ratings), size=keep, replace=False)
    return ratings.take(np.sort(chosen))


def rescale(ratings: Ratings, factor: float) -> Ratings:
    """The ratings multiplied by `factor` (float32), ids and timestamps unchanged.

    Raises:
      ValueError: a factor that is not a finite number > 0.
    """
    if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0):
        raise ValueError(f"factor must be a finite number > 0, got {factor!r}")
    scaled = (np.asarray(ratings.ratings, np.float64) * factor).astype(np.float32)
    return dataclasses.replace(ratings, ratings=scaled)
