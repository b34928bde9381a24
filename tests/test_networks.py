"""The model seam (`model=`), kernelised AutoRec and loss-aware optimisers (L-BFGS): each
takes effect, against NumPy by hand or a second code path, under jit and pmap alike."""

import argparse

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import autorec_jax as ar
from autorec_jax import config as config_lib
from autorec_jax import networks
from autorec_jax.data.ratings import to_dense
from autorec_jax.distributed.parallel import Parallel
from autorec_jax.errors import CheckpointError, ConfigError
from autorec_jax.kernel import KernelDense, kernel_penalty, local_kernel
from autorec_jax.losses import loss_denominator, masked_sse
from autorec_jax.run import cli
from autorec_jax.train import complete_batch
from synthetic import random_ratings
from test_train import toy_config, toy_rows

needs_devices = pytest.mark.skipif(jax.device_count() < 2, reason="needs several devices")
MODES = ["jit", pytest.param("pmap", marks=needs_devices)]
ALL_MODES = [*MODES, pytest.param("sharded", marks=needs_devices)]


class LayerNormAutoRec(nn.Module):
    """A user's own network: AutoRec with a layer norm between encoder and decoder."""

    num_outputs: int
    hidden: int = 6

    @nn.compact
    def __call__(self, ratings_BxN, *, train):
        code = nn.LayerNorm(name="norm")(nn.sigmoid(nn.Dense(self.hidden, name="enc")(ratings_BxN)))
        return nn.Dense(self.num_outputs, name="dec")(code)


def numpy_kernel_layer(x, w, u, v, b, g):
    """Forward y = x (W * K) + b and the gradients of sum(y * g), derived by hand."""
    x, w, u, v, b, g = (np.asarray(a, np.float64) for a in (x, w, u, v, b, g))
    diff = u[:, None, :] - v[None, :, :]                     # [I, O, d]
    k = np.maximum(0.0, 1.0 - (diff ** 2).sum(-1))           # [I, O]
    y = x @ (w * k) + b
    d_weight = x.T @ g                                       # dL / d(W * K)
    inside = (k > 0).astype(np.float64)[..., None]
    d_k = d_weight * w
    grads = {"W": d_weight * k, "b": g.sum(0),
             "u": (d_k[..., None] * -2.0 * diff * inside).sum(1),
             "v": (d_k[..., None] * 2.0 * diff * inside).sum(0)}
    return y, k, grads


def test_kernel_layer_forward_and_gradient_equal_numpy_by_hand():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 7)).astype(np.float32)
    layer = KernelDense(features=5, dim=3)
    params = layer.init(jax.random.key(0), jnp.asarray(x))["params"]
    # Spread the embeddings so that some connections lie outside the support and some in.
    params = {**params, "u": jnp.asarray(rng.normal(scale=0.5, size=(7, 3)), jnp.float32),
              "v": jnp.asarray(rng.normal(scale=0.5, size=(5, 3)), jnp.float32)}
    g = rng.normal(size=(4, 5)).astype(np.float32)
    y, k, grads = numpy_kernel_layer(x, params["W"], params["u"], params["v"], params["b"], g)
    assert 0 < (k == 0).mean() < 1, "the case must hold connections both in and out"
    np.testing.assert_allclose(local_kernel(params["u"], params["v"]), k, atol=1e-6)
    np.testing.assert_allclose(layer.apply({"params": params}, jnp.asarray(x)), y, atol=1e-5)
    got = jax.grad(lambda p: jnp.sum(layer.apply({"params": p}, jnp.asarray(x)) * g))(params)
    for name in ("W", "b", "u", "v"):
        np.testing.assert_allclose(got[name], grads[name], atol=1e-4, err_msg=name)


def test_kernel_penalty_is_lambda_s_sum_k2_plus_lambda_2_sum_w2():
    module = ar.KernelAutoRec(num_outputs=6, hidden=(4,), dim=2)
    params = networks.init_params(module, jax.random.key(1), 6)
    by_hand = 0.0
    for layer in params.values():
        u, v, w = (np.asarray(layer[n], np.float64) for n in ("u", "v", "W"))
        k = np.maximum(0, 1 - ((u[:, None] - v[None]) ** 2).sum(-1))
        by_hand += 0.3 * (k ** 2).sum() + 2.0 * (w ** 2).sum()
    assert float(kernel_penalty(params, 0.3, 2.0)) == pytest.approx(by_hand, rel=1e-5)


def run_own_loop(config, mode, *, steps=2, batch_rows=30, model=None, optimizer=None):
    rows = toy_rows(seed=1)
    dense = to_dense(rows)
    step = ar.make_train_step(config, parallel=mode, model=model)
    state = step.parallel.replicate(ar.create_train_state(
        config, rows.num_cols, jax.random.key(0), optimizer=optimizer, model=model),
        row_width=rows.num_cols)
    metrics = None
    for i in range(steps):
        index = np.random.default_rng(i).permutation(rows.num_rows)[:batch_rows]
        state, metrics = step(state, {"ratings": dense[index]}, jax.random.key(5))
    return jax.device_get(state.params), jax.device_get(metrics), dense


def kernel_config(**overrides):
    return toy_config(network="kernel", hidden=(5,), kernel_dim=3, lambda_s=0.5,
                      lambda_2=0.2, loss="observed", lr=0.1, **overrides)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_the_kernel_penalty_enters_once_whatever_the_devices(mode):
    """One SGD step equals one taken by hand on loss + lambda_s ||K||^2 + lambda_2 ||W||^2."""
    config = kernel_config()
    params, metrics, dense = run_own_loop(config, mode, steps=1)
    rows = toy_rows(seed=1)
    start = ar.create_train_state(config, rows.num_cols, jax.random.key(0)).params
    module = networks.resolve_model(config, rows.num_cols)
    index = np.random.default_rng(0).permutation(rows.num_rows)[:30]
    x = jnp.asarray(dense[index])

    def objective(p):
        sse, count = masked_sse(module.apply({"params": p}, x, train=False), x, x != 0)
        return sse / count + kernel_penalty(p, 0.5, 0.2)

    value, grads = jax.value_and_grad(objective)(start)
    chex.assert_trees_all_close(params, jax.tree.map(lambda p, g: p - 0.1 * g, start, grads),
                                atol=1e-5)
    assert float(metrics["loss"]) == pytest.approx(float(value), rel=1e-5)
    assert float(metrics["penalty"]) == pytest.approx(float(kernel_penalty(start, 0.5, 0.2)),
                                                      rel=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_an_own_module_trains_through_model_like_a_second_code_path(mode):
    """make_train_step(model=) with a layer-norm network equals SGD on it by hand."""
    config = toy_config(lr=0.02, loss="sum")
    model = LayerNormAutoRec(num_outputs=21)
    params, _, dense = run_own_loop(config, mode, steps=1, model=model)
    start = model.init(jax.random.key(0), jnp.zeros((1, 21)), train=False)["params"]
    assert set(params) == {"enc", "norm", "dec"}
    x = jnp.asarray(dense[np.random.default_rng(0).permutation(dense.shape[0])[:30]])
    grads = jax.grad(lambda p: masked_sse(model.apply({"params": p}, x, train=False), x,
                                          x != 0)[0])(start)
    chex.assert_trees_all_close(params, jax.tree.map(lambda p, g: p - 0.02 * g, start, grads),
                                atol=1e-5, rtol=1e-5)


def test_a_run_records_its_model_and_refuses_another_on_resume_and_load(tmp_path):
    ratings = random_ratings(num_users=21, num_items=30, density=0.3)
    config = config_lib.replace(toy_config(epochs=2), eval_every=1)
    model = lambda model_config, n: LayerNormAutoRec(num_outputs=n)  # noqa: E731
    result = ar.train_and_evaluate(config, tmp_path / "run", ratings=ratings, model=model)
    assert result.summary["model"].endswith("LayerNormAutoRec")
    with pytest.raises(CheckpointError, match="LayerNormAutoRec, not autorec_jax.model.AutoRec"):
        ar.train_and_evaluate(config, tmp_path / "run", ratings=ratings, resume=True)
    with pytest.raises(CheckpointError, match="hidden=6, now 7"):
        ar.load_run(tmp_path / "run", model=lambda m, n: LayerNormAutoRec(n, hidden=7))
    run = ar.load_run(tmp_path / "run", model=model)
    # Predictions through the saved run equal the module applied to the training rows.
    train = result.experiment.train
    users, items = train.user_ids[train.users[:5]], train.item_ids[train.items[:5]]
    got = ar.predict_pairs(run.config, run.params, train, users, items, model=run.model)
    dense = to_dense(ar.row_matrix(train, "item"))
    full = run.model.apply({"params": run.params}, jnp.asarray(dense), train=False)
    np.testing.assert_allclose(got, np.asarray(full)[train.items[:5], train.users[:5]],
                               rtol=1e-5)


def test_the_model_argument_is_checked():
    config = toy_config()
    with pytest.raises(ConfigError, match="num_outputs=5 but the data's rows are 21"):
        networks.resolve_model(config, 21, LayerNormAutoRec(num_outputs=5))
    with pytest.raises(ConfigError, match="flax.linen.Module"):
        networks.resolve_model(config, 21, "autorec")

    class Shrinks(nn.Module):
        @nn.compact
        def __call__(self, x, *, train):
            return nn.Dense(3)(x)
    with pytest.raises(ConfigError, match=r"maps a \[1, 21\] row to \[1, 3\]"):
        networks.init_params(Shrinks(), jax.random.key(0), 21)


def test_kernel_and_lbfgs_settings_are_validated_and_on_the_command_line():
    assert set(config_lib.NETWORKS) == {"autorec", "kernel", "glocal"}
    for network in config_lib.NETWORKS:
        base = (config_lib.replace(config_lib.glocal(), glocal_rows=3) if network == "glocal"
                else config_lib.replace(config_lib.tiny(), network=network))
        assert networks.builtin_model(base.model, 4) is not None
    with pytest.raises(ConfigError, match="model.lambda_s and model.lambda_2"):
        config_lib.replace(config_lib.tiny(), lambda_s=0.1)
    with pytest.raises(ConfigError, match="train.batch_size must be 0"):
        config_lib.replace(config_lib.tiny(), optimizer="lbfgs")
    parser = argparse.ArgumentParser()
    cli.add_config_flags(parser)
    args = parser.parse_args(["--model", "kernel", "--lambda-s", "0.006", "--kernel-dim", "4"])
    config = cli.config_from_args(args, config_lib.tiny())
    assert (config.model.network, config.model.lambda_s, config.model.kernel_dim) == (
        "kernel", 0.006, 4)


def lbfgs_by_hand(config, start, x, steps, restart=0):
    """optax.lbfgs on the full batch's loss + (wd / 2) ||w||^2, called directly (its state
    re-initialised before every `restart`-th step when restart > 0)."""
    module = networks.resolve_model(config, x.shape[1])
    wd = config.optim.weight_decay

    def objective(p):
        sse, count = masked_sse(module.apply({"params": p}, x, train=False), x, x != 0)
        decay = 0.5 * wd * sum(jnp.sum(w * w) for w in jax.tree.leaves(p))
        return sse / loss_denominator("observed", num_rows=None, num_observed=count,
                                      row_width=x.shape[1]) + decay

    tx = optax.lbfgs(learning_rate=None, memory_size=config.optim.lbfgs_memory)
    params, state = start, tx.init(start)
    value_and_grad = jax.value_and_grad(objective)
    for step in range(steps):
        if restart and step % restart == 0:
            state = tx.init(params)
        value, grads = value_and_grad(params)
        updates, state = tx.update(grads, state, params, value=value, grad=grads,
                                   value_fn=objective)
        params = optax.apply_updates(params, updates)
    return params


@pytest.mark.parametrize("mode", ALL_MODES)
def test_lbfgs_steps_equal_optax_lbfgs_on_the_global_objective(mode):
    config = toy_config(optimizer="lbfgs", batch_size=0, loss="observed", weight_decay=0.01)
    params, metrics, dense = run_own_loop(config, mode, steps=3, batch_rows=40)
    start = ar.create_train_state(config, dense.shape[1], jax.random.key(0)).params
    x = jnp.asarray(dense[np.random.default_rng(2).permutation(dense.shape[0])[:40]])
    # The loop's batches are permutations of the same 40 rows: the same full batch.
    expected = lbfgs_by_hand(config, start, x, steps=3)
    chex.assert_trees_all_close(params, expected, atol=2e-5)
    moved = max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(params),
                                                           jax.tree.leaves(start)))
    assert moved > 1e-2


@pytest.mark.parametrize("mode", MODES)
def test_lbfgs_restarts_equal_optax_lbfgs_restarted_by_hand(mode):
    config = toy_config(optimizer="lbfgs", batch_size=0, loss="observed", weight_decay=0.01,
                        lbfgs_restart=2)
    params, _, dense = run_own_loop(config, mode, steps=3, batch_rows=40)
    start = ar.create_train_state(config, dense.shape[1], jax.random.key(0)).params
    x = jnp.asarray(dense[np.random.default_rng(2).permutation(dense.shape[0])[:40]])
    chex.assert_trees_all_close(params, lbfgs_by_hand(config, start, x, 3, restart=2),
                                atol=2e-5)
    without = lbfgs_by_hand(config, start, x, 3)
    assert max(float(np.abs(a - b).max()) for a, b in zip(jax.tree.leaves(params),
                                                          jax.tree.leaves(without))) > 1e-4


def test_lbfgs_through_optimizer_equals_the_configs():
    config = toy_config(optimizer="lbfgs", batch_size=0, loss="observed", weight_decay=0.0)
    by_config, _, _ = run_own_loop(config, "jit", steps=2, batch_rows=40)
    adam = config_lib.replace(config, optimizer="adam")
    injected, _, _ = run_own_loop(adam, "jit", steps=2, batch_rows=40,
                                  optimizer=optax.lbfgs(memory_size=10))
    chex.assert_trees_all_close(injected, by_config, atol=1e-6)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_the_line_search_objective_and_its_gradient_are_the_global_ones(mode):
    """`objective_fn` (optax.lbfgs's value_fn) and its gradient, on any split of the rows."""
    config = kernel_config()
    rows = toy_rows(seed=1)
    x = jnp.asarray(to_dense(rows)[:32])
    parallel = Parallel.create(mode)
    state = ar.create_train_state(config, rows.num_cols, jax.random.key(0))

    def per_device(state, batch, *, axis_name):
        keys = ar.step_keys(jax.random.key(1), state.step, axis_name)
        value_fn = ar.objective_fn(state, batch, keys, config=config, axis_name=axis_name)
        return jax.value_and_grad(value_fn)(state.params)

    compiled = parallel.compile(per_device, in_axes=(None, 0))
    value, grads = compiled(parallel.replicate(state, row_width=rows.num_cols),
                            parallel.split_rows(complete_batch({"ratings": x})))
    module = networks.resolve_model(config, rows.num_cols)

    def objective(p):
        sse, count = masked_sse(module.apply({"params": p}, x, train=False), x, x != 0)
        return sse / count + kernel_penalty(p, 0.5, 0.2)

    expected_value, expected_grads = jax.value_and_grad(objective)(state.params)
    assert float(value) == pytest.approx(float(expected_value), rel=1e-5)
    chex.assert_trees_all_close(jax.device_get(grads), expected_grads, atol=1e-5, rtol=1e-4)


def test_a_kernel_run_logs_its_penalty_and_a_plain_run_does_not():
    ratings = random_ratings(num_users=21, num_items=30, density=0.3)
    kernel = ar.train_and_evaluate(kernel_config(epochs=1), ratings=ratings)
    plain = ar.train_and_evaluate(toy_config(epochs=1), ratings=ratings)
    assert kernel.history[0]["train_penalty"] > 0 and "train_penalty" not in plain.history[0]
    assert kernel.summary["model"] == "autorec_jax.kernel.KernelAutoRec"
