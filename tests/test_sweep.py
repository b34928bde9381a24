"""Grids of runs: rows equal single runs, resume, selection by validation only, reports."""

import json
import re
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import autorec_jax as ar
from autorec_jax.studies import sweep, sweep_report
from autorec_jax.errors import ConfigError, TrainingDivergedError
from synthetic import random_ratings, udata_text

REPO = Path(__file__).resolve().parent.parent
BASE = ar.replace(ar.tiny(), valid_ratio=0.2, early_stopping=2, epochs=6, parallel="jit",
                  hidden=(8,), batch_size=8, last_batch="pad")  # one compiled epoch shape
GRID = [{"hidden": (4,)}, {"hidden": (8,)}, {"hidden": (16,)}]


@pytest.fixture(scope="module")
def ratings():
    return random_ratings(num_users=40, num_items=36, density=0.3, seed=11)


def fake_train(fail_after=None, diverge=()):
    """A train_fn without training: valid falls with width, test rises (they disagree)."""
    calls = []

    def train_fn(config, out_dir, *, ratings=None):
        if fail_after is not None and len(calls) >= fail_after:
            raise KeyboardInterrupt
        calls.append((config.model.hidden, config.seed))
        width = config.model.hidden[0]
        if (width, config.seed) in diverge:
            raise TrainingDivergedError("training diverged: non-finite training loss")
        summary = {"valid_rmse": 1.0 + 1.0 / width + 0.001 * config.seed,
                   "test_rmse": 0.5 + 0.01 * width, "selection": {"best_epoch": 3},
                   "epochs_run": 5, "train_seconds": 0.1, "compile_seconds": 0.2}
        return types.SimpleNamespace(summary=summary)

    train_fn.calls = calls
    return train_fn


def test_rows_equal_single_runs_of_the_same_config(tmp_path, ratings):
    grid = [{"hidden": (8,)}, {"activation": "relu", "output_activation": "softplus"}]
    rows = sweep.run_grid(BASE, grid, (1,), tmp_path, ratings=ratings, name="mine")
    assert len(rows) == 2 and set(rows["grid"]) == {"mine"}
    on_disk = pd.read_csv(tmp_path / "results.csv")
    for overrides, row in zip(grid, on_disk.itertuples()):
        seed = 1
        alone = ar.train_and_evaluate(ar.replace(BASE, **overrides, seed=seed),
                                      ratings=ratings).summary
        assert row.setting == sweep.setting_label(overrides) and row.seed == seed
        assert json.loads(row.overrides) == json.loads(json.dumps(overrides))
        assert row.valid_rmse == alone["valid_rmse"] and row.test_rmse == alone["test_rmse"]
        assert row.best_epoch == alone["selection"]["best_epoch"]
        assert row.epochs_run == alone["epochs_run"]
        assert row.wall_seconds >= row.train_seconds > 0 and row.compile_seconds >= 0


def test_seeds_and_float_settings_train_together_and_equal_runs_one_at_a_time(tmp_path,
                                                                              ratings):
    grid = [{"lr": 0.01}, {"lr": 0.02, "dropout": 0.2}]
    together = sweep.run_grid(BASE, grid, (0, 1), tmp_path / "together", ratings=ratings)
    apart = sweep.run_grid(BASE, grid, (0, 1), tmp_path / "apart", ratings=ratings,
                           batch_members=False)
    assert list(together["setting"]) == list(apart["setting"])
    assert list(together["seed"]) == list(apart["seed"]) == [0, 1, 0, 1]
    for key in ("valid_rmse", "test_rmse"):
        np.testing.assert_allclose(together[key], apart[key], rtol=1e-6)
    assert list(together["best_epoch"]) == list(apart["best_epoch"])
    # The four runs shared one step: each row carries a quarter of the group's wall time.
    assert together["wall_seconds"].nunique() == 1


def test_a_second_call_runs_nothing(tmp_path):
    first = fake_train()
    rows = sweep.run_grid(BASE, GRID, (0, 1), tmp_path, train_fn=first)
    assert len(first.calls) == 6
    again = fake_train()
    assert sweep.run_grid(BASE, GRID, (0, 1), tmp_path, train_fn=again).equals(rows)
    assert again.calls == []


def test_a_killed_grid_resumes_with_only_the_missing_runs(tmp_path):
    whole = sweep.run_grid(BASE, GRID, (0, 1), tmp_path / "whole", train_fn=fake_train())
    with pytest.raises(KeyboardInterrupt):
        sweep.run_grid(BASE, GRID, (0, 1), tmp_path / "cut", train_fn=fake_train(4))
    assert len(sweep.read_results(tmp_path / "cut")) == 4
    rest = fake_train()
    resumed = sweep.run_grid(BASE, GRID, (0, 1), tmp_path / "cut", train_fn=rest)
    assert rest.calls == [((16,), 0), ((16,), 1)]
    columns = ["setting", "seed", "valid_rmse", "test_rmse", "best_epoch"]
    pd.testing.assert_frame_equal(resumed[columns], whole[columns])


def test_another_base_config_in_the_same_folder_is_refused(tmp_path):
    sweep.run_grid(BASE, GRID[:1], (0,), tmp_path, train_fn=fake_train())
    sweep.run_grid(ar.replace(BASE, seed=7), GRID[:1], (0,), tmp_path, train_fn=fake_train())
    with pytest.raises(ConfigError, match=r"another base config.*optim\.lr"):
        sweep.run_grid(ar.replace(BASE, lr=0.5), GRID[:1], (0,), tmp_path,
                       train_fn=fake_train())


@pytest.mark.parametrize("overrides", [dict(valid_ratio=0.0, early_stopping=0),
                                       dict(early_stopping=0)],
                         ids=["no_validation_split", "no_early_stopping"])
def test_a_base_without_selection_on_validation_is_refused(tmp_path, overrides):
    train_fn = fake_train()
    with pytest.raises(ConfigError, match="selects on validation only"):
        sweep.run_grid(ar.replace(BASE, **overrides), GRID, (0,), tmp_path,
                       train_fn=train_fn)
    assert train_fn.calls == [] and not list(tmp_path.iterdir())


def test_a_setting_that_switches_selection_off_is_refused_before_any_run(tmp_path):
    train_fn = fake_train()
    with pytest.raises(ConfigError, match="selects on validation only"):
        sweep.run_grid(BASE, [*GRID, {"early_stopping": 0}], (0,), tmp_path,
                       train_fn=train_fn)
    assert train_fn.calls == []


def test_the_best_setting_is_chosen_by_validation_not_by_test(tmp_path):
    rows = sweep.run_grid(BASE, GRID, (0, 1, 2), tmp_path, train_fn=fake_train())
    summary = sweep.summarize_grid(rows)
    # fake_train: valid is lowest for the widest, test for the narrowest.
    assert summary.loc[summary["best"], "setting"].tolist() == ["hidden=16"]
    assert summary["test_rmse_mean"].idxmin() != summary["valid_rmse_mean"].idxmin()
    noisy = rows.assign(test_rmse=np.random.default_rng(0).uniform(0, 9, len(rows)))
    assert sweep.summarize_grid(noisy)["best"].tolist() == summary["best"].tolist()


def test_a_setting_with_a_diverged_seed_is_recorded_and_never_best(tmp_path):
    # hidden=16 has the best validation RMSE on seed 0 and diverges on seed 1.
    rows = sweep.run_grid(BASE, GRID, (0, 1), tmp_path,
                          train_fn=fake_train(diverge={(16, 1)}))
    failed = rows[rows["error"] != ""]
    assert failed[["setting", "seed"]].values.tolist() == [["hidden=16", 1]]
    assert failed["valid_rmse"].isna().all() and failed["error"].str.contains("diverged").all()
    summary = sweep.summarize_grid(rows).set_index("setting")
    assert summary.index[summary["best"]].tolist() == ["hidden=8"]
    assert summary.loc["hidden=16", "failed"] == 1
    assert np.isnan(summary.loc["hidden=16", "valid_rmse_mean"])


def test_every_grid_builds_valid_configs_with_unique_labels():
    base = ar.replace(ar.d2l(), valid_ratio=0.1, early_stopping=5)
    for name, settings in sweep.GRIDS.items():
        runs = sweep.run_configs(base, settings, (0,))
        assert len(runs) == len(settings)
        labels = [sweep.setting_label(o) for o in settings]
        assert len(set(labels)) == len(labels), name
    assert set(sweep.BOOK_GRIDS) <= set(sweep.GRIDS)
    with pytest.raises(ConfigError, match="unknown grid"):
        sweep.grid_settings("nope")


def fake_results(grid: str, seeds=(0, 1, 2), settings=None) -> pd.DataFrame:
    """results.csv rows for every setting of a grid (default: the named one), made-up scores."""
    rng = np.random.default_rng(len(grid))
    rows = [sweep.result_row(grid, o, s, {
        "valid_rmse": float(rng.uniform(0.85, 1.0)), "test_rmse": float(rng.uniform(0.85, 1.0)),
        "selection": {"best_epoch": int(rng.integers(1, 40))}, "epochs_run": 40,
        "train_seconds": 1.0, "compile_seconds": 1.0}, 2.0)
        for o in settings or sweep.GRIDS[grid] for s in seeds]
    return pd.DataFrame(rows)


def test_the_markdown_table_equals_a_pandas_groupby(tmp_path):
    results = fake_results("depth")
    md, _ = sweep_report.write_report(results, tmp_path, "depth")
    table = [line for line in md.read_text().splitlines() if line.startswith("| ")][1:]
    expected = results.groupby("setting", sort=False).agg(
        v=("valid_rmse", "mean"), vs=("valid_rmse", "std"), t=("test_rmse", "mean"),
        ts=("test_rmse", "std"), e=("best_epoch", "mean"), n=("seed", "size"))
    assert len(table) == len(expected)
    best = expected["v"].idxmin()
    for line, (setting, row) in zip(table, expected.iterrows()):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == (f"**{setting}** (best)" if setting == best else setting)
        assert cells[1] == f"{row.v:.4f} ± {row.vs:.4f}"
        assert cells[2] == f"{row.t:.4f} ± {row.ts:.4f}"
        assert cells[3] == f"{row.e:.1f}" and cells[5] == str(int(row.n))


MIXED = [{"lr": 0.01}, {"lr": 0.001, "hidden": (500, 250, 500)}, {"dropout": 0.0}]


@pytest.mark.parametrize("grid", ["hidden", "depth", "activation", "paper", "custom"])
def test_the_figure_is_a_non_empty_png(tmp_path, grid):
    results = fake_results(grid, seeds=(0, 1), settings=MIXED if grid == "custom" else None)
    _, png = sweep_report.write_report(results, tmp_path, grid)
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 5000


@pytest.fixture(scope="module")
def ratings_file(tmp_path_factory, ratings):
    path = tmp_path_factory.mktemp("data") / "ratings.tsv"
    path.write_text(udata_text(ratings))
    return path


def sweep_cli(*args):
    return [sys.executable, str(REPO / "scripts" / "sweep.py"), "--preset", "tiny",
            "--batch-size", "8", "--parallel", "jit", *args]


@pytest.mark.full
def test_sweep_cli_ctrl_c_keeps_finished_rows_and_a_rerun_resumes(tmp_path, ratings_file):
    # One split for every seed, so that the runs of a width share their compiled calls.
    args = sweep_cli("--ratings", str(ratings_file), "--grid", "hidden", "--settings",
                     "hidden=10,hidden=20", "--seeds", "0,1,2", "--split-seed", "0",
                     "--epochs", "10", "--out", str(tmp_path / "sweep"))
    out = tmp_path / "sweep"
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "results.csv").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert len(stderr.strip().splitlines()) == 1 and "resumes" in stderr
    done = len(sweep.read_results(out))
    assert 1 <= done < 6
    resumed = subprocess.run(args, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    lines = resumed.stdout.splitlines()
    assert lines[0].startswith(f"hidden: {done} of 6 runs already in")
    runs = [line for line in lines if " seed " in line]
    assert len(runs) == 6 - done and len(lines) == len(runs) + 2
    assert all(re.match(r"hidden  hidden=\d+ +seed \d  valid \d\.\d{4}  test \d\.\d{4} ", line)
               for line in runs)
    assert lines[-1].startswith("hidden: best by validation")
    rows = sweep.read_results(out)
    assert len(rows) == 6 and not rows.duplicated(["setting", "seed"]).any()
    assert (out / "hidden.md").exists() and (out / "hidden.png").stat().st_size


@pytest.mark.parametrize("flags, message", [
    (["--grid", "nope"], "unknown grid 'nope'"),
    (["--early-stopping", "0"], "selects on validation only"),
    (["--valid-ratio", "0"], "valid_ratio"),
    (["--settings", "hidden=3"], "no setting 'hidden=3'"),
], ids=["unknown_grid", "no_early_stopping", "no_validation", "unknown_setting"])
def test_sweep_cli_bad_input_exits_2_with_one_line(tmp_path, ratings_file, flags, message):
    out = subprocess.run(sweep_cli("--ratings", str(ratings_file), "--out", str(tmp_path),
                                   *flags), capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and message in out.stderr
    assert not (tmp_path / "results.csv").exists()
