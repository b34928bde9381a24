"""Ensembles of runs on one split: each member's held-out predictions, and blends of them
whose weights are fit on validation ratings only and then applied to the test ratings.

An ensemble folder holds one run folder per member (`<out>/member<i>/`, resumable),
`ensemble.json` (members, the mean and the fitted blend, counts) and `report.md`, each
written whole to a temp file and renamed. Shapes: M members, V validation and T test
ratings, R held-out ratings of either set.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Sequence

import numpy as np

from autorec_jax.data import coldstart
from autorec_jax.run import multi, preflight, reporting
from autorec_jax.config import Config, DataConfig, to_dict
from autorec_jax.data.ratings import Ratings, row_matrix
from autorec_jax.fileio import atomic_write_bytes
from autorec_jax.errors import ConfigError, DataError
from autorec_jax.run.experiment import Experiment, TrainResult, train_and_evaluate
from autorec_jax.distributed.parallel import fetch
from autorec_jax.serve.recommend import predict_entries

log = logging.getLogger(__name__)
PyTree = Any
ENSEMBLE_FILE, REPORT_FILE = "ensemble.json", "report.md"


def predict_heldout(experiment: Experiment, params: PyTree, heldout: Ratings) -> np.ndarray:
    """Each held-out rating's prediction, as the run's evaluator makes it.

    The network reads rows of the experiment's TRAINING matrix in inference mode (block by
    block, `recommend.predict_entries`); its output is clipped when
    `train.clip_predictions`, then the `train.cold_start` rule's value replaces it at cold
    entries. The RMSE of these against `experiment.test` is the run's test RMSE.

    Args:
      experiment: the run's `Experiment` (config and training ratings).
      params: the network's params (on the host or on the run's devices).
      heldout: R ratings in the experiment's id space (its `valid` or `test`).

    Returns:
      float32 [R], in `heldout`'s order.
    """
    config, train = experiment.config, experiment.train
    orientation = config.data.orientation
    rows, cols = ((heldout.items, heldout.users) if orientation == "item"
                  else (heldout.users, heldout.items))
    preds_R = predict_entries(config, fetch(params), row_matrix(train, orientation), rows,
                              cols, model=experiment.model)
    fallback_R = coldstart.fallback_values(config.train.cold_start, train, heldout)
    if fallback_R is not None:
        preds_R = np.where(coldstart.cold_mask(train, heldout, orientation), fallback_R,
                           preds_R)
    return np.asarray(preds_R, np.float32)


def fit_blend(preds_MxR, targets_R) -> np.ndarray:
    """Least-squares blend weights: float64 [M+1], the intercept first, then one per member.

    Minimises sum_r (w0 + sum_m w_m preds[m, r] - targets[r])^2 (`numpy.linalg.lstsq`: the
    minimum-norm solution when members are collinear).
    """
    preds_MxR = np.asarray(preds_MxR, np.float64)
    targets_R = np.asarray(targets_R, np.float64).reshape(-1)
    if preds_MxR.ndim != 2 or preds_MxR.shape[1] != len(targets_R):
        raise ValueError(f"predictions [M, R] must match targets [R]; got {preds_MxR.shape} "
                         f"and {targets_R.shape}")
    design_RxK = np.concatenate([np.ones((1, len(targets_R))), preds_MxR]).T
    weights, *_ = np.linalg.lstsq(design_RxK, targets_R, rcond=None)
    return weights


def apply_blend(weights, preds_MxR) -> np.ndarray:
    """float64 [R]: weights[0] + sum_m weights[1 + m] * preds_MxR[m]."""
    weights = np.asarray(weights, np.float64)
    return weights[0] + weights[1:] @ np.asarray(preds_MxR, np.float64)


@dataclasses.dataclass
class EnsembleResult:
    summary: dict                  # ensemble.json: members, "mean", "blend", counts
    runs: list[TrainResult]        # each member's run, in member order
    weights: np.ndarray            # float64 [M+1], fit on validation (`fit_blend`)
    valid_preds_MxV: np.ndarray    # each member's selected params on validation
    test_preds_MxT: np.ndarray     # each member's final params (retrained, if so) on test
    valid_targets_V: np.ndarray
    test_targets_T: np.ndarray
    test_blend_T: np.ndarray       # the fitted blend's test predictions (the rule's at cold)


NETWORK_NAMES = {"kernel": "kernel AutoRec", "glocal": "GLocal-K"}


def member_label(config: Config) -> str:
    """'I-AutoRec seed 0' (item orientation) or 'U-AutoRec seed 0'; another built-in
    network is named: 'GLocal-K (I) seed 0', 'kernel AutoRec (U) seed 1'."""
    side, network = "I" if config.data.orientation == "item" else "U", config.model.network
    if network in NETWORK_NAMES:
        return f"{NETWORK_NAMES[network]} ({side}) seed {config.seed}"
    return f"{side}-AutoRec seed {config.seed}"


def check_members(configs: Sequence[Config], labels: Sequence[str]) -> None:
    """Refuses members that could not be blended honestly.

    Raises:
      ConfigError: no member; a member on row parts (`data.parts`) or one that does not
        select on validation; data settings
        or a split seed (data.split_seed, else seed) unlike member 0's, so another split;
        another cold-start rule. The message names the member and the field.
    """
    if not configs or len(labels) != len(configs):
        raise ConfigError(f"an ensemble needs members, one label each; got {len(configs)} "
                          f"configs and {len(labels)} labels")
    first = configs[0]
    for index, (label, config) in enumerate(zip(labels, configs)):
        name = f"member {index} ({label})"
        if config.data.parts:
            raise ConfigError(f"{name} trains on data.parts; an ensemble predicts from the "
                              "whole split in one process: train its members without --parts")
        if not config.selects_on_validation:
            raise ConfigError(
                f"{name} does not select on validation (train.early_stopping 0, train.select "
                "'last'): blend weights are fit on the selected params' validation "
                "predictions; pass e.g. --valid-ratio 0.1 --early-stopping 10")
        for field in dataclasses.fields(DataConfig):
            if field.name == "orientation":
                continue
            mine, theirs = getattr(config.data, field.name), getattr(first.data, field.name)
            if field.name == "split_seed":  # the seed the split is drawn with
                mine, theirs = config.split_seed, first.split_seed
            if mine != theirs:
                raise ConfigError(
                    f"{name}: data.{field.name} is {mine!r} but member 0's is {theirs!r}; an "
                    "ensemble's members share one split (its data settings and split seed: "
                    "data.split_seed, else seed)")
        if config.train.cold_start == "auto" or config.train.rating_scaling != "none":
            raise ConfigError(f"{name}: train.cold_start 'auto' and train.rating_scaling are "
                              "not supported by ensembles; name a rule (e.g. item-mean)")
        if config.train.cold_start != first.train.cold_start:
            raise ConfigError(f"{name}: train.cold_start is {config.train.cold_start!r} but "
                              f"member 0's is {first.train.cold_start!r}; members share one "
                              "cold-start rule")


def train_ensemble(member_configs: Sequence[Config], *, labels: Sequence[str] | None = None,
                   ratings: Ratings | None = None, cache_dir=None, out_dir=None,
                   train_fn: Callable = train_and_evaluate, progress: bool = False,
                   batch_members: bool = True, **seams) -> EnsembleResult:
    """Trains every member on one split and blends them, the weights fit on validation.

    Validation predictions come from each member's `selected_params` (chosen on, and trained
    without, the validation ratings); test predictions from its `params` with the training
    ratings of the run that scored test (train + validation when `train.retrain`). The
    fitted blend `fit_blend` sees validation only and is applied to test. At cold entries
    (a rule other than "network") every member predicts its rule's value: the ensemble
    keeps their mean there (the rule's value), and the weights are fit on warm entries.

    Args:
      member_configs: the members' configs (`check_members` says which are refused).
      labels: one name per member (default: `member_label`).
      ratings, cache_dir, progress, **seams: passed to `train_fn`.
      out_dir: the ensemble folder (see the module docstring), or None to keep nothing. A
        member folder already there is resumed (a finished member is not trained again).
      train_fn: `train_and_evaluate` or a stand-in with its signature.
      batch_members: with the default `train_fn`, members not yet started whose shapes
        agree (seeds, lr, weight decay, dropout) train together in one compiled step
        (`multi.train_many`: each equals its run alone to float32 round-off); False: one
        at a time.

    Returns:
      EnsembleResult; `summary` is what ensemble.json holds.

    Raises:
      ConfigError: refused members (named), or an unusable `out_dir`.
      DataError: members whose held-out ratings differ, or no warm validation rating.
    """
    configs = list(member_configs)
    labels = [member_label(c) for c in configs] if labels is None else list(labels)
    check_members(configs, labels)
    root = None if out_dir is None else preflight.check_out_dir(out_dir)
    folders = [None if root is None else root / f"member{index}"
               for index in range(len(configs))]
    runs: list = [None] * len(configs)
    if batch_members and train_fn is train_and_evaluate:
        # Members not yet started whose shapes agree train together in one compiled step.
        fresh = [i for i, folder in enumerate(folders) if folder is None or not folder.exists()]
        for group in multi.group_members([configs[i] for i in fresh]):
            if len(group) < 2:
                continue
            chosen = [fresh[i] for i in group]
            log.info("members %s in one compiled step", ", ".join(labels[i] for i in chosen))
            try:
                trained = multi.train_many([configs[i] for i in chosen],
                                           [folders[i] for i in chosen], ratings=ratings,
                                           cache_dir=cache_dir, **seams)
            except multi.MembersDiffer as why:
                log.info("they train one at a time: %s", why)
                continue
            for i, run in zip(chosen, trained):
                runs[i] = run
    for index, (label, config) in enumerate(zip(labels, configs)):
        if runs[index] is not None:
            continue
        folder = folders[index]
        log.info("member %d/%d: %s", index + 1, len(configs), label)
        kwargs = {} if folder is None else {"resume": folder.exists()}
        runs[index] = train_fn(config, folder, ratings=ratings, cache_dir=cache_dir,
                               progress=progress, **kwargs, **seams)
    result = _blend_runs(runs, labels)
    if root is not None:
        reporting.write_json(root / ENSEMBLE_FILE, reporting.finite_or_none(result.summary))
        atomic_write_bytes(root / REPORT_FILE, report_markdown(result.summary).encode())
    return result


def _blend_runs(runs: list[TrainResult], labels: list[str]) -> EnsembleResult:
    valid_exps = [run.experiment for run in runs]
    test_exps = [(run.retrained or run).experiment for run in runs]
    valid = _shared([e.valid for e in valid_exps], "validation", labels)
    test = _shared([e.test for e in test_exps], "test", labels)
    valid_MxV = np.stack([predict_heldout(e, run.selected_params, e.valid)
                          for run, e in zip(runs, valid_exps)])
    test_MxT = np.stack([predict_heldout(e, run.params, e.test)
                         for run, e in zip(runs, test_exps)])
    rule = runs[0].experiment.config.train.cold_start
    valid_cold_V = _cold(rule, [e.train for e in valid_exps], valid)
    test_cold_T = _cold(rule, [e.train for e in test_exps], test)
    if not np.any(~valid_cold_V):
        raise DataError("every validation rating is cold: no rating to fit the blend on")
    weights = fit_blend(valid_MxV[:, ~valid_cold_V], valid.ratings[~valid_cold_V])

    def scores(blend):
        return {"valid_rmse": _rmse(blend(valid_MxV, valid_cold_V), valid.ratings),
                "test_rmse": _rmse(blend(test_MxT, test_cold_T), test.ratings)}

    def fitted(preds_MxR, cold_R):
        # At a cold entry each member predicts its rule's value (one value when they train
        # on the same ratings): their mean keeps it.
        return np.where(cold_R, preds_MxR.mean(axis=0), apply_blend(weights, preds_MxR))

    members = []
    for index, (label, run) in enumerate(zip(labels, runs)):
        config = run.experiment.config
        members.append({
            "label": label, "folder": f"member{index}", "orientation": config.data.orientation,
            "seed": config.seed, "split_seed": config.split_seed,
            "valid_rmse": _rmse(valid_MxV[index], valid.ratings),
            "test_rmse": _rmse(test_MxT[index], test.ratings),
            "best_epoch": run.summary["selection"].get("best_epoch"),
            "retrained": run.retrained is not None, "config": to_dict(config)})
    summary = {
        "members": members,
        "mean": scores(lambda preds, cold: preds.mean(axis=0)),
        "blend": {**scores(fitted),
                  "intercept": float(weights[0]), "weights": weights[1:].tolist(),
                  "fit_on": "validation (warm ratings)"},
        "valid_ratings": len(valid), "test_ratings": len(test),
        "cold_start": {"rule": rule, "valid_cold": int(valid_cold_V.sum()),
                       "test_cold": int(test_cold_T.sum())},
        "split": {"split": runs[0].experiment.config.data.split,
                  "split_seed": runs[0].experiment.config.split_seed}}
    return EnsembleResult(summary=summary, runs=runs, weights=weights,
                          valid_preds_MxV=valid_MxV, test_preds_MxT=test_MxT,
                          valid_targets_V=valid.ratings, test_targets_T=test.ratings,
                          test_blend_T=fitted(test_MxT, test_cold_T))


def format_lines(summary: dict) -> list[str]:
    """The lines `scripts/ensemble.py` prints: one per member, counts, weights, then the
    mean and the fitted blend (the last two lines)."""
    lines = [f"{m['folder']} {m['label']}: valid RMSE {m['valid_rmse']:.4f}  test RMSE "
             f"{m['test_rmse']:.4f}  (best epoch {m['best_epoch']}"
             f"{', retrained' if m['retrained'] else ''})" for m in summary["members"]]
    cold = summary["cold_start"]
    lines.append(f"{summary['test_ratings']} test ratings, {summary['valid_ratings']} "
                 "validation ratings" + (f" ({cold['test_cold']} / {cold['valid_cold']} cold: "
                                         f"cold start {cold['rule']})"
                                         if cold["rule"] != "network" else ""))
    blend, count = summary["blend"], len(summary["members"])
    lines.append("blend weights: intercept " + f"{blend['intercept']:+.4f}, " + ", ".join(
        f"{m['label']} {w:+.4f}" for m, w in zip(summary["members"], blend["weights"])))
    lines.append(f"mean of {count}: test RMSE {summary['mean']['test_rmse']:.4f}  "
                 f"(valid RMSE {summary['mean']['valid_rmse']:.4f})")
    lines.append(f"fitted blend of {count} (weights fit on validation): test RMSE "
                 f"{blend['test_rmse']:.4f}  (valid RMSE {blend['valid_rmse']:.4f})")
    return lines


def report_markdown(summary: dict) -> str:
    """report.md: a table of the members and of the two blends."""
    members, blend, mean = summary["members"], summary["blend"], summary["mean"]
    count = len(members)
    rows = [(m["folder"], m["label"], m["orientation"], str(m["seed"]), m["valid_rmse"],
             m["test_rmse"], f"{w:+.4f}") for m, w in zip(members, blend["weights"])]
    rows.append(("", f"mean of {count}", "", "", mean["valid_rmse"], mean["test_rmse"],
                 f"{1 / count:.4f} each"))
    rows.append(("", f"fitted blend of {count}", "", "", blend["valid_rmse"],
                 blend["test_rmse"], f"intercept {blend['intercept']:+.4f}"))
    lines = ["| folder | member | orientation | seed | valid RMSE | test RMSE | weight |",
             "|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(f"{c:.4f}" if isinstance(c, float) else c for c in row) + " |"
              for row in rows]
    return (f"# Ensemble of {count} ({summary['split']['split']} split, split seed "
            f"{summary['split']['split_seed']})\n\n" + "\n".join(lines) + "\n\n"
            f"Blend weights fit by least squares on the {summary['valid_ratings']} validation "
            f"ratings only; scored on {summary['test_ratings']} test ratings.\n")


def _shared(sets: list[Ratings], what: str, labels: list[str]) -> Ratings:
    """The members' one held-out set (DataError naming a member whose set differs)."""
    first = sets[0]
    for label, other in zip(labels[1:], sets[1:]):
        same = len(other) == len(first) and all(
            np.array_equal(getattr(other, name), getattr(first, name))
            for name in ("users", "items", "ratings", "user_ids", "item_ids"))
        if not same:
            raise DataError(f"member {label}'s {what} ratings differ from member 0's: the "
                            "members must share one split")
    return first


def _cold(rule: str, trains: list[Ratings], heldout: Ratings) -> np.ndarray:
    """bool [R]: entries where some member used the cold-start rule (none for "network")."""
    if rule == "network":
        return np.zeros(len(heldout), bool)
    return np.any([coldstart.cold_mask(train, heldout) for train in trains], axis=0)


def _rmse(preds_R, targets_R) -> float:
    err_R = np.asarray(preds_R, np.float64) - np.asarray(targets_R, np.float64)
    return float(np.sqrt(np.mean(err_R * err_R))) if len(err_R) else float("nan")
