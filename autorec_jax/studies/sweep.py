"""Grids of runs (the book's AutoRec exercises), resumable, and their summary by validation.

A grid is a list of override dicts for `config.replace`; each (setting, seed) is one run of
`train_and_evaluate` and one row of `<out_dir>/results.csv`, rewritten whole after every run,
so an interrupted grid resumes where it stopped. Settings are chosen by mean VALIDATION RMSE
over seeds; the test RMSE is reported beside it and never used to choose.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from autorec_jax import config as config_lib
from autorec_jax.run import multi
from autorec_jax.config import Config
from autorec_jax.data.ratings import Ratings
from autorec_jax.errors import ConfigError, TrainingDivergedError
from autorec_jax.run.experiment import train_and_evaluate
from autorec_jax.run.reporting import write_csv, write_json

log = logging.getLogger(__name__)
Overrides = dict
RESULTS_FILE = "results.csv"
BASE_FILE = "base_config.json"

# Each grid is one line: a list of overrides applied to the base config (field names as in
# `config.replace`). The seed is not a setting: it comes from `run_grid(seeds=)` and draws
# both the random split and the initialisation.
GRIDS: dict[str, list[Overrides]] = {
    # Exercise 1: the hidden dimension (the book uses 500).
    "hidden": [{"hidden": (h,)} for h in (10, 20, 50, 100, 200, 300, 500, 700, 1000)],
    # Exercise 2: depth, 1..4 hidden layers of the shared activation. Symmetric stacks around
    # a 250-wide code from 3 layers on (the paper's deep model is 500-250-500).
    "depth": [{"hidden": h} for h in ((500,), (500, 500), (500, 250, 500),
                                      (500, 250, 250, 500))],
    # Exercise 3: encoder (hidden layers) x decoder (output layer) activations. Bounded
    # decoders (sigmoid, tanh) are left out: the model does not rescale its outputs, so they
    # cannot reach ratings above 1.
    "activation": [{"activation": e, "output_activation": d}
                   for e in ("sigmoid", "relu", "tanh", "elu", "identity")
                   for d in ("identity", "relu", "softplus")],
    # The `paper` preset's choice (run with --preset paper): lambda of the paper's objective
    # SSE + lambda/2 (||W||^2 + ||V||^2) (optim.weight_decay under full-batch RProp, loss
    # "sum", biases not decayed) x hidden units. Not part of BOOK_GRIDS.
    "paper": [{"weight_decay": lam, "hidden": (h,)}
              for lam in (1.0, 10.0, 100.0, 300.0, 1000.0) for h in (300, 500, 700)],
}
BOOK_GRIDS = ("hidden", "depth", "activation")
COLUMNS = ("grid", "setting", "overrides", "seed", "valid_rmse", "test_rmse", "best_epoch",
           "epochs_run", "train_seconds", "compile_seconds", "wall_seconds", "error")


def setting_label(overrides: Overrides) -> str:
    """A short readable name: {"hidden": (500, 250)} -> "hidden=500-250"."""
    def text(value):
        return "-".join(str(v) for v in value) if isinstance(value, (tuple, list)) else str(value)
    return " ".join(f"{name}={text(value)}" for name, value in overrides.items()) or "base"


def grid_settings(grid: str | Sequence[Overrides]) -> list[Overrides]:
    """The overrides of a named grid, or `grid` itself when it is a list.

    Raises:
      ConfigError: an unknown grid name.
    """
    if isinstance(grid, str):
        if grid not in GRIDS:
            raise ConfigError(f"unknown grid {grid!r}; choose from {', '.join(GRIDS)}")
        return GRIDS[grid]
    return list(grid)


def check_base(base: Config) -> None:
    """Refuses a config that cannot select on validation.

    Raises:
      ConfigError: neither early stopping nor a best-epoch pick on a validation split.
    """
    if not base.selects_on_validation:
        raise ConfigError(
            "a sweep selects on validation only: it needs data.valid_ratio > 0 and "
            "train.early_stopping > 0 or train.select=best (got valid_ratio "
            f"{base.data.valid_ratio}, early_stopping {base.train.early_stopping}); pass e.g. "
            "--valid-ratio 0.1 --early-stopping 5")


def run_configs(base: Config, settings: Sequence[Overrides], seeds: Sequence[int]
                ) -> list[tuple[Overrides, int, Config]]:
    """Every (overrides, seed, config) of a grid, all validated before any run starts.

    Raises:
      ConfigError: a bad override, a seed given as a setting, or a run that cannot select
        on validation.
    """
    check_base(base)
    runs = []
    for overrides in settings:
        if "seed" in overrides:
            raise ConfigError("the seed is not a setting: give it in `seeds`")
        for seed in seeds:
            config = config_lib.replace(base, **overrides, seed=seed)
            check_base(config)
            runs.append((overrides, seed, config))
    return runs


def read_results(out_dir: str | Path) -> pd.DataFrame:
    """The rows of `out_dir/results.csv` (an empty frame with COLUMNS when there is none)."""
    path = Path(out_dir) / RESULTS_FILE
    if not path.exists():
        return pd.DataFrame(columns=list(COLUMNS))
    results = pd.read_csv(path, dtype={"grid": str, "setting": str, "overrides": str,
                                       "error": str})
    results["error"] = results["error"].fillna("")
    return results


def claim_out_dir(out_dir: str | Path, base: Config) -> None:
    """Records the base config in `out_dir`, or checks it equals the one recorded there.

    Raises:
      ConfigError: `out_dir` holds a sweep of another base config (the fields that differ).
    """
    path = Path(out_dir) / BASE_FILE
    mine = config_lib.flatten(base_identity(base))
    if path.exists():
        theirs = config_lib.flatten(json.loads(path.read_text(encoding="utf-8")))
        differ = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        if differ:
            shown = "; ".join(f"{k}: {theirs.get(k)!r} there, {mine.get(k)!r} here"
                              for k in differ[:4])
            raise ConfigError(f"{out_dir} holds a sweep of another base config ({shown}); "
                              "use another --out, or the same flags to resume it")
        return
    write_json(path, base_identity(base))


def base_identity(base: Config) -> dict:
    """What makes two sweeps' rows comparable: the base config less its seed."""
    return config_lib.to_dict(config_lib.replace(base, seed=0))


def run_grid(base_config: Config, grid: str | Sequence[Overrides], seeds: Sequence[int],
             out_dir: str | Path, *, ratings: Ratings | None = None,
             train_fn: Callable = train_and_evaluate, name: str | None = None,
             batch_members: bool = True) -> pd.DataFrame:
    """Runs every (setting, seed) of `grid` not yet in `out_dir/results.csv`.

    Each run keeps its best-validation epoch (early stopping) and is scored on test once at
    the end. After each run the whole results.csv is rewritten atomically (temp file and
    rename), so a kill leaves it consistent and a second call resumes: rows already there
    for the same (grid, setting, seed) are skipped.

    Args:
      base_config: the config every setting overrides; needs data.valid_ratio > 0 and
        train.early_stopping > 0. Its seed is ignored (see `seeds`).
      grid: a name in GRIDS, or a list of override dicts (`config.replace` keywords).
      seeds: each setting runs once per seed (the seed draws the split and the init).
      out_dir: the sweep's folder: results.csv and base_config.json.
      ratings: train on these instead of loading the config's dataset.
      train_fn: `(config, out_dir, *, ratings) -> TrainResult`; `train_and_evaluate`.
      name: the grid's name in the rows (default: `grid` when a name, else "custom").
      batch_members: with the default `train_fn`, train the runs whose shapes agree (seeds,
        lr, weight decay, dropout settings) together in one compiled step
        (`multi.train_many`; each equals its run alone to float32 round-off; each row's
        wall_seconds is its share of the group's); False: one run at a time.

    Returns:
      This grid's rows (COLUMNS), earlier ones included, in results.csv order.

    Raises:
      ConfigError: no validation split or early stopping, a bad override, or `out_dir`
        holding a sweep of another base config.
    """
    name = name or (grid if isinstance(grid, str) else "custom")
    runs = run_configs(base_config, grid_settings(grid), seeds)
    claim_out_dir(out_dir, base_config)
    rows = read_results(out_dir).to_dict("records")
    done = {(r["grid"], r["setting"], int(r["seed"])) for r in rows}
    todo = [(o, s, c) for o, s, c in runs if (name, setting_label(o), s) not in done]
    if len(todo) < len(runs):
        log.info("%s: %d of %d runs already in %s", name, len(runs) - len(todo), len(runs),
                 Path(out_dir) / RESULTS_FILE)
    jobs = ([[todo[i] for i in group] for group in multi.group_members([c for *_, c in todo])]
            if batch_members and train_fn is train_and_evaluate else [[run] for run in todo])
    for job in jobs:
        start = time.perf_counter()
        outcomes = None
        if len(job) > 1:
            try:
                outcomes = [(r, "") if not isinstance(r, TrainingDivergedError) else (None, str(r))
                            for r in multi.train_many([c for *_, c in job], ratings=ratings,
                                                      diverged="return")]
            except multi.MembersDiffer as why:
                log.info("%s: %d runs one at a time: %s", name, len(job), why)
        # Runs trained together share the wall time: each row gets its share.
        share = (time.perf_counter() - start) / len(job)
        for index, (overrides, seed, config) in enumerate(job):
            if outcomes is None:
                start = time.perf_counter()
                try:
                    summary, error = train_fn(config, None, ratings=ratings).summary, ""
                except TrainingDivergedError as err:
                    # A setting that diverges is a result (it never becomes the best), not a
                    # crash.
                    summary, error = {}, str(err)
                wall = time.perf_counter() - start
            else:
                result, error = outcomes[index]
                summary = {} if result is None else result.summary
                wall = share
            rows.append(result_row(name, overrides, seed, summary, wall, error))
            write_csv(Path(out_dir) / RESULTS_FILE, rows)
            log.info("%s  %-40s seed %d  valid %.4f  test %.4f  %5.1f s%s", name,
                     rows[-1]["setting"], seed, rows[-1]["valid_rmse"], rows[-1]["test_rmse"],
                     rows[-1]["wall_seconds"], f"  {error}" if error else "")
    results = read_results(out_dir)
    return results[results["grid"] == name].reset_index(drop=True)


def result_row(grid: str, overrides: Overrides, seed: int, summary: dict,
               wall_seconds: float, error: str = "") -> dict:
    """One results.csv row from a run's summary (NaN scores when the run failed)."""
    def number(value, kind=float):
        # Plain Python numbers: NumPy scalars would be written as "np.float64(...)".
        return float("nan") if value is None else kind(value)

    return {"grid": grid, "setting": setting_label(overrides),
            "overrides": json.dumps(overrides, sort_keys=True), "seed": int(seed),
            "valid_rmse": number(summary.get("valid_rmse")),
            "test_rmse": number(summary.get("test_rmse")),
            "best_epoch": number(summary.get("selection", {}).get("best_epoch"), int),
            "epochs_run": number(summary.get("epochs_run"), int),
            "train_seconds": number(summary.get("train_seconds")),
            "compile_seconds": number(summary.get("compile_seconds")),
            "wall_seconds": float(wall_seconds), "error": error}


def summarize_grid(results: pd.DataFrame) -> pd.DataFrame:
    """Per (grid, setting): n, mean and std over seeds of valid and test RMSE, mean epochs.

    `best` marks, per grid, the setting with the lowest mean VALIDATION RMSE (the first on
    a tie); the test RMSE plays no part in it. A setting with a failed (diverged) seed has
    NaN means and is never the best. Settings keep their first-appearance order.
    """
    def mean(values):
        return values.mean(skipna=False)

    def std(values):
        return values.std(skipna=False)

    if "error" not in results:
        results = results.assign(error="")
    grouped = results.groupby(["grid", "setting"], sort=False)
    summary = grouped.agg(
        overrides=("overrides", "first"), n=("seed", "size"),
        failed=("error", lambda errors: int((errors != "").sum())),
        valid_rmse_mean=("valid_rmse", mean), valid_rmse_std=("valid_rmse", std),
        test_rmse_mean=("test_rmse", mean), test_rmse_std=("test_rmse", std),
        best_epoch_mean=("best_epoch", "mean"), epochs_run_mean=("epochs_run", "mean"),
        wall_seconds_mean=("wall_seconds", "mean")).reset_index()
    summary["best"] = False
    for _, part in summary.groupby("grid", sort=False):
        valid = part["valid_rmse_mean"].dropna()
        if len(valid):
            summary.loc[valid.idxmin(), "best"] = True
    return summary
