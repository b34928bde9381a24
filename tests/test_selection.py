"""Selection on validation only: best-epoch pick, early stopping, retraining on train +
validation, and the guard that no selection reads the test split."""

import dataclasses

import jax
import numpy as np
import pytest

import autorec_jax as ar
from autorec_jax.serve.load import load_run
from autorec_jax.data import splits
from autorec_jax.errors import ConfigError
from synthetic import random_ratings
from test_workflow import metrics_lines, workflow_config


@pytest.fixture(scope="module")
def ratings():
    return random_ratings(num_users=40, num_items=36, density=0.3, seed=11)


def selection_config(**overrides):
    base = dict(epochs=14, lr=0.05, dropout=0.0, checkpoint_every=0)
    base.update(overrides)
    return workflow_config(**base)


def with_noisy_test_targets(config, ratings, seed=99):
    """The same ratings with every test rating replaced by a random rating (same split)."""
    parts = splits.make_split(ratings, config.data.split, seed=config.split_seed,
                              test_ratio=config.data.test_ratio,
                              valid_ratio=config.data.valid_ratio)
    noisy = ratings.ratings.copy()
    noisy[parts.test] = np.random.default_rng(seed).integers(1, 6, len(parts.test))
    assert not np.array_equal(noisy, ratings.ratings)
    return dataclasses.replace(ratings, ratings=noisy)


def test_select_best_keeps_the_best_validation_epoch_of_the_whole_run(tmp_path, ratings):
    result = ar.train_and_evaluate(selection_config(select="best"), tmp_path, ratings=ratings)
    valid = [r["valid_rmse"] for r in metrics_lines(tmp_path)]
    assert len(valid) == 14  # no early stop
    selection = result.summary["selection"]
    assert selection["best_epoch"] == int(np.argmin(valid)) + 1 < 14
    assert not selection["stopped_early"]
    assert result.summary["valid_rmse"] == pytest.approx(min(valid), abs=1e-6)


def test_retrain_trains_on_train_plus_validation_for_the_selected_epochs(tmp_path, ratings):
    config = selection_config(select="best", retrain=True)
    result = ar.train_and_evaluate(config, tmp_path, ratings=ratings)
    best = result.summary["selection"]["best_epoch"]
    retrain = result.summary["selection"]["retrain"]
    summary = result.summary["data"]
    assert retrain["epochs"] == best
    assert retrain["train_ratings"] == summary["train_ratings"] + summary["valid_ratings"]
    # A second path: the same split without a carve-out, trained for `best` epochs.
    direct = ar.train_and_evaluate(ar.replace(config, valid_ratio=0.0, select="last",
                                              retrain=False, epochs=best), ratings=ratings)
    assert result.summary["test_rmse"] == pytest.approx(direct.summary["test_rmse"], abs=1e-6)
    # The saved model is the retrained one.
    run = load_run(tmp_path)
    for saved, expected in zip(jax.tree.leaves(run.params),
                               jax.tree.leaves(direct.state.params)):
        np.testing.assert_allclose(np.asarray(saved), np.asarray(expected), atol=1e-6)
    assert (tmp_path / "retrain" / "summary.json").exists()


@pytest.mark.parametrize("overrides", [
    dict(early_stopping=2, epochs=40),
    dict(select="best"),
    dict(select="best", retrain=True),
], ids=["early-stopping", "best-epoch", "best-epoch-retrain"])
def test_noisy_test_targets_leave_every_selection_unchanged(ratings, overrides):
    config = selection_config(**overrides)
    clean = ar.train_and_evaluate(config, ratings=ratings)
    noisy = ar.train_and_evaluate(config, ratings=with_noisy_test_targets(config, ratings))
    for key in ("train_loss", "valid_rmse"):
        assert [r[key] for r in clean.history] == [r[key] for r in noisy.history]
    assert clean.summary["selection"] == noisy.summary["selection"]
    assert clean.summary["valid_rmse"] == noisy.summary["valid_rmse"]
    for a, b in zip(jax.tree.leaves(clean.state.params), jax.tree.leaves(noisy.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert abs(clean.summary["test_rmse"] - noisy.summary["test_rmse"]) > 1e-3


def test_selection_needs_a_validation_split_and_retrain_needs_a_selection():
    with pytest.raises(ConfigError, match="train.select"):
        ar.replace(ar.tiny(), select="best")
    with pytest.raises(ConfigError, match="train.retrain"):
        ar.replace(ar.tiny(), valid_ratio=0.1, retrain=True)
    with pytest.raises(ConfigError, match="train.select"):
        ar.replace(ar.tiny(), select="first")
    ar.replace(ar.tiny(), valid_ratio=0.1, early_stopping=3, retrain=True)  # accepted


def test_best_params_never_alias_the_donated_state(tmp_path, ratings, monkeypatch):
    """A selection that keeps the params it started from (no epoch beats them) must find
    them intact at the end: the run's initial best_params may not share the state's buffers,
    which the next epoch donates (deletes)."""
    from autorec_jax.run import experiment as experiment_lib

    def keep_the_initial_params(loop, params, best_params, epoch, value, patience,
                                metric="valid_rmse"):
        if loop["best"] is None:
            loop.update(best={"epoch": epoch, metric: value}, bad_epochs=0)
        return best_params, False

    config = selection_config(select="best", epochs=3)
    _, initial = ar.setup(config, ratings)
    initial_params = jax.device_get(initial.params)
    monkeypatch.setattr(experiment_lib.policies, "early_stopping_step",
                        keep_the_initial_params)
    result = ar.train_and_evaluate(config, tmp_path, ratings=ratings)
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(result.selected_params))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(result.selected_params),
                 initial_params)
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()),
                         jax.device_get(result.state.params), initial_params)
    assert max(jax.tree.leaves(moved)) > 1e-3  # the state itself did train
