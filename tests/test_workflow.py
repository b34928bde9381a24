"""Runs users can trust: kill-safe resume, early stopping, run folders, divergence, the CLI."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import autorec_jax as ar
from autorec_jax.run import checkpoint
from autorec_jax.serve.load import load_run
from autorec_jax.errors import (CheckpointError, ConfigError, TrainingDivergedError,
                                TrainingInterrupted)
from synthetic import random_ratings, udata_text
from test_train import toy_config

REPO = Path(__file__).resolve().parent.parent


def workflow_config(**overrides):
    base = dict(optimizer="adam", lr=0.01, epochs=6, batch_size=8, valid_ratio=0.2,
                checkpoint_every=2, dropout=0.1, parallel="jit")
    base.update(overrides)
    return toy_config(**base)


@pytest.fixture(scope="module")
def ratings():
    return random_ratings(num_users=40, num_items=36, density=0.3, seed=11)


def metrics_lines(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def stop_after(epoch):
    calls = iter(range(1, 10 ** 6))
    return lambda: next(calls) >= epoch


@pytest.mark.parametrize("early_stopping", [0, 2])
def test_interrupted_and_resumed_run_equals_the_uninterrupted_one(tmp_path, ratings,
                                                                  early_stopping):
    config = workflow_config(early_stopping=early_stopping, epochs=8)
    whole = ar.train_and_evaluate(config, tmp_path / "whole", ratings=ratings)
    with pytest.raises(TrainingInterrupted, match="after epoch 3; continue with --resume"):
        ar.train_and_evaluate(config, tmp_path / "cut", ratings=ratings,
                              stop_requested=stop_after(3))
    assert checkpoint.latest(tmp_path / "cut") == 3  # an interrupted epoch is always saved
    saved = json.loads((tmp_path / "cut" / "checkpoints" / "3" / "loop.json").read_text())
    assert saved["run"]["config"]["model"]["hidden"] == list(config.model.hidden)
    assert saved["run"]["ids"]["users"] == ratings.user_ids.tolist()
    assert saved["carry"] is not None and "state" in saved["shuffle_state"]
    resumed = ar.train_and_evaluate(config, tmp_path / "cut", ratings=ratings, resume=True)
    for key in ("test_rmse", "test_mae", "valid_rmse", "steps", "epochs_run", "selection"):
        assert resumed.summary[key] == whole.summary[key], key
    a, b = metrics_lines(tmp_path / "whole"), metrics_lines(tmp_path / "cut")
    assert [r["epoch"] for r in b] == list(range(1, len(a) + 1))
    for ra, rb in zip(a, b):
        assert ra["train_loss"] == rb["train_loss"] and ra.get("valid_rmse") == rb.get(
            "valid_rmse")
    np.testing.assert_array_equal(
        jax.device_get(load_run(tmp_path / "cut").params["output"]["kernel"]),
        jax.device_get(load_run(tmp_path / "whole").params["output"]["kernel"]))


def test_resume_after_a_finished_run_rewrites_nothing_and_agrees(tmp_path, ratings):
    config = workflow_config(epochs=3)
    first = ar.train_and_evaluate(config, tmp_path, ratings=ratings)
    again = ar.train_and_evaluate(config, tmp_path, ratings=ratings, resume=True)
    assert again.summary["test_rmse"] == first.summary["test_rmse"]
    assert len(metrics_lines(tmp_path)) == 3


def test_resuming_an_early_stopped_run_trains_no_further_epoch(tmp_path, ratings):
    config = workflow_config(early_stopping=2, epochs=40, lr=0.05, dropout=0.0,
                             checkpoint_every=0)
    first = ar.train_and_evaluate(config, tmp_path, ratings=ratings)
    assert first.summary["selection"]["stopped_early"]
    again = ar.train_and_evaluate(config, tmp_path, ratings=ratings, resume=True)
    assert again.summary["epochs_run"] == first.summary["epochs_run"]
    assert len(metrics_lines(tmp_path)) == first.summary["epochs_run"]
    assert again.summary["selection"] == first.summary["selection"]


def test_resume_with_another_config_or_a_damaged_checkpoint_is_refused(tmp_path, ratings):
    config = workflow_config(epochs=4)
    with pytest.raises(TrainingInterrupted):
        ar.train_and_evaluate(config, tmp_path, ratings=ratings, stop_requested=stop_after(2))
    with pytest.raises(CheckpointError, match="model.hidden"):
        ar.train_and_evaluate(ar.replace(config, hidden=(7,)), tmp_path, ratings=ratings,
                              resume=True)
    other = random_ratings(num_users=40, num_items=36, density=0.3, seed=12)
    with pytest.raises(CheckpointError, match="data differ"):
        ar.train_and_evaluate(config, tmp_path, ratings=other, resume=True)
    files = [f for f in (tmp_path / "checkpoints" / "2").rglob("*") if f.is_file()
             and f.name not in ("manifest.json", "loop.json") and f.stat().st_size > 0]
    with open(files[0], "r+b") as handle:
        handle.truncate(files[0].stat().st_size // 2)
    with pytest.raises(CheckpointError) as err:
        ar.train_and_evaluate(config, tmp_path, ratings=ratings, resume=True)
    assert "\n" not in str(err.value)


def test_a_run_owns_its_folder(tmp_path, ratings):
    config = workflow_config(epochs=2)
    ar.train_and_evaluate(config, tmp_path, ratings=ratings)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds another run.*--resume.*--overwrite"):
        ar.train_and_evaluate(config, tmp_path, ratings=ratings)
    short = ar.train_and_evaluate(ar.replace(config, epochs=1, valid_ratio=0.0), tmp_path,
                                  ratings=ratings, overwrite=True)
    assert len(metrics_lines(tmp_path)) == 1 and "valid_rmse" not in short.summary
    assert not (tmp_path / "checkpoints" / "2").exists()
    assert (tmp_path / "notes.txt").read_text() == "mine"
    for bad in ("", str(tmp_path / "notes.txt")):
        with pytest.raises(ConfigError, match="--out"):
            ar.train_and_evaluate(config, bad, ratings=ratings)


def test_early_stopping_keeps_the_best_validation_epoch(tmp_path, ratings):
    config = workflow_config(epochs=40, lr=0.05, early_stopping=2, checkpoint_every=0,
                             dropout=0.0)
    result = ar.train_and_evaluate(config, tmp_path, ratings=ratings)
    records = metrics_lines(tmp_path)
    valid = [r["valid_rmse"] for r in records]
    best = int(np.argmin(valid)) + 1
    selection = result.summary["selection"]
    assert selection["best_epoch"] == best and selection["stopped_early"]
    assert len(records) == best + 2 < 40  # patience 2
    assert all("test_rmse" not in r for r in records)  # test is scored once, at the end
    run = load_run(tmp_path)
    experiment, _ = ar.setup(config, ratings)
    scores = ar.evaluate(experiment, run.params)
    assert scores["valid"]["rmse"] == pytest.approx(valid[best - 1], abs=1e-6)
    assert scores["test"]["rmse"] == pytest.approx(result.summary["test_rmse"], abs=1e-6)


@pytest.mark.skipif(jax.local_device_count() < 2, reason="needs several devices")
def test_restored_params_score_under_pmap(tmp_path, ratings):
    # load_run gives params on one device; the pmap evaluation replicates them itself.
    config = workflow_config(epochs=2, valid_ratio=0.0, parallel="pmap")
    result = ar.train_and_evaluate(config, tmp_path, ratings=ratings)
    scores = ar.evaluate(result.experiment, load_run(tmp_path).params)
    assert scores["test"]["rmse"] == pytest.approx(result.summary["test_rmse"], abs=1e-6)


def test_a_finite_blow_up_stops_naming_the_epoch(tmp_path, ratings):
    config = workflow_config(lr=1000.0, epochs=10, valid_ratio=0.0)
    with pytest.raises(TrainingDivergedError, match=r"diverged: .* at epoch \d+"):
        ar.train_and_evaluate(config, tmp_path, ratings=ratings)
    assert metrics_lines(tmp_path) and not (tmp_path / "summary.json").exists()


# --- the training CLI ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def ratings_file(tmp_path_factory, ratings):
    path = tmp_path_factory.mktemp("data") / "ratings.tsv"
    path.write_text(udata_text(ratings))
    return path


def train_cli(*args, **kwargs):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), *args],
                          capture_output=True, text=True, **kwargs)


CLI = ["--preset", "tiny", "--hidden", "8", "--batch-size", "8", "--parallel", "jit"]


def test_train_cli_success_path(tmp_path, ratings_file):
    out = train_cli(*CLI, "--ratings", str(ratings_file), "--epochs", "3", "--out",
                    str(tmp_path / "run"))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    epochs = [line for line in lines if line.startswith("epoch")]
    assert [line.split()[1] for line in epochs] == ["1", "2", "3"]
    assert all("train loss" in line and "test RMSE" in line for line in epochs)
    assert lines[-1].startswith("final test RMSE")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for key in ("test_rmse", "test_mae", "test_count", "train_seconds", "entries_per_sec",
                "compile_seconds", "steps", "parallel", "num_devices", "data", "config",
                "selection", "epochs_run", "versions", "device_kind"):
        assert key in summary, key
    assert summary["test_count"] == summary["data"]["test_ratings"] > 0
    assert f"{summary['test_rmse']:.4f}" in lines[-1]
    assert (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].startswith("epoch")
    quiet = train_cli(*CLI, "--ratings", str(ratings_file), "--epochs", "3", "--quiet")
    assert quiet.returncode == 0 and quiet.stdout == f"test RMSE {summary['test_rmse']:.4f}\n"
    for name in ("summary.json", "metrics.jsonl", "ids.json"):
        assert oct((tmp_path / "run" / name).stat().st_mode & 0o777) == oct(
            0o666 & ~_umask())


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.full
def test_train_cli_sigkill_at_any_moment_then_resume_gives_the_same_result(tmp_path,
                                                                           ratings_file):
    epochs = 40
    args = [*CLI, "--ratings", str(ratings_file), "--epochs", str(epochs), "--hidden", "64",
            "--valid-ratio", "0.2", "--checkpoint-every", "3", "--quiet"]
    whole = train_cli(*args, "--out", str(tmp_path / "whole"))
    assert whole.returncode == 0, whole.stderr
    killed_at = []
    for trial, delay in enumerate((0.0, 0.3)):
        run = tmp_path / f"killed{trial}"
        proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "train.py"), *args,
                                 "--out", str(run)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while not (run / "metrics.jsonl").exists() and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        killed_at.append(len(metrics_lines(run)))
        resumed = train_cli(*args, "--out", str(run), "--resume")
        assert resumed.returncode == 0, resumed.stderr
        assert resumed.stdout == whole.stdout
        assert [r["epoch"] for r in metrics_lines(run)] == list(range(1, epochs + 1))
    assert min(killed_at) < epochs  # at least one kill landed mid-run


@pytest.mark.full
def test_train_cli_ctrl_c_exits_130_with_one_line_and_keeps_the_checkpoint(tmp_path,
                                                                           ratings_file):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "train.py"), *CLI,
                             "--ratings", str(ratings_file), "--epochs", "100000",
                             "--hidden", "64", "--out", str(run), "--quiet",
                             "--checkpoint-every", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    # Two epochs: the loop has polled for a stop (before its first poll Ctrl-C exits at once).
    while time.time() < deadline and not (
            (run / "metrics.jsonl").exists() and len(metrics_lines(run)) >= 2):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert len(stderr.strip().splitlines()) == 1 and "--resume" in stderr
    assert "Traceback" not in stderr
    epochs = len(metrics_lines(run))
    assert checkpoint.latest(run) == epochs


def test_train_cli_refuses_a_model_too_big_for_memory_in_one_line(tmp_path, ratings_file):
    out = train_cli(*CLI, "--ratings", str(ratings_file), "--hidden", "2000000000")
    assert out.returncode == 2, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "needs about" in out.stderr
    assert "--hidden" in out.stderr and "Traceback" not in out.stderr


def test_train_cli_refuses_a_used_folder_and_an_out_file_before_loading(tmp_path,
                                                                        ratings_file):
    (tmp_path / "file").write_text("x")
    out = train_cli(*CLI, "--ratings", str(tmp_path / "missing.tsv"), "--out",
                    str(tmp_path / "file"))
    assert out.returncode == 2 and "--out" in out.stderr and "missing.tsv" not in out.stderr
    run = tmp_path / "run"
    assert train_cli(*CLI, "--ratings", str(ratings_file), "--epochs", "1", "--out",
                     str(run)).returncode == 0
    again = train_cli(*CLI, "--ratings", str(ratings_file), "--epochs", "1", "--out", str(run))
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_progress_bar_shows_loss_rmse_and_rate_instead_of_epoch_lines(tmp_path, ratings,
                                                                      monkeypatch, capsys,
                                                                      caplog):
    import logging
    import tqdm
    from autorec_jax.run import experiment

    class NoDelay(tqdm.tqdm):  # the real bar waits 2 s before showing itself
        def __init__(self, *args, **kwargs):
            kwargs.update(delay=0, mininterval=0, file=sys.stderr)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(experiment.tqdm, "tqdm", NoDelay)
    config = workflow_config(epochs=3, valid_ratio=0.0)
    with caplog.at_level(logging.INFO, logger="autorec_jax"):
        ar.train_and_evaluate(config, ratings=ratings, progress=True)
    err = capsys.readouterr().err
    assert "3/3" in err and "loss " in err and "test RMSE" in err and "M entries/s" in err
    assert not [r for r in caplog.records if r.getMessage().startswith("epoch")]
    with caplog.at_level(logging.INFO, logger="autorec_jax"):
        ar.train_and_evaluate(config, ratings=ratings, progress=False)
    assert len([r for r in caplog.records if r.getMessage().startswith("epoch")]) == 3
    assert "3/3" not in capsys.readouterr().err
