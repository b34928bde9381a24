"""Predictions, top-K and the recommend/predict CLIs against an independent NumPy forward pass."""

import dataclasses
import importlib.util
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from autorec_jax import config as config_lib
from autorec_jax.serve import recommend
from autorec_jax.data import loading
from autorec_jax.data.ratings import row_matrix, to_dense
from autorec_jax.errors import DataError
from autorec_jax.model import create_model, init_params
from synthetic import random_ratings, udata_text

REPO = Path(__file__).resolve().parent.parent
RATINGS = random_ratings(num_users=23, num_items=17, density=0.3, seed=4)


def make_config(orientation="item", **overrides):
    # eval_batch_size 4 forces several blocks and a padded last one.
    return config_lib.replace(config_lib.tiny(), orientation=orientation, hidden=(8,),
                              eval_batch_size=4, **overrides)


def make_params(config, train, seed=0):
    """Random params of the right shapes, larger than the init so that scores differ."""
    width = train.num_items if config.data.orientation == "user" else train.num_users
    params = init_params(create_model(config.model, width), jax.random.key(seed))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: rng.normal(0.0, 0.5, p.shape).astype(np.float32), params)


def numpy_reconstruction(params, train, orientation):
    """sigmoid(x V + b1) W + b2 over every dense training row."""
    x = to_dense(row_matrix(train, orientation)).astype(np.float64)
    hidden, out = params["hidden_0"], params["output"]
    h = 1.0 / (1.0 + np.exp(-(x @ hidden["kernel"] + hidden["bias"])))
    return h @ out["kernel"] + out["bias"]


def split(config):
    return loading.load_split(config.data, config.split_seed, ratings=RATINGS)


@pytest.mark.parametrize("orientation", ["item", "user"])
def test_predict_matrix_rows_matches_numpy_in_blocks(orientation):
    config = make_config(orientation)
    train = split(config)[0]
    params = make_params(config, train)
    rows = row_matrix(train, orientation)
    index = np.array([3, 0, 3, rows.num_rows - 1, 5, 1, 2])
    got = recommend.predict_matrix_rows(config, params, rows, index)
    expected = numpy_reconstruction(params, train, orientation)[index]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(recommend.dense_rows(rows, index), to_dense(rows)[index])
    with pytest.raises(IndexError):
        recommend.predict_matrix_rows(config, params, rows, [rows.num_rows])


@pytest.mark.parametrize("orientation", ["item", "user"])
def test_predict_pairs_matches_numpy_for_raw_ids_as_ints_or_text(orientation):
    config = make_config(orientation)
    train = split(config)[0]
    params = make_params(config, train, seed=1)
    rng = np.random.default_rng(0)
    users = rng.integers(0, train.num_users, 50)
    items = rng.integers(0, train.num_items, 50)
    recon = numpy_reconstruction(params, train, orientation)
    expected = recon[items, users] if orientation == "item" else recon[users, items]
    raw_users, raw_items = train.user_ids[users], train.item_ids[items]
    got = recommend.predict_pairs(config, params, train, raw_users, raw_items)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    as_text = recommend.predict_pairs(config, params, train, [str(u) for u in raw_users],
                                      [f" {i}" for i in raw_items])
    np.testing.assert_array_equal(as_text, got)


def test_predict_pairs_clips_to_the_training_range_when_configured():
    config = make_config(clip_predictions=True)
    train = split(config)[0]
    params = make_params(config, train, seed=2)
    users = np.repeat(train.user_ids, train.num_items)
    items = np.tile(train.item_ids, train.num_users)
    got = recommend.predict_pairs(config, params, train, users, items)
    raw = recommend.predict_pairs(make_config(), params, train, users, items)
    np.testing.assert_allclose(got, np.clip(raw, train.ratings.min(), train.ratings.max()))
    assert np.any(got != raw)


def test_unknown_ids_are_one_line_errors_unless_a_cold_start_value_is_given():
    config = make_config()
    train = split(config)[0]
    params = make_params(config, train)
    users = [train.user_ids[0], 999, 998, train.user_ids[1]]
    items = [train.item_ids[0], train.item_ids[1], train.item_ids[2], "abc"]
    with pytest.raises(DataError) as info:
        recommend.predict_pairs(config, params, train, users, items)
    assert "\n" not in str(info.value) and "unknown user ids 999, 998" in str(info.value)
    with pytest.raises(DataError, match="unknown item id 'abc'"):
        recommend.predict_pairs(config, params, train, users[:1] + users[3:], items[:1] + items[3:])
    got = recommend.predict_pairs(config, params, train, users, items, cold_start=3.0)
    known = recommend.predict_pairs(config, params, train, users[:1], items[:1])
    np.testing.assert_array_equal(got[1:], [3.0, 3.0, 3.0])
    assert got[0] == known[0]


def test_params_of_another_width_are_refused():
    config = make_config()
    train = split(config)[0]
    params = make_params(config, train)
    with pytest.raises(DataError, match="params belong to another"):
        recommend.predict_pairs(make_config("user"), params, train, train.user_ids[:1],
                                train.item_ids[:1])


@pytest.mark.parametrize("orientation", ["item", "user"])
def test_top_k_matches_numpy_argsort_without_rated_or_untrained_items(orientation):
    config = make_config(orientation)
    train = split(config)[0]
    params = make_params(config, train, seed=3)
    recon = numpy_reconstruction(params, train, orientation)
    for user in (0, 7, train.num_users - 1):
        scores = recon[:, user] if orientation == "item" else recon[user]
        eligible = np.bincount(train.items, minlength=train.num_items) > 0
        eligible[train.items[train.users == user]] = False
        order = np.argsort(-np.where(eligible, scores, -np.inf), kind="stable")
        order = order[:min(5, eligible.sum())]
        got = recommend.top_k(config, params, train, train.user_ids[user], k=5)
        assert [item for item, _ in got] == train.item_ids[order].tolist()
        np.testing.assert_allclose([s for _, s in got], scores[order], rtol=1e-5, atol=1e-5)
    everything = recommend.top_k(config, params, train, str(train.user_ids[0]), k=1000,
                                 exclude_rated=False, exclude_untrained=False)
    assert len(everything) == train.num_items


def test_top_k_unknown_user_is_a_one_line_error():
    config = make_config()
    train = split(config)[0]
    with pytest.raises(DataError, match=r"^unknown user id 12345 \(1 in all\)"):
        recommend.top_k(config, make_params(config, train), train, 12345)


def test_predictions_of_a_trained_run_reproduce_its_test_rmse():
    try:
        from autorec_jax.run.experiment import train_and_evaluate
    except ImportError:
        from autorec_jax.train import train_and_evaluate
    config = make_config(parallel="jit", epochs=3, batch_size=8)
    result = train_and_evaluate(config, ratings=RATINGS)
    train, _, test = split(config)
    pred = recommend.predict_pairs(config, result.state.params, train,
                                   test.user_ids[test.users], test.item_ids[test.items])
    rmse = np.sqrt(np.mean((pred.astype(np.float64) - test.ratings) ** 2))
    np.testing.assert_allclose(rmse, result.summary["test_rmse"], rtol=1e-5)


def test_training_ratings_refuses_ids_that_differ_from_the_runs(tmp_path):
    path = tmp_path / "r.tsv"
    path.write_text(udata_text(RATINGS))
    config = make_config(ratings=str(path))
    train = recommend.training_ratings(config, user_ids=RATINGS.user_ids,
                                       item_ids=RATINGS.item_ids)
    assert len(train) == len(split(config)[0])
    with pytest.raises(DataError, match="saved 22 user ids but its data now gives 23"):
        recommend.training_ratings(config, user_ids=RATINGS.user_ids[1:])


def test_read_pairs_with_or_without_header_and_bad_lines(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("user,item\n1, 2\n\n3,4\n")
    assert recommend.read_pairs(path) == (["1", "3"], ["2", "4"])
    path.write_text("1,2\nuser,item\n")
    assert recommend.read_pairs(path) == (["1", "user"], ["2", "item"])
    path.write_text("1,2\n3\n")
    with pytest.raises(DataError, match=r"p.csv:2: expected 2 comma-separated fields"):
        recommend.read_pairs(path)
    with pytest.raises(DataError, match="no such file"):
        recommend.read_pairs(tmp_path / "missing.csv")


# --- the CLIs, with a run built here (autorec_jax.run.checkpoint.load_run is not used) ---

@dataclasses.dataclass(frozen=True)
class Run:
    config: config_lib.Config
    params: dict
    user_ids: np.ndarray
    item_ids: np.ndarray
    orientation: str
    summary: dict | None = None
    model: object = None


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def run(tmp_path):
    path = tmp_path / "ratings.tsv"
    path.write_text(udata_text(RATINGS))
    config = make_config(ratings=str(path))
    train = split(config)[0]
    return Run(config, make_params(config, train, seed=5), train.user_ids, train.item_ids,
               "item"), train


def test_recommend_cli_prints_top_k_as_text_or_json(run, capsys):
    run, train = run
    main = load_script("recommend").main
    args = ["RUN", "--user", str(train.user_ids[2]), "--top", "3", "--compilation-cache", "off"]
    assert main(args, load_run=lambda _: run) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = recommend.top_k(run.config, run.params, train, train.user_ids[2], k=3)
    assert len(lines) == 4 and lines[1].endswith(f"item {expected[0][0]}")
    assert main(args + ["--json"], load_run=lambda _: run) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(i["item"], i["score"]) for i in out["items"]] == expected
    assert out["user"] == train.user_ids[2] and out["items"][0]["title"] is None


def test_recommend_cli_errors_exit_1_or_2_with_one_line(run, capsys):
    run, _ = run
    main = load_script("recommend").main
    assert main(["RUN", "--user", "999", "--compilation-cache", "off"],
                load_run=lambda _: run) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown user id '999'" in err
    with pytest.raises(SystemExit) as info:
        main(["RUN", "--user", "1", "--top", "0"], load_run=lambda _: run)
    assert info.value.code == 2


def test_predict_cli_writes_predictions_and_handles_unknown_ids(run, tmp_path, capsys):
    run, train = run
    main = load_script("predict").main
    pairs, out = tmp_path / "pairs.csv", tmp_path / "pred.csv"
    users, items = train.user_ids[[0, 5, 9]], train.item_ids[[3, 3, 1]]
    pairs.write_text("user,item\n" + "".join(f"{u},{i}\n" for u, i in zip(users, items)))
    args = ["RUN", str(pairs), "--out", str(out), "--compilation-cache", "off"]
    assert main(args, load_run=lambda _: run) == 0
    lines = out.read_text().splitlines()
    expected = recommend.predict_pairs(run.config, run.params, train, users, items)
    assert lines[0] == "user,item,prediction"
    np.testing.assert_allclose([float(line.split(",")[2]) for line in lines[1:]], expected,
                               rtol=1e-5)
    pairs.write_text(f"{users[0]},{items[0]}\n999,{items[0]}\n")
    assert main(args, load_run=lambda _: run) == 1
    assert "unknown user id '999'" in capsys.readouterr().err
    assert main(args + ["--cold-start", "3"], load_run=lambda _: run) == 0
    assert out.read_text().splitlines()[2] == f"999,{items[0]},3"
    with pytest.raises(SystemExit) as info:
        main(args + ["--cold-start", "nan"], load_run=lambda _: run)
    assert info.value.code == 2
