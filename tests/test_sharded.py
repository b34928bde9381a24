"""Sharded jit (jit + shard_map over a data x model mesh) equals single-device jit."""

import functools

import chex
import jax
import numpy as np
import pytest

from autorec_jax import config as config_lib
from autorec_jax.data import batching
from autorec_jax.data.ratings import row_matrix, to_dense
from autorec_jax.errors import ConfigError
from autorec_jax.run.experiment import train_and_evaluate
from autorec_jax.distributed.parallel import MODEL_AXIS, Parallel
from autorec_jax.rows import to_device_rows
from autorec_jax.distributed.steps import make_train_step
from autorec_jax.train import create_train_state, train_epoch
from synthetic import random_ratings
from test_train import toy_config

needs_8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices")
MESHES = [pytest.param(1, id="data8"), pytest.param(2, id="data4_model2"),
          pytest.param(4, id="data2_model4")]


def rows_24(seed=1):
    """24 columns (N, divisible by 2 and 4), 40 rows, unequal row lengths."""
    return row_matrix(random_ratings(num_users=24, num_items=40, density=0.3, seed=seed),
                      "item")


def run_steps(config, parallel, rows, steps=4, batch_rows=30):
    """SGD steps on dense batches (30 rows: not a multiple of 8, so shares are unequal)."""
    dense = to_dense(rows)
    step = make_train_step(config, parallel=parallel)
    state = step.parallel.replicate(
        create_train_state(config, rows.num_cols, jax.random.key(0)), row_width=rows.num_cols)
    for i in range(steps):
        index = np.random.default_rng(i).permutation(rows.num_rows)[:batch_rows]
        state, metrics = step(state, {"ratings": dense[index]}, jax.random.key(5))
    return state, jax.device_get(metrics)


@needs_8
@pytest.mark.parametrize("model", MESHES)
@pytest.mark.parametrize("loss", ["book", "observed"])
def test_sharded_steps_equal_jit(model, loss):
    config = toy_config(loss=loss, lr=0.3, hidden=(6,))
    rows = rows_24()
    jit_state, jit_metrics = run_steps(config, Parallel.create("jit"), rows)
    sharded = Parallel.create("sharded", model=model)
    assert (sharded.data_size, sharded.model) == (8 // model, model)
    state, metrics = run_steps(config, sharded, rows)
    chex.assert_trees_all_close(jax.device_get(state.params), jax.device_get(jit_state.params),
                                atol=1e-5, rtol=0)
    for key in ("loss", "loss_sum", "loss_count", "rows", "grad_norm"):
        assert metrics[key] == pytest.approx(jit_metrics[key], rel=1e-5), key
    initial = create_train_state(config, rows.num_cols, jax.random.key(0)).params
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()),
                         jax.device_get(jit_state.params), initial)
    assert max(jax.tree.leaves(moved)) > 1e-2  # the comparison is not vacuous
    if model > 1:  # the N axis of V, W, b (and of the optimiser state) is really split
        kernel = state.params["hidden_0"]["kernel"]
        assert kernel.sharding.spec[0] == MODEL_AXIS
        assert kernel.addressable_shards[0].data.shape == (24 // model, 6)
        assert state.params["output"]["bias"].addressable_shards[0].data.shape == (24 // model,)


@needs_8
@pytest.mark.parametrize("model", [1, 2])
def test_sharded_epochs_equal_jit(model):
    """The compiled epoch (CSR rows densified on the device) under the mesh equals jit."""
    config = toy_config(lr=0.3, batch_size=30)
    rows = rows_24(seed=2)
    index = np.stack([np.random.default_rng(s).permutation(rows.num_rows)[:30]
                      for s in range(3)]).astype(np.int32)
    results = []
    for parallel in (Parallel.create("jit"), Parallel.create("sharded", model=model)):
        fn = parallel.compile(functools.partial(
            train_epoch, config=config, max_nnz=batching.max_nnz(
                rows.row_lengths, parallel.rows_per_device(30), 2)),
            in_axes=(None, None, 0, None), donate_argnums=(0,))
        state = parallel.replicate(create_train_state(config, rows.num_cols,
                                                      jax.random.key(0)), rows.num_cols)
        data, rng = parallel.replicate(to_device_rows(rows)), parallel.replicate(
            jax.random.key(3))
        for _ in range(2):
            state, metrics = fn(state, data, parallel.shard(index), rng)
        results.append((jax.device_get(state.params), jax.device_get(metrics)))
    chex.assert_trees_all_close(results[1][0], results[0][0], atol=1e-5, rtol=0)
    chex.assert_trees_all_close(results[1][1], results[0][1], rtol=1e-5, atol=1e-6)


@needs_8
def test_whole_runs_sharded_and_jit_agree():
    ratings = random_ratings(num_users=32, num_items=64, density=0.3, seed=2)
    config = toy_config(optimizer="adam", lr=0.01, batch_size=12, epochs=2)
    results = {mode: train_and_evaluate(config_lib.replace(config, parallel=mode,
                                                           model_parallel=model),
                                        ratings=ratings)
               for mode, model in (("jit", 1), ("sharded", 2))}
    assert results["sharded"].summary["parallel"] == "sharded"
    assert results["sharded"].experiment.placed.layout == "shares"  # each device: its rows
    for a, b in zip(results["jit"].history, results["sharded"].history):
        assert a["test_rmse"] == pytest.approx(b["test_rmse"], abs=1e-5)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)


@needs_8
def test_auto_picks_sharded_and_an_indivisible_width_is_refused():
    assert Parallel.create("auto").mode == "sharded"
    parallel = Parallel.create("sharded", model=4)
    with pytest.raises(ConfigError, match="does not divide the row width N=21"):
        parallel.replicate({"kernel": np.zeros((21, 3), np.float32)}, row_width=21)
    with pytest.raises(ConfigError, match="model_parallel"):
        Parallel.create("sharded", model=3)
    with pytest.raises(ConfigError, match="needs train.parallel sharded"):
        Parallel.create("pmap", model=2)
