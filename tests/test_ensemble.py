"""Ensembles: held-out predictions equal the evaluator's, blend weights fit on validation only,
members on one split, and the script."""

import importlib.util
import json
import logging
import subprocess
import sys

import numpy as np
import pytest

import autorec_jax as ar
from autorec_jax.studies import ensemble
from autorec_jax.data import splits
from autorec_jax.data.ratings import Ratings
from autorec_jax.errors import ConfigError
from synthetic import random_ratings, udata_text
from test_selection import with_noisy_test_targets
from test_workflow import REPO, metrics_lines, workflow_config


def member_config(**overrides):
    base = dict(epochs=20, lr=0.05, dropout=0.0, checkpoint_every=0, early_stopping=2,
                split_seed=0, eval_batch_size=8)
    base.update(overrides)
    return workflow_config(**base)


def with_cold_item(ratings, config, count=3):
    """The same split, with `count` test ratings (of distinct users) moved to a new item
    that has no training or validation rating: a cold item."""
    parts = splits.make_split(ratings, config.data.split, seed=config.split_seed,
                              test_ratio=config.data.test_ratio,
                              valid_ratio=config.data.valid_ratio)
    _, first = np.unique(ratings.users[parts.test], return_index=True)
    moved = parts.test[np.sort(first)[:count]]
    items = ratings.item_ids[ratings.items].copy()
    items[moved] = ratings.item_ids.max() + 1
    return Ratings.from_raw(ratings.user_ids[ratings.users], items, ratings.ratings,
                            ratings.timestamps)


def rmse(preds, targets):
    return float(np.sqrt(np.mean((np.asarray(preds, np.float64) - targets) ** 2)))


@pytest.fixture(scope="module")
def ratings():
    return with_cold_item(random_ratings(num_users=40, num_items=36, density=0.3, seed=11),
                          member_config())


# --- predict_heldout -----------------------------------------------------------------------

@pytest.mark.parametrize("overrides", [
    dict(),
    dict(orientation="user", clip_predictions=True),
    dict(cold_start="3"),
    dict(orientation="user", cold_start="item-mean", parallel="sharded"),
], ids=["jit", "user-clipped", "cold-3", "user-item-mean-sharded"])
def test_predict_heldout_rmse_equals_the_runs_test_rmse(ratings, overrides):
    config = member_config(epochs=3, early_stopping=0, valid_ratio=0.0, **overrides)
    result = ar.train_and_evaluate(config, ratings=ratings)
    test = result.experiment.test
    preds = ar.predict_heldout(result.experiment, result.params, test)
    assert preds.dtype == np.float32 and preds.shape == (len(test),)
    assert rmse(preds, test.ratings) == pytest.approx(result.summary["test_rmse"], rel=1e-5)
    assert result.summary["test_cold_count"] == 3
    if config.train.clip_predictions:
        assert preds.max() <= test.ratings.max() and preds.min() >= 1.0
    if config.train.cold_start == "3":
        cold = ar.cold_mask(result.experiment.train, test)
        assert np.all(preds[cold] == 3.0)


# --- fit_blend -----------------------------------------------------------------------------

def test_fit_blend_equals_the_normal_equations():
    rng = np.random.default_rng(0)
    preds_MxR = rng.uniform(1, 5, (3, 50))
    targets_R = 0.3 + preds_MxR.T @ [0.5, 0.2, 0.4] + rng.normal(0, 0.1, 50)
    design_RxK = np.column_stack([np.ones(50), preds_MxR.T])
    expected = np.linalg.solve(design_RxK.T @ design_RxK, design_RxK.T @ targets_R)
    weights = ar.fit_blend(preds_MxR, targets_R)
    np.testing.assert_allclose(weights, expected, rtol=1e-10)
    np.testing.assert_allclose(ar.apply_blend(weights, preds_MxR), design_RxK @ expected)
    # One member: the blend of a member with itself is that member.
    np.testing.assert_allclose(ar.fit_blend(preds_MxR[:1], preds_MxR[0]), [0.0, 1.0],
                               atol=1e-9)
    np.testing.assert_allclose(ar.fit_blend(preds_MxR[:1], 2 * preds_MxR[0] - 1), [-1, 2])
    with pytest.raises(ValueError, match="must match"):
        ar.fit_blend(preds_MxR, targets_R[:-1])


# --- train_ensemble ------------------------------------------------------------------------

# Two I-AutoRec seeds and a U-AutoRec, early stopping, retrained on train + validation, the
# cold-start rule "3" on data with a cold item.
MEMBERS = [dict(seed=0), dict(seed=1), dict(seed=0, orientation="user")]


def members(**overrides):
    return [member_config(cold_start="3", retrain=True, **m, **overrides) for m in MEMBERS]


@pytest.fixture(scope="module")
def ens(tmp_path_factory, ratings):
    out = tmp_path_factory.mktemp("ens")
    return out, ar.train_ensemble(members(), ratings=ratings, out_dir=out)


def test_members_share_one_split_and_report_their_runs_scores(ens):
    _, result = ens
    orientations = [run.experiment.config.data.orientation for run in result.runs]
    assert orientations == ["item", "item", "user"]
    for what in ("valid", "test"):
        first = getattr(result.runs[0].experiment, what)
        for run in result.runs[1:]:
            for name in ("users", "items", "ratings"):
                np.testing.assert_array_equal(getattr(run.experiment, what).__dict__[name],
                                              first.__dict__[name])
    for row, run in zip(result.summary["members"], result.runs):
        assert row["valid_rmse"] == pytest.approx(run.summary["valid_rmse"], rel=1e-5)
        assert row["test_rmse"] == pytest.approx(run.summary["test_rmse"], rel=1e-5)
        assert row["best_epoch"] == run.summary["selection"]["best_epoch"]
    assert result.summary["test_ratings"] == len(result.test_targets_T) == len(
        result.runs[0].experiment.test)
    mean = result.summary["mean"]
    assert mean["test_rmse"] == pytest.approx(rmse(result.test_preds_MxT.mean(0),
                                                   result.test_targets_T))


def test_members_that_share_shapes_trained_together_and_the_user_member_alone(ens):
    _, result = ens
    # The two I-AutoRec members shared one compiled step (and so did their retraining);
    # the U-AutoRec member has another row width and trained alone.
    assert [run.summary.get("members", {}).get("count") for run in result.runs] == [2, 2, None]
    assert [run.retrained.summary.get("members", {}).get("count")
            for run in result.runs] == [2, 2, None]


def test_valid_preds_come_from_the_selected_params_and_test_preds_from_the_retrained(ens):
    _, result = ens
    for index, run in enumerate(result.runs):
        exp = run.experiment
        assert run.retrained is not None
        np.testing.assert_array_equal(result.valid_preds_MxV[index], ar.predict_heldout(
            exp, run.selected_params, exp.valid))
        assert not np.allclose(result.valid_preds_MxV[index],
                               ar.predict_heldout(exp, run.params, exp.valid))
        np.testing.assert_array_equal(result.test_preds_MxT[index], ar.predict_heldout(
            run.retrained.experiment, run.params, exp.test))
        assert len(run.retrained.experiment.train) == len(exp.train) + len(exp.valid)


def test_cold_entries_keep_the_rule_and_weights_are_fit_on_warm_validation(ens):
    _, result = ens
    summary = result.summary
    assert summary["cold_start"] == {"rule": "3", "valid_cold": 0, "test_cold": 3}
    cold = ar.cold_mask(result.runs[0].experiment.train, result.runs[0].experiment.test)
    assert np.all(result.test_preds_MxT[:, cold] == 3.0)
    assert np.all(result.test_blend_T[cold] == 3.0)
    np.testing.assert_allclose(result.test_blend_T[~cold], ar.apply_blend(
        result.weights, result.test_preds_MxT[:, ~cold]))
    assert summary["blend"]["test_rmse"] == pytest.approx(rmse(result.test_blend_T,
                                                               result.test_targets_T))
    np.testing.assert_array_equal(result.weights, ar.fit_blend(result.valid_preds_MxV,
                                                               result.valid_targets_V))
    assert summary["blend"]["valid_rmse"] <= summary["mean"]["valid_rmse"] + 1e-12


def test_noisy_test_targets_change_no_weight_or_selection_only_the_test_rmse(ens, ratings):
    _, clean = ens
    noisy = ar.train_ensemble(members(), ratings=with_noisy_test_targets(
        members()[0], ratings))
    np.testing.assert_array_equal(noisy.weights, clean.weights)
    np.testing.assert_array_equal(noisy.valid_preds_MxV, clean.valid_preds_MxV)
    np.testing.assert_array_equal(noisy.test_preds_MxT, clean.test_preds_MxT)
    for a, b in zip(noisy.summary["members"], clean.summary["members"]):
        assert a["best_epoch"] == b["best_epoch"] and a["valid_rmse"] == b["valid_rmse"]
        assert a["test_rmse"] != b["test_rmse"]
    for key in ("mean", "blend"):
        assert noisy.summary[key]["valid_rmse"] == clean.summary[key]["valid_rmse"]
        assert noisy.summary[key]["test_rmse"] != clean.summary[key]["test_rmse"]


def test_the_ensemble_folder_is_written_and_a_rerun_trains_nothing(ens, ratings):
    out, result = ens
    saved = json.loads((out / "ensemble.json").read_text())
    assert saved["blend"]["weights"] == pytest.approx(result.weights[1:].tolist())
    assert [m["folder"] for m in saved["members"]] == ["member0", "member1", "member2"]
    report = (out / "report.md").read_text()
    assert "fitted blend of 3" in report and "U-AutoRec seed 0" in report
    epochs = [len(metrics_lines(out / f"member{i}")) for i in range(3)]
    again = ar.train_ensemble(members(), ratings=ratings, out_dir=out)
    assert [len(metrics_lines(out / f"member{i}")) for i in range(3)] == epochs
    assert json.loads((out / "ensemble.json").read_text()) == saved
    np.testing.assert_array_equal(again.weights, result.weights)


def never_called(*args, **kwargs):
    raise AssertionError("a refused ensemble must train nothing")


@pytest.mark.parametrize("configs, message", [
    ([member_config(), member_config(seed=1, split_seed=None)],
     r"member 1 \(I-AutoRec seed 1\): data.split_seed is 1 but member 0's is 0"),
    ([member_config(), member_config(test_ratio=0.2, orientation="user")],
     r"member 1 \(U-AutoRec seed 0\): data.test_ratio"),
    ([member_config(), member_config(early_stopping=0, seed=2)],
     r"member 1 \(I-AutoRec seed 2\) does not select on validation"),
    ([member_config(), member_config(cold_start="3")], "member 1 .*train.cold_start"),
    ([], "an ensemble needs members"),
    ([member_config(parts="p8"), member_config()],
     r"member 0 \(I-AutoRec seed 0\) trains on data.parts"),
], ids=["split-seed", "test-ratio", "no-selection", "cold-rule", "empty", "parts"])
def test_members_on_other_splits_or_without_selection_are_refused(configs, message):
    with pytest.raises(ConfigError, match=message):
        ar.train_ensemble(configs, train_fn=never_called)


# --- the script ----------------------------------------------------------------------------

CLI = ["--preset", "tiny", "--hidden", "8", "--batch-size", "8", "--parallel", "jit",
       "--quiet", "--epochs", "4", "--lr", "0.05"]


def script(*args):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "ensemble.py"), *args],
                          capture_output=True, text=True)


def test_ensemble_script_end_to_end(tmp_path, ratings):
    data = tmp_path / "ratings.tsv"
    data.write_text(udata_text(ratings))
    out = script(*CLI, "--ratings", str(data), "--seeds", "0-1", "--user-seeds", "3",
                 "--out", str(tmp_path / "ens"))
    assert out.returncode == 0, out.stderr
    saved = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    lines = out.stdout.splitlines()
    assert lines == ensemble.format_lines(saved)
    assert lines[0].startswith("member0 I-AutoRec seed 0: valid RMSE")
    assert lines[2].startswith("member2 U-AutoRec seed 3: valid RMSE")
    assert lines[-2] == (f"mean of 3: test RMSE {saved['mean']['test_rmse']:.4f}  "
                         f"(valid RMSE {saved['mean']['valid_rmse']:.4f})")
    assert lines[-1].startswith("fitted blend of 3 (weights fit on validation): test RMSE "
                                f"{saved['blend']['test_rmse']:.4f}")
    configs = [m["config"] for m in saved["members"]]
    # The default selection, and one split: the base config's split seed (its seed, 0).
    assert {(c["data"]["valid_ratio"], c["train"]["early_stopping"]) for c in configs} == {
        (0.1, 10)}
    assert [(c["data"]["orientation"], c["seed"], c["data"]["split_seed"]) for c in configs] \
        == [("item", 0, 0), ("item", 1, 0), ("user", 3, 0)]


def test_ensemble_script_members_share_the_flags_split_seed_and_default_selection(tmp_path):
    spec = importlib.util.spec_from_file_location("ensemble_script",
                                                  REPO / "scripts" / "ensemble.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    logger = logging.getLogger("autorec_jax")
    level = logger.level  # parse_run_args sets it (--quiet); other tests read the log
    try:
        base, args = module.parse_run_args(
            "", [*CLI, "--out", str(tmp_path), "--seed", "4", "--members", "--hidden 6 --seed 2",
                 "--orientation user --select best --valid-ratio 0.2", "--split-seed 1 "],
            extra=module.EXTRA)
    finally:
        logger.setLevel(level)
    configs = module.member_configs(base, args)
    # Flags outside --members apply to each member; a member without --split-seed gets the
    # base config's (here its seed, 4); one that selects nothing gets the default selection.
    assert [(c.model.hidden, c.data.orientation, c.seed, c.split_seed, c.data.valid_ratio,
             c.train.early_stopping, c.train.select) for c in configs] == [
        ((6,), "item", 2, 4, 0.1, 10, "last"), ((8,), "user", 4, 4, 0.2, 0, "best"),
        ((8,), "item", 4, 1, 0.1, 10, "last")]


@pytest.mark.parametrize("args, message", [
    (["--out", "{out}", "--seeds", "0-x"], "--seeds expects distinct seeds"),
    (["--out", "{out}", "--seeds", "0-1", "--members", "--hidden 4"],
     "--members excludes --seeds"),
    (["--out", "{out}", "--members", "--bogus 1"], "--members 0: unknown flags --bogus 1"),
    (["--out", "{out}", "--members", "--seed 1 ", "--split-seed 2 "],
     "data.split_seed is 2 but member 0's"),
    (["--seeds", "0-1"], "give --out"),
], ids=["bad-seeds", "both", "unknown-flag", "other-split", "no-out"])
def test_ensemble_script_exits_2_with_one_line_on_bad_input(tmp_path, args, message):
    out = script(*CLI, *[a.replace("{out}", str(tmp_path / "ens")) for a in args])
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.splitlines()) == 1 and message in out.stderr
    assert out.stderr.startswith("ensemble.py: error:")
    assert not (tmp_path / "ens" / "member0").exists()
