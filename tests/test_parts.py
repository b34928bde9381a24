"""Row parts: written once, each run (and process) loading only its own devices' parts."""

import json

import chex
import jax
import numpy as np
import pytest

from autorec_jax.data import coldstart
from autorec_jax.data import loading, parts
from autorec_jax.data.ratings import row_matrix, to_dense
from autorec_jax.errors import ConfigError, DataError, TrainingInterrupted
from autorec_jax.run.experiment import train_and_evaluate
from synthetic import random_ratings
from test_train import toy_config

needs_8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices")


def parts_config(folder=None, **overrides):
    base = dict(optimizer="sgd", lr=0.3, batch_size=16, epochs=3, last_batch="pad",
                valid_ratio=0.2, cold_start="item-mean", parallel="jit", ranking="final",
                parts=None if folder is None else str(folder))
    base.update(overrides)
    return toy_config(**base)


@pytest.fixture(scope="module")
def ratings():
    return random_ratings(num_users=24, num_items=50, density=0.12, seed=5)  # 1 cold test and
    # 1 cold valid rating


@pytest.fixture(scope="module")
def folder(tmp_path_factory, ratings):
    out = tmp_path_factory.mktemp("parts") / "p8"
    parts.write_parts(parts_config(), out, 8, ratings=ratings)
    return out


def test_parts_hold_every_row_once_with_its_ratings_and_cold_fields(folder, ratings):
    config = parts_config()
    train, valid, test = loading.load_split(config.data, config.split_seed, ratings)
    split = {"train": train, "valid": valid, "test": test}
    dense = {name: to_dense(row_matrix(r, "item")) for name, r in split.items()}
    info = parts.read_info(folder)
    loaded = [parts.load_part(info, p) for p in range(8)]
    rows = np.concatenate([part.rows for part in loaded])
    assert sorted(rows.tolist()) == list(range(train.num_items))  # each row exactly once
    assert max(info.sizes) - min(info.sizes) <= 1
    for part in loaded:
        for name in split:
            np.testing.assert_array_equal(to_dense(part.sets[name]), dense[name][part.rows])
    # The cold-start fields of a part's held-out entries are those of the whole split.
    for name in ("valid", "test"):
        whole = coldstart.eval_fields("item-mean", train, split[name], "item")
        held = to_dense(row_matrix(split[name], "item"))
        for key in ("cold", "fallback"):
            expected = np.zeros_like(held)
            m = row_matrix(split[name], "item")
            expected[np.repeat(np.arange(m.num_rows), m.row_lengths), m.cols] = whole[key]
            for part in loaded:
                sub = part.sets[name]
                got = np.zeros((len(part.rows), held.shape[1]), np.float32)
                got[np.repeat(np.arange(sub.num_rows), sub.row_lengths), sub.cols] = \
                    part.fields[name][key]
                np.testing.assert_array_equal(got, expected[part.rows])
    assert info.meta["ratings"] == {name: len(r) for name, r in split.items()}


def test_epoch_batches_take_each_row_once_and_each_part_its_own_slots(folder):
    info = parts.read_info(folder)
    seed = np.array([7, 9], np.uint32)
    batches = parts.epoch_batches(info, 16, seed, epoch=1)
    b = 16 // 8
    assert batches.shape == (parts.steps_per_epoch(info, 16), 16)
    real = batches[batches >= 0]
    assert sorted(real.tolist()) == list(range(info.offsets[-1]))
    for p in range(8):
        slots = batches[:, p * b:(p + 1) * b]
        slots = slots[slots >= 0]
        assert np.all((slots >= info.offsets[p]) & (slots < info.offsets[p + 1]))
    np.testing.assert_array_equal(batches, parts.epoch_batches(info, 16, seed, epoch=1))
    assert not np.array_equal(batches, parts.epoch_batches(info, 16, seed, epoch=2))
    full = parts.epoch_batches(info, 0, seed, epoch=1)  # full batch: one step, all rows
    assert full.shape[0] == 1 and sorted(full[full >= 0].tolist()) == list(range(50))


def run(config, ratings=None):
    result = train_and_evaluate(config, ratings=ratings)
    return result, jax.device_get(result.state.params)


@needs_8
@pytest.mark.parametrize("model", [1, 2])
def test_sharded_runs_from_parts_equal_jit_runs_from_parts(folder, model):
    jit_result, jit_params = run(parts_config(folder))
    result, params = run(parts_config(folder, parallel="sharded", model_parallel=model))
    assert result.experiment.placed.layout == "parts"
    assert jit_result.experiment.placed.layout == "replicated"
    chex.assert_trees_all_close(params, jit_params, atol=1e-5, rtol=0)
    for a, b in zip(result.history, jit_result.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["valid_rmse"] == pytest.approx(b["valid_rmse"], abs=1e-5)
    for key in ("test_rmse", "test_mae", "test_cold_count", "test_cold_rmse", "test_count",
                "test_heldout_ndcg", "test_ndcg@10", "test_recall@10", "test_mrr@20"):
        assert result.summary[key] == pytest.approx(jit_result.summary[key], abs=1e-5), key
    assert result.summary["data"]["train_ratings"] == jit_result.summary["data"][
        "train_ratings"]


def test_a_parts_run_scores_like_the_same_model_on_the_whole_split(folder, ratings):
    """Evaluation over parts is evaluation over all rows: the parts run's final params,
    scored by a run that loaded the whole split, give the same test RMSE."""
    from autorec_jax.run.experiment import evaluate, setup
    result, params = run(parts_config(folder))
    whole, _ = setup(parts_config(None), ratings)
    scores = evaluate(whole, params, ranking=True)
    assert result.summary["test_rmse"] == pytest.approx(scores["test"]["rmse"], abs=1e-6)
    for key in ("heldout_ndcg", "ndcg@10", "recall@20", "hr@10"):   # the ranking too
        assert result.summary[f"test_{key}"] == pytest.approx(scores["test"][key], abs=1e-6)
    assert result.summary["valid_rmse"] == pytest.approx(scores["valid"]["rmse"], abs=1e-6)
    assert result.summary["test_cold_count"] == scores["test"]["cold_count"] > 0


def test_resumed_parts_run_equals_the_uninterrupted_one(folder, tmp_path):
    config = parts_config(folder, epochs=4, checkpoint_every=1)
    whole = train_and_evaluate(config, tmp_path / "whole")
    calls = iter(range(1, 100))
    with pytest.raises(TrainingInterrupted):
        train_and_evaluate(config, tmp_path / "cut", stop_requested=lambda: next(calls) >= 2)
    resumed = train_and_evaluate(config, tmp_path / "cut", resume=True)
    assert resumed.summary["test_rmse"] == whole.summary["test_rmse"]
    assert [r["train_loss"] for r in resumed.history] == [
        r["train_loss"] for r in whole.history]
    ids = json.loads((tmp_path / "whole" / "ids.json").read_text())
    assert len(ids["users"]) == 24 and len(ids["items"]) == 50


@pytest.mark.parametrize("overrides, message", [
    (dict(seed=1), r"split_seed 1 \(the parts': 0\)"),
    (dict(orientation="user"), r"orientation 'user' \(the parts': 'item'\)"),
    (dict(cold_start="network"), r"cold_start 'network'"),
    (dict(valid_ratio=0.1), r"valid_ratio 0.1"),
    (dict(batch_size=12), r"batch_size 12 must be a multiple of the 8 parts"),
    (dict(last_batch="rollover"), r"set train.last_batch pad"),
    (dict(retrain=True, select="best"), r"retrain with data.parts is not supported"),
])
def test_runs_that_do_not_fit_the_parts_are_refused(folder, overrides, message):
    with pytest.raises(ConfigError, match=message):
        train_and_evaluate(parts_config(folder, **overrides))


@needs_8
def test_parts_that_do_not_divide_among_the_devices_are_refused(tmp_path, ratings):
    parts.write_parts(parts_config(), tmp_path / "p3", 3, ratings=ratings)
    with pytest.raises(ConfigError, match=r"3 parts .* do not divide among 8 data devices"):
        train_and_evaluate(parts_config(tmp_path / "p3", batch_size=15, parallel="sharded"))


def test_bad_folders_and_counts_are_refused(folder, tmp_path, ratings):
    with pytest.raises(ConfigError, match="exists"):
        parts.write_parts(parts_config(), folder, 8, ratings=ratings)
    with pytest.raises(ConfigError, match="positive integer"):
        parts.write_parts(parts_config(), tmp_path / "zero", 0, ratings=ratings)
    with pytest.raises(ConfigError, match="51 parts exceed the 50 rows"):
        parts.write_parts(parts_config(), tmp_path / "many", 51, ratings=ratings)
    assert not (tmp_path / "many").exists() and not list(tmp_path.iterdir())
    with pytest.raises(DataError, match="not a complete parts folder"):
        parts.read_info(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("meta.json", "lengths.npz", "ids.npz"):
        (broken / name).write_bytes((folder / name).read_bytes())
    (broken / "part-00000.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"part 0 of .* is unreadable"):
        train_and_evaluate(parts_config(broken))


def test_the_parts_command_writes_what_a_run_then_trains_on(tmp_path, ratings):
    from synthetic import udata_text
    from test_datasets import run_cli
    path = tmp_path / "ratings.tsv"
    path.write_text(udata_text(ratings))
    out = tmp_path / "p4"
    flags = ["--valid-ratio", "0.2", "--cold-start", "item-mean", "--out", str(out)]
    done = run_cli("parts", str(path), "--count", "4", "--json", *flags)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    config = parts_config(str(out), ratings=str(path))
    train, valid, test = loading.load_split(config.data, config.split_seed)
    assert record["parts"] == 4 and sum(record["rows_per_part"]) == train.num_items
    counts = (record["train"], record["valid"], record["test"])
    assert counts == (len(train), len(valid), len(test))
    again = run_cli("parts", str(path), "--count", "4", *flags)
    assert again.returncode == 2 and "exists" in again.stderr
    result = train_and_evaluate(config)
    assert result.summary["data"]["parts"] == str(out)
    assert result.summary["data"]["train_ratings"] == len(train)
