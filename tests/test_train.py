"""The train step and loop: numerics vs NumPy, tracing, donation, jit == pmap, the loop's I/O."""

import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autorec_jax import config as config_lib
from autorec_jax.data import batching
from autorec_jax.data.ratings import row_matrix, to_dense
from autorec_jax.errors import TrainingDivergedError
from autorec_jax.losses import observed_mask
from autorec_jax.distributed.parallel import Parallel
from autorec_jax.rows import to_device_rows
from autorec_jax.run.experiment import train_and_evaluate
from autorec_jax.train import create_train_state, train_epoch, train_step
from synthetic import random_ratings
from test_model import dot_precisions

needs_devices = pytest.mark.skipif(jax.device_count() < 2, reason="needs several devices")


def toy_config(**overrides):
    base = dict(hidden=(6,), dropout=0.0, optimizer="sgd", lr=0.5, weight_decay=0.0,
                batch_size=8, epochs=3, eval_batch_size=16)
    base.update(overrides)
    return config_lib.replace(config_lib.tiny(), **base)


def toy_rows(seed=0):
    return row_matrix(random_ratings(num_users=21, num_items=40, density=0.3, seed=seed), "item")


def batch_of(dense_rows, index):
    ratings = jnp.asarray(np.where((index >= 0)[:, None], dense_rows[np.maximum(index, 0)], 0))
    return {"ratings": ratings, "mask": observed_mask(ratings), "row_mask": jnp.asarray(index >= 0)}


def numpy_sgd_step(params, x, lr, denominator):
    """One SGD step of the book's loss, gradients derived by hand (sigmoid / identity)."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    v, b1, w, b2 = (p["hidden_0"]["kernel"], p["hidden_0"]["bias"], p["output"]["kernel"],
                    p["output"]["bias"])
    hidden = 1 / (1 + np.exp(-(x @ v + b1)))
    out = hidden @ w + b2
    d_out = 2 * (x != 0) * (out - x) / denominator
    d_pre = (d_out @ w.T) * hidden * (1 - hidden)
    return {"hidden_0": {"kernel": v - lr * x.T @ d_pre, "bias": b1 - lr * d_pre.sum(0)},
            "output": {"kernel": w - lr * hidden.T @ d_out, "bias": b2 - lr * d_out.sum(0)}}


@pytest.mark.parametrize("loss", ["book", "observed", "sum"])
def test_sgd_step_equals_hand_derived_numpy_gradient(loss):
    config = toy_config(loss=loss, lr=0.3)
    rows = toy_rows()
    dense = to_dense(rows)
    index = np.array([3, 17, 0, 25, -1], np.int32)  # one padding row
    state = create_train_state(config, rows.num_cols, jax.random.key(0))
    expected_params = jax.tree.map(np.asarray, state.params)
    x = np.where((index >= 0)[:, None], dense[np.maximum(index, 0)], 0).astype(np.float64)
    denominator = {"book": 2 * 4 * rows.num_cols, "observed": (x != 0).sum(), "sum": 1}[loss]
    expected = numpy_sgd_step(expected_params, x, 0.3, denominator)
    new_state, metrics = jax.jit(functools.partial(train_step, config=config))(
        state, batch_of(dense, index), jax.random.key(1))
    # float32 against float64: rtol 1e-5 holds because the model's matmuls run at precision
    # "highest" (the default) on every backend. At "default" a TPU multiplies in one bf16
    # pass (8 mantissa bits, relative error ~4e-3 per product) and this needs rtol ~1e-2.
    chex.assert_trees_all_close(jax.tree.map(np.asarray, new_state.params), expected,
                                rtol=1e-5, atol=1e-6)
    assert int(new_state.step) == 1 and float(metrics["rows"]) == 4
    assert float(metrics["observed"]) == (x != 0).sum()


@pytest.mark.parametrize("precision", ["highest", "default"])
def test_matmul_precision_reaches_the_backward_pass(precision):
    config = toy_config(matmul_precision=precision)
    rows = toy_rows()
    state = create_train_state(config, rows.num_cols, jax.random.key(0))
    lowered = jax.jit(functools.partial(train_step, config=config)).lower(
        state, batch_of(to_dense(rows), np.arange(8, dtype=np.int32)), jax.random.key(1))
    # Two forward matmuls, three backward (no gradient with respect to the input).
    assert dot_precisions(lowered.as_text()) == [precision.upper()] * 5


def test_coupled_weight_decay_equals_l2_term_in_the_loss():
    rows = toy_rows()
    dense = to_dense(rows)
    index = np.arange(8, dtype=np.int32)
    decayed = toy_config(weight_decay=0.1, loss="sum")
    plain = toy_config(weight_decay=0.0, loss="sum")
    state = create_train_state(decayed, rows.num_cols, jax.random.key(0))
    new_decayed, _ = train_step(state, batch_of(dense, index), jax.random.key(1), config=decayed)
    # The same step without decay, plus SGD on (wd / 2) * ||w||^2: w -= lr * wd * w.
    new_plain, _ = train_step(create_train_state(plain, rows.num_cols, jax.random.key(0)),
                              batch_of(dense, index), jax.random.key(1), config=plain)
    expected = jax.tree.map(lambda new, old: new - 0.5 * 0.1 * old, new_plain.params,
                            state.params)
    chex.assert_trees_all_close(new_decayed.params, expected, rtol=1e-5, atol=1e-7)


def test_loss_drops_and_the_step_traces_once():
    config = toy_config(optimizer="adam", lr=0.01, dropout=0.1)
    rows = toy_rows()
    dense = to_dense(rows)
    state = create_train_state(config, rows.num_cols, jax.random.key(0))

    @chex.assert_max_traces(n=1)
    def step_fn(state, batch, rng):
        return train_step(state, batch, rng, config=config)

    step = jax.jit(step_fn, donate_argnums=0)
    losses = []
    for i in range(60):
        index = np.random.default_rng(i).permutation(rows.num_rows)[:8].astype(np.int32)
        state, metrics = step(state, batch_of(dense, index), jax.random.key(7))
        losses.append(float(metrics["loss"]))
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])


def test_donated_state_cannot_be_reused():
    config = toy_config()
    rows = toy_rows()
    state = create_train_state(config, rows.num_cols, jax.random.key(0))
    step = jax.jit(functools.partial(train_step, config=config), donate_argnums=0)
    batch = batch_of(to_dense(rows), np.arange(8, dtype=np.int32))
    new_state, _ = step(state, batch, jax.random.key(1))
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(state.params))
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(new_state.params))
    with pytest.raises((RuntimeError, ValueError), match="deleted"):
        step(state, batch, jax.random.key(1))


def run_epochs(parallel, config, rows, index_SxB, epochs=2):
    """Runs train_epoch `epochs` times under `parallel`; returns (params, stacked metrics)."""
    repeats = 2
    fn = parallel.compile(functools.partial(
        train_epoch, config=config,
        max_nnz=batching.max_nnz(rows.row_lengths, parallel.rows_per_device(index_SxB.shape[1]),
                                 repeats)), in_axes=(None, None, 0, None), donate_argnums=(0,))
    state = parallel.replicate(create_train_state(config, rows.num_cols, jax.random.key(0)))
    data = parallel.replicate(to_device_rows(rows))
    rng = parallel.replicate(jax.random.key(3))
    all_metrics = []
    for _ in range(epochs):
        state, metrics = fn(state, data, parallel.shard(index_SxB), rng)
        all_metrics.append(metrics)
    return jax.device_get(state.params), jax.device_get(all_metrics)


@pytest.mark.parametrize("steps", [1, 4])
def test_train_epoch_equals_its_steps_one_by_one(steps):
    # train_epoch gathers step s + 1's entries while step s trains and runs the norm step
    # after its scan: the same steps, keys and metrics as train_step called once per batch.
    config = toy_config(optimizer="adam", lr=0.05, dropout=0.3, weight_decay=1e-3)
    rows = toy_rows(seed=4)
    rng = np.random.default_rng(5)
    index = np.stack([rng.permutation(rows.num_rows)[:8] for _ in range(steps)]).astype(np.int32)
    index[-1, -2:] = batching.PAD_ROW  # padding rows in the norm step
    max_nnz = batching.max_nnz(rows.row_lengths, 8)
    key = jax.random.key(9)
    state = create_train_state(config, rows.num_cols, jax.random.key(0))
    epoch = jax.jit(functools.partial(train_epoch, config=config, max_nnz=max_nnz))
    epoch_state, epoch_metrics = epoch(state, to_device_rows(rows), jnp.asarray(index), key)
    step = jax.jit(functools.partial(train_step, config=config), static_argnames="with_norms")
    dense = to_dense(rows)
    expected = []
    for s in range(steps):
        state, metrics = step(state, batch_of(dense, index[s]), key, with_norms=s == steps - 1)
        expected.append(metrics)
    expected = jax.tree.map(lambda *m: np.stack(m), *expected)
    chex.assert_trees_all_close(epoch_state.params, state.params, atol=1e-6, rtol=1e-6)
    chex.assert_trees_all_close(epoch_metrics, expected, atol=1e-6, rtol=1e-5)
    assert int(epoch_state.step) == steps
    assert np.all(epoch_metrics["grad_norm"][:-1] == 0) and epoch_metrics["grad_norm"][-1] > 0


def test_train_epoch_of_no_steps_returns_the_state_and_empty_metrics():
    config = toy_config()
    rows = toy_rows()
    state = create_train_state(config, rows.num_cols, jax.random.key(0))
    epoch = jax.jit(functools.partial(train_epoch, config=config, max_nnz=64))
    out, metrics = epoch(state, to_device_rows(rows), jnp.zeros((0, 8), jnp.int32),
                         jax.random.key(1))
    chex.assert_trees_all_equal(out.params, state.params)
    assert int(out.step) == 0
    assert metrics["loss"].shape == (0,) and metrics["grad_norm"].shape == (0,)


def unbalanced_index(rows, batch_size, steps, devices, seed=0):
    index = np.stack([np.random.default_rng(seed + s).permutation(rows.num_rows)[:batch_size]
                      for s in range(steps)]).astype(np.int32)
    # Sanity: the devices' shares really hold different numbers of observed ratings.
    shards = Parallel("pmap", devices).shard(index)
    counts = [rows.row_lengths[shards[d][shards[d] >= 0]].sum() for d in range(devices)]
    assert len(set(counts)) > 1
    return index


@needs_devices
@pytest.mark.parametrize("loss", ["book", "observed", "sum"])
@pytest.mark.parametrize("batch_size", [16, 30])  # 30: not a multiple of 8 devices
def test_pmap_on_8_devices_equals_jit(loss, batch_size):
    config = toy_config(loss=loss, lr=0.2 if loss != "sum" else 0.002, batch_size=batch_size)
    rows = toy_rows(seed=1)
    devices = min(8, jax.device_count())
    index = unbalanced_index(rows, batch_size, steps=3, devices=devices)
    jit_params, jit_metrics = run_epochs(Parallel("jit", 1), config, rows, index)
    pmap_params, pmap_metrics = run_epochs(Parallel("pmap", devices), config, rows, index)
    chex.assert_trees_all_close(pmap_params, jit_params, atol=1e-5, rtol=0)
    chex.assert_trees_all_close(pmap_metrics, jit_metrics, rtol=1e-5, atol=1e-6)
    initial = create_train_state(config, rows.num_cols, jax.random.key(0)).params
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), jit_params, initial)
    assert max(jax.tree.leaves(moved)) > 1e-2  # the comparison is not vacuous


def test_pmap_on_one_device_equals_jit():
    config = toy_config()
    rows = toy_rows()
    index = unbalanced_index(rows, 8, steps=2, devices=2)
    jit_params, jit_metrics = run_epochs(Parallel("jit", 1), config, rows, index)
    one_params, one_metrics = run_epochs(Parallel("pmap", 1), config, rows, index)
    chex.assert_trees_all_close(one_params, jit_params, atol=1e-6, rtol=0)
    chex.assert_trees_all_close(one_metrics, jit_metrics, rtol=1e-6)


@needs_devices
def test_whole_runs_with_pmap_and_jit_agree(tmp_path):
    ratings = random_ratings(num_users=30, num_items=64, density=0.3, seed=2)
    config = toy_config(optimizer="adam", lr=0.01, batch_size=12, epochs=3)
    results = {mode: train_and_evaluate(config_lib.replace(config, parallel=mode),
                                        ratings=ratings) for mode in ("jit", "pmap")}
    assert results["pmap"].summary["num_devices"] == jax.local_device_count()
    jit_history, pmap_history = results["jit"].history, results["pmap"].history
    for a, b in zip(jit_history, pmap_history):
        assert a["test_rmse"] == pytest.approx(b["test_rmse"], abs=1e-5)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)


def test_train_and_evaluate_writes_metrics_and_summary(tmp_path):
    ratings = random_ratings(num_users=30, num_items=50, seed=3)
    config = toy_config(optimizer="adam", lr=0.01, epochs=3, eval_every=2)
    result = train_and_evaluate(config, tmp_path, ratings=ratings)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert "test_rmse" not in records[0] and "test_rmse" in records[1]  # eval_every=2, + last
    for key in ("train_loss", "train_seconds", "entries_per_sec", "grad_norm", "param_norm"):
        assert all(np.isfinite(r[key]) for r in records)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["test_rmse"] == records[-1]["test_rmse"] == result.summary["test_rmse"]
    assert summary["config"]["train"]["epochs"] == 3
    assert summary["matmul_precision"] == "highest" == summary["config"]["model"][
        "matmul_precision"]
    assert summary["data"]["train_ratings"] + summary["data"]["test_ratings"] == len(ratings)
    for key in ("test_mae", "train_seconds", "entries_per_sec", "device_kind", "device_count",
                "versions", "compile_seconds"):
        assert key in summary
    assert not list(tmp_path.glob("*.tmp"))


def test_non_finite_loss_stops_training_naming_epoch_and_step(tmp_path):
    ratings = random_ratings(num_users=30, num_items=50, seed=3)
    config = toy_config(lr=1e30, output_activation="identity", epochs=3)
    with pytest.raises(TrainingDivergedError, match=r"epoch \d+, step \d+"):
        train_and_evaluate(config, tmp_path, ratings=ratings)
    assert (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "summary.json").exists()


def test_golden_first_step_metrics_of_the_tiny_preset():
    """Pinned numbers. Update them only for a deliberate change of initialisation, PRNG,
    loss definition or optimiser defaults - never to make an unexplained drift pass."""
    config = config_lib.tiny()
    rows = row_matrix(random_ratings(num_users=40, num_items=64, density=0.2, seed=0), "item")
    state = create_train_state(config, rows.num_cols, jax.random.key(config.seed))
    index = np.arange(config.train.batch_size, dtype=np.int32)
    _, metrics = jax.jit(functools.partial(train_step, config=config))(
        state, batch_of(to_dense(rows), index), jax.random.key(1))
    got = {k: float(metrics[k]) for k in ("loss", "grad_norm", "update_norm", "param_norm")}
    assert got == pytest.approx(GOLDEN, rel=1e-5)


GOLDEN = {"loss": 1.2344974279403687, "grad_norm": 0.2591378092765808,
          "update_norm": 0.0730915367603302, "param_norm": 0.3621615171432495}
