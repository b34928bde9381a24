"""Repeated splits: plans, resumable protocol folders, paired comparison, and the two CLIs."""

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import autorec_jax as ar
from autorec_jax.studies import protocol, stats
from autorec_jax.errors import ConfigError
from synthetic import random_ratings, udata_text

REPO = Path(__file__).resolve().parent.parent


def base_config(**overrides):
    # ranking "final": the protocol's tables carry the ranking metrics too.
    fields = dict(hidden=(8,), batch_size=8, parallel="jit", valid_ratio=0.2, ranking="final")
    fields.update(overrides)
    return ar.replace(ar.tiny(), **fields)


@pytest.fixture(scope="module")
def ratings():
    return random_ratings(num_users=40, num_items=36, density=0.3, seed=11)


# --- split plans ---------------------------------------------------------------------------

def test_split_plan_book_seeds_set_seed_and_split_seed():
    config = base_config(seed=7)
    assert [label for label, _ in protocol.split_plan("book:0-2", config)] == [
        "seed0", "seed1", "seed2"]
    plan = protocol.split_plan("book:5", config)
    assert [label for label, _ in plan] == [f"seed{s}" for s in range(5)]
    for s, (_, c) in enumerate(plan):
        assert (c.data.split, c.seed, c.data.split_seed, c.split_seed) == ("random", s, s, s)
        assert c.model == config.model and c.optim == config.optim and c.train == config.train
    assert [label for label, _ in protocol.split_plan("book:3-4", config)] == ["seed3", "seed4"]


def test_split_plan_official_and_kfold_splits():
    config = base_config(seed=3)
    plan = protocol.split_plan("u1-u5", config)
    assert [label for label, _ in plan] == ["u1", "u2", "u3", "u4", "u5"]
    assert [c.data.split for _, c in plan] == [f"ml100k-u{k}" for k in range(1, 6)]
    assert {c.seed for _, c in plan} == {3}
    assert [(label, c.data.split) for label, c in protocol.split_plan("u2", config)] == [
        ("u2", "ml100k-u2")]
    folds = protocol.split_plan("kfold:4", ar.replace(config, split_seed=11))
    assert [label for label, _ in folds] == ["fold0", "fold1", "fold2", "fold3"]
    assert [(c.data.split, c.data.folds, c.data.fold) for _, c in folds] == [
        ("kfold", 4, k) for k in range(4)]
    # One partition: the same split seed for every fold; the model seed stays.
    assert {(c.split_seed, c.seed) for _, c in folds} == {(11, 3)}


@pytest.mark.parametrize("name", ["book", "book:", "book:3-1", "u0", "u1-u6", "u3-u1",
                                  "kfold:1", "kfold", "seeds:5", ""])
def test_split_plan_refuses_bad_names_listing_the_forms(name):
    with pytest.raises(ConfigError, match=r"book:A-B .*book:N .*uA-uB .*kfold:K"):
        protocol.split_plan(name, base_config())


# --- run_protocol --------------------------------------------------------------------------

def counting(train_fn):
    def wrapped(config, out_dir, **kwargs):
        wrapped.calls.append((config.seed, config.data.fold))
        wrapped.resumed.append(kwargs.get("resume"))
        return train_fn(config, out_dir, **kwargs)
    wrapped.calls, wrapped.resumed = [], []
    return wrapped


def fake_train(config, out_dir, *, ratings=None, resume=False, **seams):
    """A stand-in run whose scores depend on the split."""
    rmse = 0.9 + 0.01 * config.seed + 0.001 * config.data.fold
    return SimpleNamespace(summary={"test_rmse": rmse, "test_mae": rmse - 0.2,
                                    "test_count": 50, "selection": {"rule": "last epoch"},
                                    "epochs_run": 2, "train_seconds": 0.1})


@pytest.fixture(scope="module")
def real_protocol(tmp_path_factory, ratings):
    out = tmp_path_factory.mktemp("protocol")
    result = protocol.run_protocol(base_config(), protocol.split_plan("book:2", base_config()),
                                   out, ratings=ratings)
    return out, result


def test_run_protocol_rows_equal_separate_runs(real_protocol, ratings):
    out, result = real_protocol
    csv = pd.read_csv(out / "results.csv")
    assert list(csv["label"]) == list(result.table["label"]) == ["seed0", "seed1"]
    for s in (0, 1):
        # The second path: a run built by hand, not through split_plan.
        alone = ar.train_and_evaluate(ar.replace(base_config(), seed=s, split_seed=s),
                                      ratings=ratings).summary
        row = csv.iloc[s]
        assert (row["split"], row["seed"], row["split_seed"]) == ("random", s, s)
        for key in ("test_rmse", "test_mae", "test_count", "valid_rmse", "valid_mae"):
            assert row[key] == alone[key], key
        assert row["best_epoch"] == row["epochs_run"] == alone["epochs_run"]
        assert (out / f"seed{s}" / "summary.json").exists()  # a normal run folder
    assert result.test_rmse == stats.mean_ci(csv["test_rmse"])
    report = (out / "report.md").read_text()
    assert "| seed1 | random | 1 | 1 |" in report
    lines = report.rstrip().splitlines()
    assert protocol.format_mean_ci(result.test_rmse) in lines
    # The ranking metrics' means follow the RMSE's, each over the same splits.
    assert lines[-1] == protocol.format_mean_ci(stats.mean_ci(csv["test_recall@10"]),
                                                "test recall@10")


def test_run_protocol_trains_fresh_splits_together_and_batching_can_be_turned_off(
        real_protocol, ratings, tmp_path):
    out, result = real_protocol
    # The two fresh splits shared one compiled step (`multi.train_many`) ...
    for label in ("seed0", "seed1"):
        summary = json.loads((out / label / "summary.json").read_text())
        assert summary["members"]["count"] == 2
    # ... and equal the same protocol run one split at a time.
    apart = protocol.run_protocol(base_config(), "book:2", tmp_path / "apart", ratings=ratings,
                                  batch_members=False)
    assert "members" not in json.loads((tmp_path / "apart" / "seed0" / "summary.json")
                                       .read_text())
    for key in ("test_rmse", "valid_rmse", "test_mae"):
        np.testing.assert_allclose(result.table[key], apart.table[key], rtol=1e-6)
    assert list(result.table["best_epoch"]) == list(apart.table["best_epoch"])


def test_run_protocol_twice_runs_nothing_new(real_protocol, ratings):
    out, first = real_protocol
    train = counting(ar.train_and_evaluate)
    again = protocol.run_protocol(base_config(), "book:2", out, ratings=ratings, train_fn=train)
    assert train.calls == []
    pd.testing.assert_frame_equal(again.table, first.table)


def test_run_protocol_resumes_after_a_failed_split_and_extends(tmp_path):
    config = base_config()

    def dies_on_seed1(config, out_dir, **kwargs):
        if config.seed == 1:
            out_dir.mkdir()  # killed mid-run: its run folder stays
            raise KeyboardInterrupt
        return fake_train(config, out_dir, **kwargs)

    with pytest.raises(KeyboardInterrupt):
        protocol.run_protocol(config, "book:3", tmp_path, train_fn=dies_on_seed1)
    assert list(pd.read_csv(tmp_path / "results.csv")["label"]) == ["seed0"]
    train = counting(fake_train)
    result = protocol.run_protocol(config, "book:3", tmp_path, train_fn=train)
    assert train.calls == [(1, 0), (2, 0)]
    assert train.resumed == [True, False]  # the killed split continues from its folder
    assert list(result.table["test_rmse"]) == pytest.approx([0.90, 0.91, 0.92])
    more = counting(fake_train)
    protocol.run_protocol(config, "book:4", tmp_path, train_fn=more)
    assert more.calls == [(3, 0)]
    assert len(pd.read_csv(tmp_path / "results.csv")) == 4


def test_run_protocol_refuses_another_config_or_seams_in_the_same_folder(tmp_path):
    protocol.run_protocol(base_config(), "kfold:3", tmp_path, train_fn=fake_train)
    train = counting(fake_train)
    with pytest.raises(ConfigError, match=r"another config \(model.hidden: \[8\] there, "
                                          r"\[9\] in this protocol\)"):
        protocol.run_protocol(base_config(hidden=(9,)), "book:2", tmp_path, train_fn=train)
    with pytest.raises(ConfigError, match="split fold0 .*split_seed: 0 there, 5 in this plan"):
        protocol.run_protocol(base_config(seed=5), "kfold:3", tmp_path, train_fn=train)
    with pytest.raises(ConfigError, match="seams"):
        protocol.run_protocol(base_config(), "kfold:3", tmp_path, train_fn=train,
                              loss_fn=fake_train)
    assert train.calls == []
    with pytest.raises(ConfigError, match="split seed0 of the plan"):
        protocol.run_protocol(base_config(), protocol.split_plan("book:1", base_config(lr=1.0)),
                              train_fn=train)


def test_run_protocol_without_a_folder_keeps_nothing(tmp_path):
    result = protocol.run_protocol(base_config(), "kfold:2", train_fn=fake_train)
    assert list(result.table["fold"]) == [0, 1] and result.test_rmse["n"] == 2
    assert list(tmp_path.iterdir()) == []


# --- compare -------------------------------------------------------------------------------

def table(labels, values):
    return pd.DataFrame({"label": labels, "test_rmse": values})


def test_compare_pairs_by_label_and_matches_paired_t_and_a_hand_computation():
    a = table(["s0", "s1", "s2"], [0.905, 0.899, 0.910])
    b = table(["s2", "s0", "s1"], [0.904, 0.900, 0.897])  # another order: paired by label
    result = protocol.compare(a, b)
    expected = stats.paired_t([0.905, 0.899, 0.910], [0.900, 0.897, 0.904])
    assert {k: result[k] for k in expected} == expected
    d = np.array([0.005, 0.002, 0.006])
    sd = np.sqrt(np.sum((d - d.mean()) ** 2) / 2)
    t = d.mean() / (sd / np.sqrt(3))
    assert result["mean_diff"] == pytest.approx(d.mean())
    assert result["t"] == pytest.approx(t)
    half = 4.302653 * sd / np.sqrt(3)  # t_{0.975, 2}
    assert (result["ci_low"], result["ci_high"]) == pytest.approx(
        (d.mean() - half, d.mean() + half), rel=1e-6)
    assert result["p_value"] == pytest.approx(1 - abs(t) / np.sqrt(2 + t * t))  # df = 2
    assert (result["mean_a"], result["mean_b"]) == pytest.approx((0.9046667, 0.9003333))
    assert result["better"] == "b" and result["labels"] == ["s0", "s1", "s2"]
    assert protocol.compare(b, b)["better"] is None


def test_compare_names_the_labels_missing_on_either_side(tmp_path):
    with pytest.raises(ConfigError, match=r"only in a \['s2'\], only in b \['s3'\]"):
        protocol.compare(table(["s0", "s1", "s2"], [1, 2, 3]),
                         table(["s0", "s1", "s3"], [1, 2, 3]))
    with pytest.raises(ConfigError, match=r"repeat the split labels \['s0'\]"):
        protocol.compare(table(["s0", "s0"], [1, 2]), table(["s0", "s1"], [1, 2]))
    with pytest.raises(ConfigError, match="not a protocol folder"):
        protocol.compare(tmp_path, tmp_path)


def test_format_lines():
    ci = stats.mean_ci([0.9, 0.91, 0.905])
    assert protocol.format_mean_ci(ci) == (
        f"test RMSE mean 0.9050 ± {ci['half_width']:.4f} (95% CI [{ci['ci_low']:.4f}, "
        f"{ci['ci_high']:.4f}], std 0.0050, n=3)")
    assert "n=1" in protocol.format_mean_ci(stats.mean_ci([0.9]))
    two = protocol.format_comparison(protocol.compare(table(["s0", "s1"], [1.0, 2.0]),
                                                      table(["s0", "s1"], [1.5, 2.1])))
    assert "a is better" in two[2] and two[-1].startswith("note: only n=2")


# --- the CLIs ------------------------------------------------------------------------------

CLI = ["--preset", "tiny", "--hidden", "8", "--batch-size", "8", "--parallel", "jit",
       "--quiet"]


def script(name, *args):
    return subprocess.run([sys.executable, str(REPO / "scripts" / name), *args],
                          capture_output=True, text=True)


def test_protocol_and_compare_scripts_end_to_end(tmp_path, ratings):
    data = tmp_path / "ratings.tsv"
    data.write_text(udata_text(ratings))
    flags = [*CLI, "--ratings", str(data)]
    out = script("protocol.py", *flags, "--splits", "book:2", "--out", str(tmp_path / "a"))
    assert out.returncode == 0, out.stderr
    rows = pd.read_csv(tmp_path / "a" / "results.csv")
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"seed0: test RMSE {rows['test_rmse'][0]:.4f}")
    assert lines[-1] == protocol.format_mean_ci(stats.mean_ci(rows["test_rmse"]))
    assert lines[-1].endswith("n=2)")
    before = (tmp_path / "a" / "results.json").read_bytes()
    # Side a is the protocol above (resumed: nothing retrained); side b trains.
    out = script("compare.py", *flags, "--splits", "book:2", "--out", str(tmp_path),
                 "--a", "", "--b", "--lr 0.02 --epochs 1")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "a" / "results.json").read_bytes() == before
    b_rows = pd.read_csv(tmp_path / "b" / "results.csv")
    assert set(b_rows["epochs_run"]) == {1}
    result = stats.paired_t(rows["test_rmse"], b_rows["test_rmse"])
    lines = out.stdout.splitlines()
    assert f"mean {result['mean_diff']:+.4f}" in lines[-3] and "df = 1" in lines[-3]
    assert f"p = {result['p_value']:.4g}" in lines[-3]
    assert lines[-1].startswith("note: only n=2 paired splits")
    again = script("compare.py", "--results", str(tmp_path / "a"), str(tmp_path / "b"))
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[-4:] == lines[-4:]


@pytest.mark.parametrize("name, args, message", [
    ("protocol.py", ["--splits", "book:x"], "--splits must be one of"),
    ("compare.py", ["--splits", "book:2", "--out", "{tmp}", "--a", "--bogus 1", "--b", ""],
     "--a: unknown flags --bogus 1"),
    ("compare.py", ["--results", "{tmp}", "{tmp}"], "no results.csv"),
    ("compare.py", ["--splits", "book:2", "--a", ""], "give --splits, --out, --a and --b"),
])
def test_scripts_exit_2_with_one_line_on_bad_input(tmp_path, name, args, message):
    out = script(name, *CLI, *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert out.returncode == 2
    assert len(out.stderr.splitlines()) == 1 and message in out.stderr
    assert out.stderr.startswith(f"{name}: error:")


def test_compare_script_names_mismatched_splits(tmp_path):
    for side, labels in (("a", ["seed0", "seed1"]), ("b", ["seed0", "seed2"])):
        (tmp_path / side).mkdir()
        table(labels, [0.9, 0.91]).to_csv(tmp_path / side / "results.csv", index=False)
    out = script("compare.py", "--results", str(tmp_path / "a"), str(tmp_path / "b"))
    assert out.returncode == 2 and "only in a ['seed1'], only in b ['seed2']" in out.stderr
    assert not math.isnan(protocol.compare(tmp_path / "a", tmp_path / "a")["mean_a"])
    json.dumps(protocol.compare(tmp_path / "a", tmp_path / "a"))  # plain, JSON-ready numbers
