"""Loop policies of a run, each a small piece of host logic: when to checkpoint, early
stopping on validation RMSE, and what counts as divergence."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from autorec_jax.errors import TrainingDivergedError


class CheckpointCadence:
    """Saves checkpoints; with interval 0 (automatic), when the time since the last save
    reaches max(30 s, 20x what that save took): saving then costs at most ~5% of the run's
    time, and a kill loses at most that much work."""

    MIN_SECONDS, FACTOR = 30.0, 20.0

    def __init__(self):
        self.last_end = time.perf_counter()
        self.last_seconds = 0.0
        self.total_seconds = 0.0

    def due(self, epoch: int, every: int) -> bool:
        if every:
            return epoch % every == 0
        waited = time.perf_counter() - self.last_end
        return waited >= max(self.MIN_SECONDS, self.FACTOR * self.last_seconds)

    def record(self, start: float, end: float) -> None:
        """Notes a save that ran from `start` to `end` (time.perf_counter seconds)."""
        self.last_end, self.last_seconds = end, end - start
        self.total_seconds += self.last_seconds


def early_stopping_step(loop, params, best_params, epoch, value, patience,
                        metric="valid_rmse"):
    """Keeps the best validation epoch: returns (best params, whether to stop).

    `value` is the epoch's `metric` (`train.select_metric`): lower is better for
    "valid_rmse", higher for a ranking metric. Stops after `patience` epochs without a
    better value; patience 0 never stops (a best-epoch pick over the whole run)."""
    best = loop["best"]
    if best is None or (value < best[metric] if metric == "valid_rmse" else value > best[metric]):
        loop.update(best={"epoch": epoch, metric: value}, bad_epochs=0)
        # A copy: the state's buffers are donated to the next epoch.
        return jax.tree.map(jnp.copy, params), False
    loop["bad_epochs"] += 1
    return best_params, patience > 0 and loop["bad_epochs"] >= patience


def selection_value(scores: dict, metric: str) -> float:
    """The value of `train.select_metric` ("valid_<name>") in `evaluate`'s scores."""
    return scores["valid"][metric.removeprefix("valid_")]


def check_loss(metrics: dict, epoch: int, first_step: int, loop: dict, factor: float) -> None:
    """Raises TrainingDivergedError on a non-finite step loss or a finite blow-up."""
    losses = np.asarray(metrics["loss"])
    bad = np.flatnonzero(~np.isfinite(losses))
    mean = float(np.mean(losses))
    if loop["first_loss"] is None and not len(bad):
        loop["first_loss"] = mean
    if len(bad):
        why = f"non-finite training loss at epoch {epoch}, step {first_step + bad[0] + 1}"
    elif factor and mean > factor * loop["first_loss"]:
        why = (f"training loss {mean:.4g} at epoch {epoch} is over {factor:g}x the first "
               f"epoch's ({loop['first_loss']:.4g})")
    else:
        return
    raise TrainingDivergedError(f"training diverged: {why}; lower optim.lr or check the "
                                "ratings")


def check_scores(scores: dict, epoch: int, scale: tuple[float, float], factor: float) -> None:
    """Raises TrainingDivergedError when a held-out RMSE is far beyond the rating range."""
    low, high = scale
    for name, score in scores.items():
        if factor and score["rmse"] > factor * max(high - low, 1.0):
            raise TrainingDivergedError(
                f"training diverged: {name} RMSE {score['rmse']:.4g} at epoch {epoch} is "
                f"over {factor:g}x the rating range {low:g}..{high:g}; lower optim.lr")
