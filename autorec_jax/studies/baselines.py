"""Tuned rating baselines on a run's own split (issue 16: "compare a tuned baseline"), NumPy.

Two models, each with its settings chosen on the validation carve-out only, then refitted on
train + validation and scored once on test (the project's honest protocol):

  item-mean   r_ui ~ (sum of item i's training ratings + k * mu) / (n_i + k): the item's
              mean shrunk towards the global mean mu by k pseudo-ratings (k = 0: the plain
              mean; an item with no rating predicts mu). k is chosen from `SHRINKAGES`.
  biased MF   r_ui ~ mu + b_u + c_i + p_u . q_i, d-dimensional factors, fitted by
              alternating least squares: with the item side fixed, each user's (b_u, p_u)
              is the exact ridge solution of its residuals r_ui - mu - c_i on features
              [1, q_i] with penalty reg * ||(b_u, p_u)||^2, and symmetrically for items.
              (d, reg) are chosen from `DIMS` x `REGS`. ALS in NumPy rather than a gradient
              method: every half-step is a closed form (no learning rate or epoch count to
              tune, deterministic for a seed), and ML-100K-sized data needs seconds.
              The fit works on ratings divided by the training ratings' standard deviation
              (and multiplies back), so `reg` means the same on any rating scale; a user
              or item with no rating gets zero bias and factors (mu + the other side's bias).

Predictions are clipped to the training ratings' range. `scripts/baselines.py` runs both on
any split the data flags of `scripts/train.py` describe and writes summary.json.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from autorec_jax.data.ratings import Ratings

SHRINKAGES = (0.0, 1.0, 3.0, 10.0, 30.0)
DIMS = (2, 8, 32)
REGS = (1.0, 3.0, 10.0, 30.0)
ALS_ITERATIONS = 15


def rmse(pred: np.ndarray, target: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(pred, np.float64) - target) ** 2)))


def item_mean_fit(train: Ratings, shrinkage: float = 0.0) -> np.ndarray:
    """Per-item prediction, float64 [num_items]: the shrunk item mean (see module doc)."""
    r = np.asarray(train.ratings, np.float64)
    mu = r.mean()
    counts = np.bincount(train.items, minlength=train.num_items)
    sums = np.bincount(train.items, weights=r, minlength=train.num_items)
    total = counts + shrinkage
    return np.where(total > 0, (sums + shrinkage * mu) / np.maximum(total, 1e-300), mu)


@dataclasses.dataclass(frozen=True)
class BiasedMF:
    """A fitted biased MF, in rating units: predict(u, i) = mu + bu[u] + bi[i] + P[u] . Q[i]."""

    mu: float
    user_bias: np.ndarray      # [num_users]
    item_bias: np.ndarray      # [num_items]
    user_factors: np.ndarray   # [num_users, d]
    item_factors: np.ndarray   # [num_items, d]

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """float64 [n] predictions at index pairs (unclipped)."""
        return (self.mu + self.user_bias[users] + self.item_bias[items]
                + np.einsum("nd,nd->n", self.user_factors[users], self.item_factors[items]))


def ridge_side(index: np.ndarray, other: np.ndarray, residual: np.ndarray, size: int,
               other_features: np.ndarray, reg: float) -> np.ndarray:
    """One ALS half-step: for each of `size` entities, the ridge solution [size, d + 1] of
    `residual` on features [1, other_features[other]] over its entries, penalty reg * I.

    Entity e solves (X_e^T X_e + reg I) w = X_e^T y_e; an entity with no entry gets w = 0.
    """
    k = other_features.shape[1] + 1
    out = np.zeros((size, k))
    order = np.argsort(index, kind="stable")
    bounds = np.searchsorted(index[order], np.arange(size + 1))
    eye = reg * np.eye(k)
    for e in range(size):
        rows = order[bounds[e]:bounds[e + 1]]
        if not len(rows):
            continue
        x = np.empty((len(rows), k))
        x[:, 0] = 1.0
        x[:, 1:] = other_features[other[rows]]
        out[e] = np.linalg.solve(x.T @ x + eye, x.T @ residual[rows])
    return out


def fit_biased_mf(train: Ratings, dim: int, reg: float, *, iterations: int = ALS_ITERATIONS,
                  seed: int = 0) -> BiasedMF:
    """Biased MF by ALS (module doc); `dim` 0 fits the biases alone (a ridge baseline)."""
    r = np.asarray(train.ratings, np.float64)
    mu = r.mean()
    unit = r.std() if len(r) > 1 and r.std() > 0 else 1.0
    y = (r - mu) / unit
    users, items = train.users, train.items
    rng = np.random.default_rng(seed)
    q = rng.normal(0.0, 0.1, (train.num_items, dim))
    item_bias = np.zeros(train.num_items)
    p, user_bias = np.zeros((train.num_users, dim)), np.zeros(train.num_users)
    for _ in range(iterations):
        w = ridge_side(users, items, y - item_bias[items], train.num_users, q, reg)
        user_bias, p = w[:, 0], w[:, 1:]
        residual = y - user_bias[users]
        w = ridge_side(items, users, residual, train.num_items, p, reg)
        item_bias, q = w[:, 0], w[:, 1:]
    return BiasedMF(mu=mu, user_bias=user_bias * unit, item_bias=item_bias * unit,
                    user_factors=p * np.sqrt(unit), item_factors=q * np.sqrt(unit))


def union(a: Ratings, b: Ratings) -> Ratings:
    """Two Ratings of one id space as one (a's entries, then b's)."""
    times = None if a.timestamps is None or b.timestamps is None else np.concatenate(
        [a.timestamps, b.timestamps])
    return dataclasses.replace(a, users=np.concatenate([a.users, b.users]),
                               items=np.concatenate([a.items, b.items]),
                               ratings=np.concatenate([a.ratings, b.ratings]),
                               timestamps=times)


def run_baselines(train: Ratings, valid: Ratings, test: Ratings, *,
                  shrinkages=SHRINKAGES, dims=DIMS, regs=REGS,
                  iterations: int = ALS_ITERATIONS, seed: int = 0) -> dict:
    """Both baselines, chosen on `valid`, refitted on train + valid, scored once on `test`.

    Returns {"item_mean": {...}, "biased_mf": {...}}, each with the chosen setting, its
    "valid_rmse", "test_rmse", "test_mae" and the whole validation "grid".

    Raises:
      ValueError: an empty validation set (the choice needs one: pass --valid-ratio 0.1).
    """
    if not len(valid):
        raise ValueError("the baselines choose their settings on validation: the split has "
                         "none (pass --valid-ratio 0.1)")
    low, high = float(train.ratings.min()), float(train.ratings.max())
    clip = lambda x: np.clip(x, low, high)
    v_target = np.asarray(valid.ratings, np.float64)
    t_target = np.asarray(test.ratings, np.float64)
    full = union(train, valid)

    grid = [{"shrinkage": k, "valid_rmse": rmse(clip(item_mean_fit(train, k)[valid.items]),
                                                v_target)} for k in shrinkages]
    best = min(grid, key=lambda g: g["valid_rmse"])
    pred = clip(item_mean_fit(full, best["shrinkage"])[test.items])
    item = {**best, "test_rmse": rmse(pred, t_target),
            "test_mae": float(np.mean(np.abs(pred - t_target))), "grid": grid}

    grid = []
    for dim in dims:
        for reg in regs:
            model = fit_biased_mf(train, dim, reg, iterations=iterations, seed=seed)
            grid.append({"dim": dim, "reg": reg, "valid_rmse": rmse(
                clip(model.predict(valid.users, valid.items)), v_target)})
    best = min(grid, key=lambda g: g["valid_rmse"])
    model = fit_biased_mf(full, best["dim"], best["reg"], iterations=iterations, seed=seed)
    pred = clip(model.predict(test.users, test.items))
    mf = {**best, "iterations": iterations, "test_rmse": rmse(pred, t_target),
          "test_mae": float(np.mean(np.abs(pred - t_target))), "grid": grid}
    return {"item_mean": item, "biased_mf": mf}
