"""An honest hyper-parameter search: Optuna's TPE sampler and median pruner, validation only.

`tune(config, out_dir)` searches the fields of a search space (`SPACE`, data: field ->
("log" | "float" | "int" | "int_log", low, high) or ("choice", [values]); "width" and
"depth" together make `model.hidden` = (width,) * depth) around a base config. Each trial
trains on the training part less a validation carve-out (`data.valid_ratio`, 0.1 when the
base has none), with early stopping on validation RMSE; after every epoch it reports that
RMSE to the pruner, which stops a trial whose best RMSE so far lies above the median of
the finished trials' at the same number of optimizer updates (not epochs: a full-batch
epoch is one update, a minibatch epoch many, and comparing at equal epochs prunes every
full-batch trial early), after `WARMUP_UPDATES`. A trial's value is its best validation
RMSE. The test set is
never scored by a trial: trials call `evaluate(..., ("valid",))` only.

The study lives in `<out>/study.db` (SQLite, Optuna's RDB storage), so a killed or stopped
tuner resumes where it was: finished trials are kept, a trial the kill left running is
marked failed and its parameters are tried again first, and `trials` and `budget` count
over all runs of the study (the seconds of every trial are stored with it). The sampler is
seeded with (seed, trials so far), so a run is reproducible and a resumed one does not
redraw the first run's parameters.

When the search ends (`trials` finished, or `budget` seconds of trials spent: a trial still
running then is stopped and failed, unless none has finished yet), the winner is trained
once more with `train.retrain` (the same early stopping, then from scratch on train +
validation for the selected epochs) in `<out>/final`, and the test set is scored once.
`<out>/best_config.json` is that run's config (`scripts/train.py --config` runs it again)
and `<out>/tune.json` the trials table, the winner and its test RMSE.

`models=K` asks K trials at a time; those whose configs share every shape and static
choice (`run.members.group_members`: they differ only in lr, weight decay, dropout,
cold-start rule, seed) are trained together in one compiled step (`train_many`). Such a
group is not pruned epoch by epoch (its members run in lockstep); it reports its curves
after the fact, and a started group runs to its end under the budget. With the default
space few asked trials share shapes, so this pays only with a space that fixes the shape
fields (hidden, depth, orientation, batch, loss), on an accelerator.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
from pathlib import Path
from typing import Callable

import numpy as np
import optuna

from autorec_jax.config import Config, locate_field, replace, to_dict
from autorec_jax.errors import CheckpointError, ConfigError, TrainingDivergedError
from autorec_jax.run import multi, policies, reporting
from autorec_jax.run.experiment import evaluate, run_epoch, setup, train_and_evaluate
from autorec_jax.distributed import placement

log = logging.getLogger(__name__)

SPACE = {
    "lr": ("log", 3e-4, 3e-2),
    "weight_decay": ("log", 1e-7, 1e-1),
    "dropout": ("float", 0.0, 0.5),
    "input_dropout": ("float", 0.0, 0.3),
    "width": ("int_log", 16, 1024),
    "depth": ("int", 1, 3),
    "orientation": ("choice", ["item", "user"]),
    "loss": ("choice", ["book", "observed"]),
    "cold_start": ("choice", ["network", "global-mean", "user-mean", "item-mean"]),
    "batch_size": ("choice", [0, 64, 256]),        # 0: full batch
    "rating_scaling": ("choice", ["none", "max"]),
}
KINDS = ("log", "float", "int", "int_log", "choice")
STUDY = "tune"
PATIENCE = 10          # early stopping of a trial when the base config has none
WARMUP_UPDATES = 50    # optimizer updates before the pruner may stop a trial
VALID_RATIO = 0.1      # validation carve-out when the base config has none


@dataclasses.dataclass
class TuneResult:
    config: Config          # the winner's config, as written to best_config.json
    params: dict            # the winner's searched values
    valid_rmse: float       # its best validation RMSE in the search
    test_rmse: float        # of the model retrained on train + validation (scored once)
    study: optuna.Study
    final: object           # the final run's TrainResult
    record: dict            # what tune.json holds


def parse_budget(text: str) -> float:
    """Seconds of "90", "90s", "30m", "2h", "1.5h".

    Raises:
      ConfigError: any other form (the message shows the forms).
    """
    match = re.fullmatch(r"\s*(\d+\.?\d*|\.\d+)\s*([smh]?)\s*", str(text))
    if not match or float(match[1]) <= 0:
        raise ConfigError(f"--budget must be a positive time such as 90s, 30m or 2h; "
                          f"got {text!r}")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]


def startup_trials(space: dict) -> int:
    """Random trials before TPE models the results: two per searched field, at least 10
    (Optuna's default). With Optuna's 10 and 11 fields, a few unlucky full-batch draws
    among them steered a whole 30-minute search to minibatches (README "Tuning")."""
    return max(10, 2 * len(space))


def check_space(space: dict) -> None:
    """Refuses an unknown field or a malformed range (one line naming the entry)."""
    for name, spec in space.items():
        if name not in ("width", "depth"):
            try:
                locate_field(name)
            except ConfigError:
                raise ConfigError(f"search space: unknown config field {name!r}") from None
        ok = isinstance(spec, (tuple, list)) and len(spec) >= 2 and spec[0] in KINDS and (
            (spec[0] == "choice" and len(spec) == 2 and len(spec[1]) > 0)
            or (spec[0] != "choice" and len(spec) == 3 and spec[1] <= spec[2]))
        if not ok:
            raise ConfigError(f"search space: {name!r} must be (kind, low, high) with kind "
                              f"one of {', '.join(KINDS[:4])}, or ('choice', [values]); "
                              f"got {spec!r}")


def suggest(trial: optuna.Trial, space: dict) -> dict:
    """The trial's values of every field of `space` (Optuna's suggest_* calls)."""
    params = {}
    for name, spec in space.items():
        kind = spec[0]
        if kind == "choice":
            params[name] = trial.suggest_categorical(name, list(spec[1]))
        elif kind in ("int", "int_log"):
            params[name] = trial.suggest_int(name, int(spec[1]), int(spec[2]),
                                             log=kind == "int_log")
        else:
            params[name] = trial.suggest_float(name, float(spec[1]), float(spec[2]),
                                               log=kind == "log")
    return params


def trial_config(base: Config, params: dict) -> Config:
    """`base` with a trial's values, selecting on validation (early stopping, no retrain)."""
    overrides = {k: v for k, v in params.items() if k not in ("width", "depth")}
    if "width" in params or "depth" in params:
        width = params.get("width", base.model.hidden[0])
        overrides["hidden"] = (int(width),) * int(params.get("depth", len(base.model.hidden)))
    overrides.update(valid_ratio=base.data.valid_ratio or VALID_RATIO,
                     early_stopping=base.train.early_stopping or PATIENCE, select="best",
                     retrain=False)
    return replace(base, **overrides)


def final_config(base: Config, params: dict) -> Config:
    """The winner as run at the end: the trial's config, then retrained on train + valid."""
    return replace(trial_config(base, params), retrain=True)


def train_trial(config: Config, trial=None, *, ratings=None, cache_dir=None,
                should_stop: Callable[[], bool] = lambda: False) -> dict:
    """Trains one trial's config, scoring validation only; returns its record.

    The loop is `train_and_evaluate`'s (same batches, same early stopping), less the files.
    After each epoch the validation RMSE goes to `trial.report`; `trial.should_prune()` or
    `should_stop()` ends it (state "pruned" or "stopped"). A diverged trial is "pruned".
    Returns {"state", "value" (best valid RMSE), "best_epoch", "epochs", "curve"}.
    """
    try:
        experiment, state = setup(config, ratings, cache_dir)
    except ConfigError as err:  # e.g. a batch larger than the rows: a choice that cannot run
        log.warning("trial %s cannot run: %s", getattr(trial, "number", "-"), err)
        return {"state": "invalid", "value": None, "best_epoch": None, "epochs": 0,
                "curve": [], "error": str(err)}
    shuffle = np.random.default_rng(experiment.shuffle_seed)
    carry = np.zeros(0, np.int32)
    loop = {"best": None, "bad_epochs": 0, "first_loss": None}
    best_params, curve, outcome, updates = None, [], "complete", 0
    for epoch in range(1, config.train.epochs + 1):
        batches, carry = placement.plan_epoch(config, experiment.data, experiment.batch_size,
                                              shuffle, carry, experiment.shuffle_seed, epoch)
        state, metrics = run_epoch(experiment, state, batches)
        updates += len(batches)
        try:
            policies.check_loss(metrics, epoch, 0, loop, config.train.divergence_factor)
            rmse = evaluate(experiment, state.params, ("valid",))["valid"]["rmse"]
            if not math.isfinite(rmse):
                raise TrainingDivergedError(f"non-finite validation RMSE at epoch {epoch}")
        except TrainingDivergedError:
            outcome = "diverged"
            break
        curve.append(rmse)
        best_params, stop = policies.early_stopping_step(
            loop, state.params, best_params, epoch, rmse, config.train.early_stopping)
        if trial is not None:
            trial.report(rmse, updates)
            if trial.should_prune():
                outcome = "pruned"
                break
        if stop:
            break
        if should_stop():
            outcome = "stopped"
            break
    best = loop["best"]
    return {"state": outcome, "value": None if best is None else best["valid_rmse"],
            "best_epoch": None if best is None else best["epoch"], "epochs": len(curve),
            "curve": curve}


def _open_study(out: Path, seed: int, pruner, startup: int) -> optuna.Study:
    storage = optuna.storages.RDBStorage(f"sqlite:///{out / 'study.db'}")
    done = len(optuna.load_study(study_name=STUDY, storage=storage).trials) if any(
        s.study_name == STUDY for s in storage.get_all_studies()) else 0
    sampler = optuna.samplers.TPESampler(seed=(seed * 100003 + done) % 2**32,
                                         constant_liar=True, n_startup_trials=startup)
    study = optuna.create_study(study_name=STUDY, storage=storage, sampler=sampler,
                                pruner=pruner, direction="minimize", load_if_exists=True)
    # Trials a kill left running: failed, and their parameters asked again first.
    for frozen in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        storage.set_trial_state_values(frozen._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial(frozen.params, user_attrs={"retry_of": frozen.number})
        log.info("trial %d was left running (killed): failed, asked again", frozen.number)
    return study


def _finished(study) -> list:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return study.get_trials(deepcopy=False, states=states)


def _spent(study) -> float:
    return sum(t.user_attrs.get("seconds", 0.0) for t in study.get_trials(deepcopy=False))


def tune(config: Config, out_dir, *, trials: int | None = None, budget: float | None = None,
         space: dict | None = None, models: int = 1, seed: int = 0, ratings=None,
         cache_dir=None, pruner=None, enqueue=(), stop_requested=None) -> TuneResult:
    """Searches `space` around `config` on validation, retrains the winner, scores test once.

    Args:
      config: the base: every field the space does not set (data, epochs as the most a
        trial trains, ...). With full batch in the space, give it room: `honest()` (1500
        epochs, patience 30, scripts/tune.py's default) rather than `d2l()`'s 25 epochs,
        which are 25 updates of a full batch. Its valid_ratio and early_stopping are used when set.
      out_dir: the study's folder (study.db, final/, best_config.json, tune.json); an
        existing study there is resumed.
      trials: finished (complete or pruned) trials to reach, over all runs of the study.
      budget: seconds of trials to spend, over all runs (see `parse_budget`). At least one
        of trials and budget must be given.
      space: field -> spec (see `SPACE`, the default).
      models: trials asked and, where they share shapes, trained together (`train_many`).
      seed: the sampler's seed.
      ratings, cache_dir: as for `train_and_evaluate`.
      pruner: an Optuna pruner (default: MedianPruner, 3 startup trials, WARMUP_UPDATES).
      enqueue: parameter dicts tried first (e.g. a preset's values), once per study.
      stop_requested: polled after each epoch and trial; True stops the search, which can
        be resumed (the running trial is failed and asked again), and returns None.

    Raises:
      ConfigError: neither trials nor budget, a bad space, a bad config.
    """
    if trials is None and budget is None:
        raise ConfigError("tune needs trials or a time budget (--trials N or --budget 30m)")
    space = SPACE if space is None else space
    check_space(space)
    trial_config(config, suggest(optuna.trial.FixedTrial(
        {k: (s[1][0] if s[0] == "choice" else s[1]) for k, s in space.items()}), space))
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    pruner = pruner or optuna.pruners.MedianPruner(n_startup_trials=3,
                                                    n_warmup_steps=WARMUP_UPDATES)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = _open_study(out, seed, pruner, startup_trials(space))
    if enqueue and not study.user_attrs.get("enqueued"):
        for params in enqueue:
            study.enqueue_trial(dict(params))
        study.set_user_attr("enqueued", True)
    stop_requested = stop_requested or (lambda: False)
    start, spent_before = time.perf_counter(), _spent(study)

    def over_budget() -> bool:
        return budget is not None and spent_before + time.perf_counter() - start >= budget

    reason = None
    while reason is None:
        have = len(_finished(study))
        if trials is not None and have >= trials:
            reason = "trials"
        elif over_budget() and have:
            reason = "budget"
        elif stop_requested():
            return None
        else:
            ask = models if trials is None else max(1, min(models, trials - have))
            _run_batch(study, [study.ask() for _ in range(ask)], config, space, ratings,
                       cache_dir, lambda: (over_budget() and len(_finished(study)) > 0)
                       or stop_requested())
            if stop_requested():
                return None
    search_seconds = _spent(study)
    return _finish(study, config, out, reason, search_seconds, ratings, cache_dir)


def _run_batch(study, asked, base, space, ratings, cache_dir, should_stop) -> None:
    configs = [trial_config(base, suggest(t, space)) for t in asked]
    groups = multi.group_members(configs) if len(asked) > 1 else [[0]]
    for group in groups:
        start = time.perf_counter()
        if len(group) == 1:
            k = group[0]
            record = train_trial(configs[k], asked[k], ratings=ratings, cache_dir=cache_dir,
                                 should_stop=should_stop)
            _tell(study, asked[k], record, time.perf_counter() - start)
            continue
        results = multi.train_many([configs[k] for k in group], ratings=ratings,
                                   cache_dir=cache_dir, diverged="return")
        seconds = (time.perf_counter() - start) / len(group)
        for k, result in zip(group, results):
            if isinstance(result, Exception):
                record = {"state": "diverged", "value": None, "best_epoch": None,
                          "epochs": 0, "curve": []}
            else:
                curve = [r["valid_rmse"] for r in result.history]
                for epoch_record in result.history:  # "step": updates so far
                    asked[k].report(epoch_record["valid_rmse"], epoch_record["step"])
                sel = result.summary["selection"]
                record = {"state": "complete", "value": result.summary["valid_rmse"],
                          "best_epoch": sel["best_epoch"], "epochs": len(curve),
                          "curve": curve}
            _tell(study, asked[k], {**record, "members": len(group)}, seconds)


def _tell(study, trial, record, seconds) -> None:
    for key in ("best_epoch", "epochs", "curve", "members", "error"):
        if key in record:
            trial.set_user_attr(key, record[key])
    trial.set_user_attr("seconds", seconds)
    states = optuna.trial.TrialState
    if record["state"] == "complete":
        study.tell(trial, record["value"])
    elif record["state"] in ("pruned", "diverged", "invalid"):
        trial.set_user_attr("outcome", record["state"])
        study.tell(trial, state=states.PRUNED)
    else:  # stopped by the budget or a stop request: not a result; asked again on resume
        trial.set_user_attr("outcome", record["state"])
        study.tell(trial, state=states.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    log.info("trial %d %s: valid RMSE %s after %d epoch(s), %.1f s", trial.number,
             record["state"], record["value"], record["epochs"], seconds)


def _finish(study, base, out, reason, search_seconds, ratings, cache_dir) -> TuneResult:
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise TrainingDivergedError(f"no trial of the study in {out} finished (all pruned or "
                                    f"diverged); widen the search space or the budget")
    best = study.best_trial
    chosen = final_config(base, best.params)
    start = time.perf_counter()
    try:
        final = train_and_evaluate(chosen, out / "final", ratings=ratings, cache_dir=cache_dir,
                                   resume=True)
    except CheckpointError:  # a final run of an earlier winner: this one replaces it
        final = train_and_evaluate(chosen, out / "final", ratings=ratings, cache_dir=cache_dir,
                                   overwrite=True)
    table = [{"number": t.number, "state": t.state.name.lower(), "value": t.value,
              "params": t.params, **{k: t.user_attrs.get(k) for k in (
                  "best_epoch", "epochs", "seconds", "outcome", "retry_of", "error")}}
             for t in study.trials]
    record = {"winner": {"number": best.number, "params": best.params,
                         "valid_rmse": best.value,
                         "best_epoch": best.user_attrs.get("best_epoch")},
              "test_rmse": final.summary["test_rmse"], "test_mae": final.summary["test_mae"],
              "final_valid_rmse": final.summary.get("valid_rmse"),
              "stopped_by": reason, "search_seconds": search_seconds,
              "final_seconds": time.perf_counter() - start,
              "finished_trials": len(_finished(study)), "trials": table,
              "config": to_dict(chosen)}
    reporting.write_json(out / "best_config.json", to_dict(chosen))
    reporting.write_json(out / "tune.json", reporting.finite_or_none(record))
    log.info("tuner: %d trials (%s), winner trial %d valid RMSE %.4f; retrained test RMSE "
             "%.4f", record["finished_trials"], reason, best.number, best.value,
             record["test_rmse"])
    return TuneResult(config=chosen, params=best.params, valid_rmse=best.value,
                      test_rmse=record["test_rmse"], study=study, final=final, record=record)
