"""The tuner (autorec_jax/studies/tune.py): honest (test noise changes no choice),
resumable, pruning, budgeted, and its config runs again through `--config`."""

import dataclasses
import json

import numpy as np
import optuna
import pytest

from autorec_jax import config as config_lib
from autorec_jax.config import replace
from autorec_jax.data import splits
from autorec_jax.errors import ConfigError
from autorec_jax.run import cli
from autorec_jax.studies import tune as tune_lib
from synthetic import random_ratings

SPACE = {"lr": ("log", 3e-3, 3e-2), "dropout": ("float", 0.0, 0.3)}


def structured_ratings(seed=0):
    """Rank-2 ratings in 1..5 (something to learn, so a good lr beats a hopeless one)."""
    base = random_ratings(60, 40, 0.25, seed=seed, timestamps=False)
    rng = np.random.default_rng(seed)
    u, v = rng.normal(size=(base.num_users, 2)), rng.normal(size=(base.num_items, 2))
    values = np.clip(np.round(3 + 0.9 * np.sum(u[base.users] * v[base.items], 1)), 1, 5)
    return dataclasses.replace(base, ratings=values.astype(np.float32))


RATINGS = structured_ratings()
BASE = replace(config_lib.tiny(), epochs=5, batch_size=0, parallel="jit", allow_cpu=True,
               valid_ratio=0.2, early_stopping=3)


def with_test_noise(ratings, config, seed):
    """`ratings` with the targets of the split's test part replaced by noise."""
    parts = splits.make_split(ratings, config.data.split, seed=config.split_seed,
                              test_ratio=config.data.test_ratio,
                              valid_ratio=config.data.valid_ratio)
    values = ratings.ratings.copy()
    values[parts.test] = np.random.default_rng(seed).uniform(1, 5, len(parts.test))
    return dataclasses.replace(ratings, ratings=values.astype(np.float32))


def table(result):
    return [(row["number"], row["state"], row["params"], row["value"], row["best_epoch"])
            for row in result.record["trials"]]


@pytest.mark.full
def test_test_targets_replaced_by_noise_change_no_choice(tmp_path):
    results = [tune_lib.tune(BASE, tmp_path / f"noise{seed}", trials=3, space=SPACE,
                             ratings=with_test_noise(RATINGS, BASE, seed))
               for seed in (1, 2)]
    assert table(results[0]) == table(results[1])
    assert results[0].config == results[1].config
    assert (json.loads((tmp_path / "noise1" / "best_config.json").read_text())
            == json.loads((tmp_path / "noise2" / "best_config.json").read_text()))
    # The noise reached the test set (so the equalities above are not vacuous)...
    assert abs(results[0].test_rmse - results[1].test_rmse) > 1e-3
    # ...and the trials score validation alone: the final run, trained again by
    # train_and_evaluate, selects the same epoch with the same validation RMSE.
    for result in results:
        winner = result.record["winner"]
        assert result.final.summary["selection"]["best_epoch"] == winner["best_epoch"]
        assert result.record["final_valid_rmse"] == pytest.approx(winner["valid_rmse"],
                                                                  rel=1e-5)
        assert result.final.retrained is not None   # test scored by the retrained model


@pytest.mark.full
def test_a_killed_tuner_resumes_without_repeating_a_trial(tmp_path, monkeypatch):
    real, calls = tune_lib.train_trial, []

    def killed_in_third_trial(config, trial=None, **kwargs):
        calls.append(trial.number)
        if len(calls) == 3:   # the kill: the trial is asked (running in study.db), never told
            raise KeyboardInterrupt
        return real(config, trial, **kwargs)

    monkeypatch.setattr(tune_lib, "train_trial", killed_in_third_trial)
    with pytest.raises(KeyboardInterrupt):
        tune_lib.tune(BASE, tmp_path, trials=4, space=SPACE, ratings=RATINGS,
                      pruner=optuna.pruners.NopPruner())
    monkeypatch.setattr(tune_lib, "train_trial", real)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    left = optuna.load_study(study_name="tune", storage=storage).trials
    assert [t.state.name for t in left] == ["COMPLETE", "COMPLETE", "RUNNING"]
    result = tune_lib.tune(BASE, tmp_path, trials=4, space=SPACE, ratings=RATINGS,
                           pruner=optuna.pruners.NopPruner())
    rows = result.record["trials"]
    finished = [r for r in rows if r["state"] in ("complete", "pruned")]
    assert len(finished) == 4 == result.record["finished_trials"]
    assert [r["state"] for r in rows] == ["complete", "complete", "fail", "complete",
                                          "complete"]
    # The killed trial's parameters were tried again (once), and no other trial repeats.
    assert rows[3]["params"] == rows[2]["params"] and rows[3]["retry_of"] == 2
    keys = [tuple(sorted(r["params"].items())) for r in finished]
    assert len(set(keys)) == len(keys)
    # The first two trials are the killed run's, untouched.
    assert [t.params for t in left[:2]] == [r["params"] for r in rows[:2]]


@pytest.mark.full
def test_the_written_config_runs_again_through_train_py(tmp_path):
    result = tune_lib.tune(BASE, tmp_path, trials=1, space=SPACE, ratings=RATINGS)
    path = tmp_path / "best_config.json"
    config, _ = cli.parse_run_args("t", ["--config", str(path), "--compilation-cache", "off"])
    assert config == result.config
    assert config.train.retrain and config.selects_on_validation
    assert config.optim.lr == result.params["lr"] == result.record["winner"]["params"]["lr"]
    # Flags after it override its fields.
    config, _ = cli.parse_run_args("t", ["--config", str(path), "--epochs", "7",
                                         "--compilation-cache", "off"])
    assert config == replace(result.config, epochs=7)
    # Trained again (train.py's call), it gives the tuner's test RMSE.
    from autorec_jax.run.experiment import train_and_evaluate
    again = train_and_evaluate(config_lib.config_from_dict(json.loads(path.read_text())),
                               ratings=RATINGS)
    assert again.summary["test_rmse"] == pytest.approx(result.test_rmse, rel=1e-5)


def test_config_file_errors_name_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    for text in ("{not json", '{"model": {"hiden": [5]}}', "[1, 2]",
                 '{"optim": {"lr": -1}}'):
        bad.write_text(text)
        with pytest.raises(SystemExit) as exit_:
            cli.parse_run_args("t", ["--config", str(bad), "--compilation-cache", "off"])
        assert exit_.value.code == 2
        line = capsys.readouterr().err.strip()
        assert str(bad) in line and "\n" not in line
    with pytest.raises(ConfigError, match="not both"):
        cli.base_config("tiny", str(bad))


def test_config_file_round_trips_every_preset(tmp_path):
    for name, preset in config_lib.PRESETS.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(config_lib.to_dict(preset())))
        assert cli.config_file(path) == preset()


@pytest.mark.full
def test_pruning_stops_a_hopeless_trial(tmp_path):
    good = [{"lr": 0.02, "dropout": 0.0}, {"lr": 0.015, "dropout": 0.1},
            {"lr": 0.025, "dropout": 0.05}]
    hopeless = {"lr": 1e-7, "dropout": 0.0}  # outside the space: the enqueued value is kept
    result = tune_lib.tune(replace(BASE, early_stopping=10), tmp_path, trials=4,
                           space={"lr": ("log", 1e-7, 3e-2), "dropout": ("float", 0, 0.3)},
                           ratings=RATINGS, enqueue=good + [hopeless],
                           pruner=optuna.pruners.MedianPruner(n_startup_trials=3,
                                                              n_warmup_steps=1))
    rows = result.record["trials"]
    assert [r["params"]["lr"] for r in rows] == [0.02, 0.015, 0.025, 1e-7]
    assert [r["state"] for r in rows] == ["complete"] * 3 + ["pruned"]
    assert rows[3]["epochs"] < BASE.train.epochs     # stopped before its last epoch
    assert all(r["epochs"] == BASE.train.epochs for r in rows[:3])
    assert result.params["lr"] != 1e-7


@pytest.mark.full
def test_the_budget_stops_the_search(tmp_path):
    result = tune_lib.tune(BASE, tmp_path, budget=1e-3, space=SPACE, ratings=RATINGS)
    assert result.record["stopped_by"] == "budget"
    # The first trial always finishes (there must be a winner); none starts after it.
    assert [r["state"] for r in result.record["trials"]] == ["complete"]
    # The budget counts over runs of the study: spent already, it starts no trial...
    spent = result.record["search_seconds"]
    again = tune_lib.tune(BASE, tmp_path, budget=spent, trials=5, space=SPACE,
                          ratings=RATINGS)
    assert len(again.record["trials"]) == 1 and again.record["stopped_by"] == "budget"
    # ...and with more of it the study goes on.
    more = tune_lib.tune(BASE, tmp_path, budget=100 * spent + 60, trials=2, space=SPACE,
                         ratings=RATINGS)
    assert len(more.record["trials"]) == 2 and more.record["stopped_by"] == "trials"


def test_budget_parsing_and_bad_input():
    assert [tune_lib.parse_budget(t) for t in ("90", "90s", "30m", "2h", "1.5h")] == [
        90, 90, 1800, 7200, 5400]
    for bad in ("", "30x", "-5m", "0", "m"):
        with pytest.raises(ConfigError, match="budget"):
            tune_lib.parse_budget(bad)
    with pytest.raises(ConfigError, match="trials or a time budget"):
        tune_lib.tune(BASE, "unused", space=SPACE)
    with pytest.raises(ConfigError, match="unknown config field 'lrr'"):
        tune_lib.check_space({"lrr": ("log", 1e-3, 1e-2)})
    with pytest.raises(ConfigError, match="'lr' must be"):
        tune_lib.check_space({"lr": ("log", 1e-2, 1e-3)})


def test_trial_config_maps_width_and_depth_and_selects_on_validation():
    config = tune_lib.trial_config(config_lib.tiny(), {"width": 48, "depth": 2, "lr": 0.01,
                                                       "batch_size": 0})
    assert config.model.hidden == (48, 48) and config.optim.lr == 0.01
    assert config.train.batch_size == 0 and config.data.valid_ratio == tune_lib.VALID_RATIO
    assert config.train.early_stopping == tune_lib.PATIENCE and not config.train.retrain
    assert tune_lib.final_config(config_lib.tiny(), {"lr": 0.01}).train.retrain
    # The default space is a valid one, each field a config field.
    tune_lib.check_space(tune_lib.SPACE)


@pytest.mark.full
def test_trials_sharing_shapes_train_together_as_they_would_alone(tmp_path):
    result = tune_lib.tune(BASE, tmp_path, trials=2, models=2, space=SPACE, ratings=RATINGS,
                           pruner=optuna.pruners.NopPruner())
    rows = result.record["trials"]
    assert [r["state"] for r in rows] == ["complete", "complete"]
    members = [t.user_attrs.get("members") for t in result.study.trials]
    assert members == [2, 2]        # one train_many group of both trials
    for row in rows:                # each trial's value: the same config trained alone
        alone = tune_lib.train_trial(tune_lib.trial_config(BASE, row["params"]),
                                     ratings=RATINGS)
        assert row["value"] == pytest.approx(alone["value"], rel=1e-4)
        assert row["best_epoch"] == alone["best_epoch"]


@pytest.mark.full
def test_a_trial_that_cannot_run_is_pruned_and_the_search_goes_on(tmp_path):
    space = {**SPACE, "batch_size": ("choice", [0, 500])}   # 500 > the 40 training rows
    result = tune_lib.tune(BASE, tmp_path, trials=2, space=space, ratings=RATINGS,
                           enqueue=[{"lr": 0.01, "dropout": 0.0, "batch_size": 500},
                                    {"lr": 0.01, "dropout": 0.0, "batch_size": 0}])
    rows = result.record["trials"]
    assert [(r["state"], r["outcome"]) for r in rows] == [("pruned", "invalid"),
                                                          ("complete", None)]
    assert "batch_size" in rows[0]["error"] and result.config.train.batch_size == 0


class _Reports:
    """A stand-in for an Optuna trial that records what the tuner reports."""

    number = 0

    def __init__(self):
        self.steps = []

    def report(self, value, step):
        self.steps.append(step)

    def should_prune(self):
        return False


def test_trials_report_to_the_pruner_at_optimizer_updates_not_epochs():
    # The pruner compares trials at equal steps: at equal epochs a full-batch trial (one
    # update an epoch) would meet minibatch trials many updates ahead and be pruned.
    rows = RATINGS.num_items  # I-AutoRec: a row per item
    for batch in (0, 16):
        config = replace(BASE, batch_size=batch, last_batch="pad", early_stopping=0)
        reports = _Reports()
        record = tune_lib.train_trial(config, reports, ratings=RATINGS)
        per_epoch = 1 if batch == 0 else -(-rows // batch)  # ceil, by hand
        assert record["epochs"] == config.train.epochs
        assert reports.steps == [per_epoch * e for e in range(1, config.train.epochs + 1)]


def test_tune_py_starts_from_the_honest_preset(tmp_path, monkeypatch):
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "scripts" / "tune.py"
    spec = importlib.util.spec_from_file_location("tune_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    seen = []

    def fake_tune(config, out, **kwargs):
        seen.append(config)
        raise ConfigError("stop here")

    monkeypatch.setattr(tune_lib, "tune", fake_tune)
    common = ["--out", str(tmp_path / "t"), "--trials", "1", "--compilation-cache", "off"]
    for extra, preset in (([], config_lib.honest), (["--preset", "d2l"], config_lib.d2l)):
        assert script.main(["ml-100k", *common, *extra]) != 0
        assert seen[-1] == preset()
    assert seen[0].train.epochs == 1500 and seen[0].train.batch_size == 0


def test_the_sampler_draws_two_random_trials_per_field_before_modelling(tmp_path):
    # Told opposite values, two studies of the same seed agree on exactly the random
    # startup trials (2 per field here: 12, not Optuna's 10) and then part.
    space = {f"x{i}": ("float", 0.0, 1.0) for i in range(6)}
    startup = tune_lib.startup_trials(space)
    assert startup == 12 and tune_lib.startup_trials(SPACE) == 10
    drawn = []
    for sign in (1, -1):
        (tmp_path / f"s{sign}").mkdir()
        study = tune_lib._open_study(tmp_path / f"s{sign}", 0, None, startup)
        params = []
        for _ in range(startup + 3):
            trial = study.ask()
            values = tune_lib.suggest(trial, space)
            params.append(values)
            study.tell(trial, sign * values["x0"])
        drawn.append(params)
    assert drawn[0][:startup] == drawn[1][:startup]
    assert drawn[0][startup:] != drawn[1][startup:]
