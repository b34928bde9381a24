"""The worked examples in scripts/research/: each tweak takes effect (checked against NumPy or
a run without it), jit and pmap agree where the tweak is deterministic, and every script's
main() runs from the command line and ends with the test RMSE line."""

import importlib.util
import logging
import re
import types
from pathlib import Path

import chex
import jax
import numpy as np
import optax
import pytest

import autorec_jax as ar
from autorec_jax.data import row_matrix, to_dense
from synthetic import random_ratings, udata_text

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts" / "research"
NAMES = ["clip_and_noise", "encoder_decoder_lr", "hidden_l1", "entry_weights",
         "per_row_grad_norms", "layer_norms", "optimizer_swap", "own_loop", "own_module",
         "lbfgs"]
RATINGS = random_ratings(num_users=24, num_items=32, density=0.3, seed=0)
needs_devices = pytest.mark.skipif(jax.device_count() < 2, reason="needs several devices")


def load(name: str) -> types.ModuleType:
    """A script imported by its path (scripts/research is not a package)."""
    spec = importlib.util.spec_from_file_location(f"research_{name}", SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def small_config(**overrides) -> ar.Config:
    base = dict(hidden=(4,), dropout=0.0, batch_size=16, epochs=2, eval_batch_size=32,
                lr=0.01, last_batch="pad", parallel="jit")
    return ar.replace(ar.tiny(), **{**base, **overrides})


def host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


def initial_params(config):
    """The parameters a run of `config` starts from (setup compiles nothing)."""
    return host(ar.setup(config, RATINGS)[1].params)


def dense_train_rows(config):
    return to_dense(row_matrix(ar.setup(config, RATINGS)[0].train, config.data.orientation))


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def numpy_grads(params, x, weights=None, denominator=1.0):
    """Gradients of sum(w * mask * (out - x)^2) / denominator (sigmoid / identity net)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    x = np.asarray(x, np.float64)
    hidden = sigmoid(x @ p["hidden_0"]["kernel"] + p["hidden_0"]["bias"])
    out = hidden @ p["output"]["kernel"] + p["output"]["bias"]
    w = np.ones_like(x) if weights is None else weights
    d_out = 2 * w * (x != 0) * (out - x) / denominator
    d_pre = (d_out @ p["output"]["kernel"].T) * hidden * (1 - hidden)
    return {"hidden_0": {"kernel": x.T @ d_pre, "bias": d_pre.sum(0)},
            "output": {"kernel": hidden.T @ d_out, "bias": d_out.sum(0)}}


def max_abs_diff(a, b) -> float:
    return max(jax.tree.leaves(jax.tree.map(lambda u, v: float(np.max(np.abs(u - v))), a, b)))


@needs_devices
def test_clip_and_noise_bounds_every_step_and_noise_is_shared_across_devices():
    module = load("clip_and_noise")
    config = small_config(optimizer="sgd", lr=1.0, weight_decay=0.0)
    clip = 1e-3
    clipped = module.run(config, RATINGS, clip_norm=clip, noise_std=0.0)
    for record in clipped.history:  # raw gradients exceed the bound and are scaled onto it
        assert record["grad_norm"] == pytest.approx(clip, rel=1e-4)
        assert record["update_norm"] == pytest.approx(clip, rel=1e-4)
    # Every step, not only the logged ones: SGD with lr 1 moves at most `clip` per step.
    start = initial_params(config)
    moved = float(optax.tree.norm(jax.tree.map(np.subtract, host(clipped.state.params), start)))
    assert 0 < moved <= clipped.summary["steps"] * clip * (1 + 1e-4)
    noisy = {mode: host(module.run(ar.replace(config, parallel=mode), RATINGS, clip_norm=clip,
                                   noise_std=1e-3).state.params) for mode in ("jit", "pmap")}
    chex.assert_trees_all_close(noisy["pmap"], noisy["jit"], atol=1e-6, rtol=0)
    assert max_abs_diff(noisy["jit"], host(clipped.state.params)) > 1e-4


@needs_devices
def test_encoder_decoder_lr_zero_decoder_lr_freezes_the_output_layer_only():
    module = load("encoder_decoder_lr")
    config = small_config(weight_decay=0.1)  # the decay must not move the output either
    start = initial_params(config)
    params = {mode: host(module.run(ar.replace(config, parallel=mode), RATINGS,
                                    encoder_lr=0.05, decoder_lr=0.0).state.params)
              for mode in ("jit", "pmap")}
    chex.assert_trees_all_equal(params["jit"]["output"], start["output"])
    assert max_abs_diff(params["jit"]["hidden_0"], start["hidden_0"]) > 1e-2
    chex.assert_trees_all_close(params["pmap"], params["jit"], atol=1e-5, rtol=0)


@needs_devices
def test_hidden_l1_lowers_the_activations_and_agrees_across_devices():
    module = load("hidden_l1")
    config = small_config(epochs=3, lr=0.05)
    x = dense_train_rows(config)

    def mean_hidden(result):
        params = host(result.state.params)["hidden_0"]
        return float(np.mean(np.abs(sigmoid(x @ params["kernel"] + params["bias"]))))

    plain = module.run(config, RATINGS, weight=0.0)
    strong = module.run(config, RATINGS, weight=10.0)
    assert mean_hidden(strong) < 0.5 * mean_hidden(plain)
    assert strong.history[-1]["train/l1"] < plain.history[-1]["train/l1"]
    pmap = module.run(ar.replace(config, parallel="pmap"), RATINGS, weight=10.0)
    chex.assert_trees_all_close(host(pmap.state.params), host(strong.state.params),
                                atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["jit", pytest.param("pmap", marks=needs_devices)])
def test_hidden_l1_metric_and_loss_equal_numpy_without_padding_rows(mode):
    module = load("hidden_l1")
    config = small_config(parallel=mode, loss="sum")
    rows = dense_train_rows(config)
    ratings = np.concatenate([rows[:13], np.zeros((1, rows.shape[1]), np.float32)])
    batch = {"ratings": ratings, "row_mask": np.arange(14) < 13}  # one padding row (+ pmap's)
    state = ar.create_train_state(config, rows.shape[1], jax.random.key(0))
    params = host(state.params)
    step_fn = ar.make_train_step(config, parallel=mode, loss_fn=module.hidden_l1_loss(0.5))
    _, metrics = step_fn(step_fn.parallel.replicate(state), batch, jax.random.key(1))
    x = rows[:13].astype(np.float64)
    hidden = sigmoid(x @ params["hidden_0"]["kernel"] + params["hidden_0"]["bias"])
    pred = hidden @ params["output"]["kernel"] + params["output"]["bias"]
    sse = np.sum(np.where(x != 0, pred - x, 0.0) ** 2)
    assert float(metrics["train/l1"]) == pytest.approx(hidden.sum(), rel=1e-5)
    assert float(metrics["loss_sum"]) == pytest.approx(sse + 0.5 * hidden.sum(), rel=1e-5)


@pytest.mark.parametrize("orientation, mode", [
    ("item", "jit"), pytest.param("user", "pmap", marks=needs_devices)])
def test_entry_weights_step_equals_numpy_weighted_sse_gradient(orientation, mode):
    module = load("entry_weights")
    config = small_config(orientation=orientation, parallel=mode, optimizer="sgd", lr=0.01,
                          weight_decay=0.0, loss="sum", epochs=1, batch_size=64)
    experiment, state = ar.setup(config, RATINGS)
    start, train = host(state.params), experiment.train
    result = module.run(config, RATINGS)
    assert result.summary["steps"] == 1  # one full batch: one step of the weighted SSE
    popularity = np.bincount(train.items, minlength=train.num_items)
    rows, cols = (train.items, train.users) if orientation == "item" else (train.users,
                                                                           train.items)
    x = to_dense(row_matrix(train, orientation))
    weights = np.zeros_like(x, np.float64)
    weights[rows, cols] = 1.0 / np.sqrt(popularity[train.items])
    assert len(np.unique(weights[x != 0])) > 1  # the weights really vary
    grads = numpy_grads(start, x, weights)
    expected = jax.tree.map(lambda p, g: p - 0.01 * g, start, grads)
    chex.assert_trees_all_close(host(result.state.params), expected, rtol=1e-4, atol=1e-6)


def test_per_row_grad_norms_reports_numpy_norms_that_add_up_to_the_batch_gradient(capsys):
    module = load("per_row_grad_norms")
    config = small_config()
    result, per_row, norms, gap = module.run(config, RATINGS, rows=6)
    flat = [np.asarray(g, np.float64).reshape(6, -1) for g in jax.tree.leaves(per_row)]
    expected = np.sqrt(sum(np.sum(g * g, axis=1) for g in flat))
    np.testing.assert_allclose(norms, expected, rtol=1e-5)
    assert len(np.unique(np.round(expected, 8))) == 6
    out = capsys.readouterr().out
    assert (f"min {expected.min():.4g}  median {np.median(expected):.4g}  "
            f"max {expected.max():.4g}") in out
    # The batch gradient of the book's loss, by hand: sum / (2 * rows * N).
    x = dense_train_rows(config)[:6]
    batch_grads = numpy_grads(host(result.state.params), x, denominator=2 * 6 * x.shape[1])
    summed = jax.tree.map(lambda g: np.sum(np.asarray(g, np.float64), 0), per_row)
    chex.assert_trees_all_close(summed, batch_grads, rtol=1e-4, atol=1e-8)
    assert 0 <= gap < 1e-6 and f"= {gap:.3g}" in out


def test_layer_norms_prints_the_historys_per_layer_grad_norms(capsys):
    module = load("layer_norms")
    result, layers, table = module.run(small_config(hidden=(4, 3), epochs=3), RATINGS)
    assert layers == ["hidden_0", "hidden_1", "output"]
    lines = capsys.readouterr().out.splitlines()[-len(table):]
    assert len(table) == len(result.history) == 3
    for record, row, line in zip(result.history, table, lines):
        printed = [float(v) for v in line.split()]
        logged = [record[f"grad_norm/{name}"] for name in layers]
        assert row == [record["epoch"], *logged]
        assert printed == pytest.approx([record["epoch"], *logged], rel=1e-4)
        # Per-layer norms are norms of a partition of the gradient: they make up the global.
        assert np.sqrt(np.sum(np.square(logged))) == pytest.approx(record["grad_norm"], rel=1e-5)


@needs_devices
def test_optimizer_swap_trains_with_lions_and_adamws_state():
    module = load("optimizer_swap")
    config = small_config(weight_decay=0.1)  # AdamW differs from Adam in its decay only
    adam = ar.train_and_evaluate(config, ratings=RATINGS)
    adam_params = host(adam.state.params)
    results = {name: module.run(config, RATINGS, name=name) for name in ("lion", "adamw")}
    for name, reference in (("lion", optax.lion(0.1)), ("adamw", optax.adamw(0.1))):
        state = results[name].state
        structure = jax.tree.structure(state.opt_state)
        assert structure == jax.tree.structure(reference.init(adam_params))
        assert structure != jax.tree.structure(adam.state.opt_state)
        assert max_abs_diff(host(state.params), adam_params) > 1e-4
    pmap = module.run(ar.replace(config, parallel="pmap"), RATINGS, name="adamw")
    chex.assert_trees_all_close(host(pmap.state.params), host(results["adamw"].state.params),
                                atol=1e-5, rtol=0)


@needs_devices
def test_own_loop_agrees_across_devices_and_scores_like_a_numpy_forward_pass(capsys):
    module = load("own_loop")
    config = small_config(batch_size=12)  # the last batch of each epoch is padded
    runs = {mode: module.run(ar.replace(config, parallel=mode), RATINGS)
            for mode in ("jit", "pmap")}
    params = host(runs["jit"][0].params)
    chex.assert_trees_all_close(host(runs["pmap"][0].params), params, atol=1e-5, rtol=0)
    assert max_abs_diff(params, initial_params(config)) > 1e-3
    experiment, _ = ar.setup(config, RATINGS)
    x = to_dense(row_matrix(experiment.train, "item")).astype(np.float64)
    hidden = sigmoid(x @ params["hidden_0"]["kernel"] + params["hidden_0"]["bias"])
    pred = hidden @ params["output"]["kernel"] + params["output"]["bias"]
    test = experiment.test
    rmse = np.sqrt(np.mean((pred[test.items, test.users] - test.ratings) ** 2))
    for _, scores in runs.values():
        assert scores["test"]["rmse"] == pytest.approx(rmse, rel=1e-5)
    # The padding rows of each epoch's last batch are no-ops: only the real rows count.
    assert f"epoch 2  last step: {experiment.num_rows % 12} rows" in capsys.readouterr().out


@pytest.fixture(scope="module")
def ratings_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "ratings.tsv"
    path.write_text(udata_text(random_ratings(num_users=24, num_items=40, seed=5)))
    return path


@pytest.fixture
def keep_log_level():
    logger = logging.getLogger("autorec_jax")
    level = logger.level
    yield
    logger.setLevel(level)


EXTRA_FLAGS = {"clip_and_noise": ["--clip-norm", "0.1", "--noise-std", "1e-3"],
               "encoder_decoder_lr": ["--decoder-lr", "0.001"], "hidden_l1": ["--l1", "0.1"],
               "entry_weights": ["--power", "1"], "per_row_grad_norms": ["--rows", "4"],
               "optimizer_swap": ["--optimizer-name", "adamw"], "lbfgs": ["--batch-size", "0"]}


@pytest.mark.parametrize("name, mode", [(name, "jit") for name in NAMES] + [
    pytest.param(name, "pmap", marks=needs_devices) for name in ("clip_and_noise", "own_loop")])
def test_main_ends_with_the_test_rmse_line(name, mode, ratings_file, tmp_path, capsys,
                                           keep_log_level):
    argv = ["--preset", "tiny", "--epochs", "1", "--hidden", "4", "--seed", "1",
            "--ratings", str(ratings_file), "--parallel", mode, "--out", str(tmp_path),
            "--quiet", *EXTRA_FLAGS.get(name, [])]
    assert load(name).main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"test RMSE \d+\.\d{4}", lines[-1]), lines[-1]


def test_main_rejects_a_bad_config_value_with_status_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        load("clip_and_noise").main(["--dropout", "1.5", "--compilation-cache", "off"])
    assert exit_info.value.code == 2 and "model.dropout" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["jit", pytest.param("pmap", marks=needs_devices)])
def test_own_module_trains_the_layer_norm_network_and_scores_like_numpy(mode):
    module = load("own_module")
    config = small_config(parallel=mode, hidden=(5,), epochs=2)
    result = module.run(config, RATINGS)
    params = host(result.params)
    assert set(params) == {"encoder", "norm", "decoder"}
    # Test RMSE from the params by hand: sigmoid, layer norm (eps 1e-6), linear decoder.
    x = to_dense(row_matrix(result.experiment.train, "item")).astype(np.float64)
    code = sigmoid(x @ params["encoder"]["kernel"] + params["encoder"]["bias"])
    normed = (code - code.mean(1, keepdims=True)) / np.sqrt(code.var(1, keepdims=True) + 1e-6)
    pred = (normed * params["norm"]["scale"] + params["norm"]["bias"]) @ params[
        "decoder"]["kernel"] + params["decoder"]["bias"]
    test = result.experiment.test
    pred = pred[test.items, test.users]
    if config.train.clip_predictions:
        pred = np.clip(pred, result.experiment.train.ratings.min(),
                       result.experiment.train.ratings.max())
    err = pred - test.ratings
    assert result.summary["test_rmse"] == pytest.approx(np.sqrt(np.mean(err ** 2)), rel=1e-5)


def test_lbfgs_example_equals_the_configs_lbfgs():
    module = load("lbfgs")
    config = small_config(batch_size=0, weight_decay=0.0, epochs=3, loss="observed")
    injected = module.run(config, RATINGS)
    by_config = ar.train_and_evaluate(ar.replace(config, optimizer="lbfgs"), ratings=RATINGS)
    chex.assert_trees_all_close(host(injected.params), host(by_config.params), atol=1e-6)
    losses = [record["train_loss"] for record in injected.history]
    assert losses[-1] < 0.5 * losses[0]
    with pytest.raises(ar.ConfigError, match="full batch"):
        module.run(small_config(), RATINGS)
