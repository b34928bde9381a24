"""Settings that carry (issue 16, part 2): rating scaling and the cold-start rule chosen on
validation, each against a second code path or NumPy."""

import dataclasses

import numpy as np
import pytest

from autorec_jax import config as config_lib
from autorec_jax.data import coldstart, scaling
from autorec_jax.data.ratings import Ratings
from autorec_jax.errors import ConfigError
from autorec_jax.run.experiment import train_and_evaluate
from autorec_jax.serve import recommend
from synthetic import random_ratings


def sparse_ratings(seed=0):
    """Sparse enough that the split leaves cold users and items in validation and test."""
    return random_ratings(num_users=60, num_items=50, density=0.03, seed=seed)


def times(ratings: Ratings, factor: float) -> Ratings:
    return dataclasses.replace(ratings, ratings=ratings.ratings * np.float32(factor))


def base_config(**overrides):
    return config_lib.replace(config_lib.tiny(), **{
        "epochs": 3, "valid_ratio": 0.2, "select": "best", "loss": "observed", "ranking": "off",
        **overrides})


def test_config_choices_match_the_data_modules_and_bad_combinations_are_refused():
    assert config_lib.RATING_SCALINGS == scaling.RATING_SCALINGS
    assert config_lib.COLD_START_AUTO == coldstart.AUTO
    with pytest.raises(ConfigError, match="train.cold_start.*--valid-ratio"):
        config_lib.replace(config_lib.tiny(), cold_start="auto")
    with pytest.raises(ConfigError, match="train.rating_scaling.*data.parts"):
        config_lib.replace(config_lib.tiny(), rating_scaling="max", parts="some/folder")
    with pytest.raises(ConfigError, match="train.rating_scaling must be one of none, max"):
        config_lib.replace(config_lib.tiny(), rating_scaling="range")


def test_scaled_run_on_ratings_x20_predicts_20_times_the_original_run():
    ratings = sparse_ratings(1)
    config = base_config(rating_scaling="max", clip_predictions=True, cold_start="item-mean",
                         lr=0.03, epochs=4)
    one = train_and_evaluate(config, ratings=ratings)
    twenty = train_and_evaluate(config, ratings=times(ratings, 20))
    assert one.experiment.data.facts.rating_unit == 5.0
    assert twenty.experiment.data.facts.rating_unit == 100.0
    # the same network on the device: identical params
    for a, b in zip(_leaves(one.params), _leaves(twenty.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for name in ("test", "valid"):
        for key in ("rmse", "mae", "cold_rmse", "warm_rmse"):
            np.testing.assert_allclose(twenty.scores[name][key], 20 * one.scores[name][key],
                                       rtol=1e-5)
        assert twenty.scores[name]["cold_count"] == one.scores[name]["cold_count"] > 0
    np.testing.assert_allclose(twenty.summary["test_rmse"], 20 * one.summary["test_rmse"],
                               rtol=1e-5)
    # served predictions, in rating units, against the evaluator's RMSE by NumPy
    test, train = one.experiment.test, one.experiment.train
    preds = {}
    for run, factor in ((one, 1), (twenty, 20)):
        tr, te = run.experiment.train, run.experiment.test
        pred = recommend.predict_pairs(run.experiment.config, run.params, tr,
                                       tr.user_ids[te.users], tr.item_ids[te.items])
        cold = coldstart.cold_mask(tr, te)
        fallback = coldstart.fallback_values("item-mean", tr, te)
        pred = np.where(cold, fallback, pred)
        np.testing.assert_allclose(np.sqrt(np.mean((pred - te.ratings) ** 2)),
                                   run.scores["test"]["rmse"], rtol=1e-5)
        preds[factor] = pred
    np.testing.assert_allclose(preds[20], 20 * preds[1], rtol=1e-5)
    assert np.all((preds[1] >= train.ratings.min()) & (preds[1] <= train.ratings.max()))
    assert np.std(preds[1]) > 0.2 and 2.0 < np.mean(preds[1]) < 4.0  # a model, not a bound
    assert len(test) == len(twenty.experiment.test)


def _leaves(tree):
    import jax
    return jax.tree.leaves(tree)


def test_choose_rule_picks_the_lowest_validation_cold_rmse_numpy_computes():
    ratings = sparse_ratings(2)
    order = np.random.default_rng(0).permutation(len(ratings))
    train, valid = ratings.take(np.sort(order[:-40])), ratings.take(np.sort(order[-40:]))
    cold = ~(np.isin(valid.users, train.users) & np.isin(valid.items, train.items))
    assert cold.sum() >= 2
    y, mu = valid.ratings[cold].astype(np.float64), train.ratings.astype(np.float64).mean()
    user_mean = np.array([train.ratings[train.users == u].mean() if np.any(train.users == u)
                          else mu for u in valid.users[cold]])
    item_mean = np.array([train.ratings[train.items == i].mean() if np.any(train.items == i)
                          else mu for i in valid.items[cold]])
    expect = {"global-mean": np.sqrt(np.mean((mu - y) ** 2)),
              "user-mean": np.sqrt(np.mean((user_mean - y) ** 2)),
              "item-mean": np.sqrt(np.mean((item_mean - y) ** 2))}
    for network in (0.01, 99.0):  # a network better than every mean, then worse
        choice = coldstart.choose_rule(network, train, valid)
        assert choice["valid_cold_count"] == cold.sum()
        for rule, value in expect.items():
            np.testing.assert_allclose(choice["valid_cold_rmse"][rule], value, rtol=1e-6)
        best = "network" if network < min(expect.values()) else min(expect, key=expect.get)
        assert choice["rule"] == best


def test_auto_run_scores_test_as_the_run_with_the_chosen_rule():
    ratings = sparse_ratings(3)
    auto = train_and_evaluate(base_config(cold_start="auto"), ratings=ratings)
    choice = auto.summary["cold_start_choice"]
    assert choice["valid_cold_count"] > 0
    scores = {r: v for r, v in choice["valid_cold_rmse"].items()}
    assert choice["rule"] == min(scores, key=scores.get)
    assert auto.summary["cold_start"]["rule"] == choice["rule"]
    fixed = train_and_evaluate(base_config(cold_start=choice["rule"]), ratings=ratings)
    for key in ("rmse", "mae", "cold_rmse", "cold_count"):
        np.testing.assert_allclose(auto.scores["test"][key], fixed.scores["test"][key],
                                   rtol=1e-6)
    assert choice["rule"] != "network"  # else the two runs' test scores agree trivially
    assert fixed.scores["test"]["cold_count"] > 0


def test_several_models_and_ensembles_refuse_auto_and_scaling_in_one_line():
    from autorec_jax.run.members import setup_many
    from autorec_jax.studies import ensemble
    for config in (base_config(cold_start="auto"), base_config(rating_scaling="max")):
        with pytest.raises(ConfigError, match="member 0: .*not supported by several-model"):
            setup_many([config, config], ratings=sparse_ratings())
        with pytest.raises(ConfigError, match="not supported by ensembles"):
            ensemble.train_ensemble([config, config], ratings=sparse_ratings())


def test_auto_run_retrains_and_scores_test_with_the_chosen_rule():
    ratings = sparse_ratings(3)
    result = train_and_evaluate(base_config(cold_start="auto", retrain=True), ratings=ratings)
    rule = result.summary["cold_start_choice"]["rule"]
    assert rule != "network"
    retrained = result.retrained.experiment
    assert retrained.config.train.cold_start == rule
    assert result.summary["test_rmse"] == result.retrained.scores["test"]["rmse"]
    train, test = retrained.train, retrained.test  # train + validation, and test
    cold = coldstart.cold_mask(train, test)
    expect = np.sqrt(np.mean((coldstart.fallback_values(rule, train, test)[cold]
                              - test.ratings[cold]) ** 2))
    np.testing.assert_allclose(result.summary["cold_start"]["test_rmse"], expect, rtol=1e-6)
