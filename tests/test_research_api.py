"""The research seams: each takes effect, under jit and pmap alike, and the guards hold."""

import functools
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import autorec_jax as ar
from autorec_jax import config as config_lib
from autorec_jax.data.ratings import to_dense
from autorec_jax.errors import ConfigError
from autorec_jax.losses import LossTerms, masked_sse, observed_mask, reconstruction_loss
from autorec_jax.model import ACTIVATIONS, AutoRec, create_model, hash_dropout, init_params
from autorec_jax.collectives import psum_if
from autorec_jax.distributed.parallel import Parallel
from autorec_jax.train import compute_grads, step_keys
from synthetic import random_ratings
from test_train import batch_of, numpy_sgd_step, toy_config, toy_rows

needs_devices = pytest.mark.skipif(jax.device_count() < 2, reason="needs several devices")
MODES = ["jit", pytest.param("pmap", marks=needs_devices)]


def fresh_state(config, rows, optimizer=None):
    return ar.create_train_state(config, rows.num_cols, jax.random.key(0), optimizer=optimizer)


def run_own_loop(config, mode, steps=3, batch_rows=30, **seams):
    rows = toy_rows(seed=1)
    dense = to_dense(rows)
    step = ar.make_train_step(config, parallel=mode, **seams)
    state = step.parallel.replicate(fresh_state(config, rows))
    for i in range(steps):
        index = np.random.default_rng(i).permutation(rows.num_rows)[:batch_rows]
        state, metrics = step(state, {"ratings": dense[index]}, jax.random.key(5))
    return jax.device_get(state.params), jax.device_get(metrics)


# --- guards the suite lacked ---------------------------------------------------------------

def test_unobserved_entries_are_selected_away_under_jit():
    """A NaN prediction at an unobserved entry must not reach the gradients (select, not
    multiply: NaN * 0 is NaN)."""
    target = jnp.array([[2.0, 0.0, 1.0], [0.0, 5.0, 0.0]])
    pred = jnp.array([[1.0, jnp.nan, 3.0], [jnp.inf, 5.5, jnp.nan]])
    sse_fn = jax.jit(lambda p: masked_sse(p, target, observed_mask(target))[0])
    grads = jax.jit(jax.grad(lambda p: masked_sse(p, target, observed_mask(target))[0]))(pred)
    assert float(sse_fn(pred)) == pytest.approx(1 + 4 + 0.25)
    assert bool(jnp.all(jnp.isfinite(grads)))
    np.testing.assert_allclose(np.asarray(grads), [[-2, 0, 4], [0, 1, 0]])


def test_a_float_mask_is_an_error_and_weights_weight():
    pred, target = jnp.array([[1.0, 2.0, 3.0]]), jnp.array([[2.0, 0.0, 1.0]])
    with pytest.raises(ConfigError, match="bool"):
        masked_sse(pred, target, jnp.array([[0.5, 1.0, 2.0]]))
    weights = jnp.array([[0.5, 7.0, 2.0]])  # 7.0 sits on an unobserved entry: ignored
    sse, count = jax.jit(lambda w: masked_sse(pred, target, target != 0, weights_BxN=w))(weights)
    assert float(sse) == pytest.approx(0.5 * 1 + 2.0 * 4) and float(count) == 2.5


@pytest.mark.parametrize("dropout_rng", ["hash", "jax"])
@pytest.mark.parametrize("rate", [0.2, 0.7])
def test_dropout_scales_kept_units_by_one_over_one_minus_rate(dropout_rng, rate):
    """At rate 0.5, 1/rate and 1/(1-rate) agree: other rates tell them apart."""
    model = AutoRec(num_outputs=4, hidden=(400,), dropout=rate, dropout_rng=dropout_rng,
                    activation="identity")
    params = init_params(model, jax.random.key(0))
    params = {**params, "hidden_0": {"kernel": jnp.zeros((4, 400)), "bias": jnp.ones(400)}}
    code = model.apply({"params": params}, jnp.ones((3, 4)), train=True, method="encode",
                       rngs={"dropout": jax.random.key(1)})
    values = np.unique(np.asarray(code))
    np.testing.assert_allclose(values, [0.0, 1.0 / (1.0 - rate)], rtol=1e-6)


def test_each_activation_name_maps_to_its_function():
    x = np.linspace(-3, 3, 13).astype(np.float32)
    expected = {
        "identity": x, "sigmoid": 1 / (1 + np.exp(-x)), "relu": np.maximum(x, 0),
        "tanh": np.tanh(x), "elu": np.where(x > 0, x, np.expm1(x)),
        "selu": 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * np.expm1(x)),
        "softplus": np.log1p(np.exp(x)),
        # flax's default gelu is the tanh approximation
        "gelu": 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3))),
    }
    assert set(expected) == set(ACTIVATIONS) == set(config_lib.ACTIVATIONS)
    for name, want in expected.items():
        np.testing.assert_allclose(np.asarray(ACTIVATIONS[name](x)), want, rtol=1e-5,
                                   atol=1e-6, err_msg=name)


# --- the model's pieces --------------------------------------------------------------------

def test_encode_decode_and_forward_compose_to_call():
    model = create_model(config_lib.ModelConfig(hidden=(7, 3), dropout=0.3), 9)
    params = init_params(model, jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (4, 9)) * 5
    rngs = {"dropout": jax.random.key(2)}
    pred = model.apply({"params": params}, x, train=True, rngs=rngs)
    code = model.apply({"params": params}, x, train=True, rngs=rngs, method="encode")
    decoded = model.apply({"params": params}, code, method="decode")
    forward, hidden = model.apply({"params": params}, x, train=True, rngs=rngs,
                                  method="forward")
    chex.assert_trees_all_close((decoded, forward), (pred, pred))
    assert [h.shape for h in hidden] == [(4, 7), (4, 3)]
    p = jax.tree.map(np.asarray, params)
    h0 = 1 / (1 + np.exp(-(np.asarray(x) @ p["hidden_0"]["kernel"] + p["hidden_0"]["bias"])))
    np.testing.assert_allclose(np.asarray(hidden[0]), h0, rtol=1e-5)


def test_a_row_given_its_batch_position_draws_its_batch_dropout_mask():
    x = jnp.ones((5, 300))
    rng = jax.random.key(4)
    whole = np.asarray(hash_dropout(x, 0.4, rng))
    for b in (0, 3, 4):
        alone = np.asarray(hash_dropout(x[b:b + 1], 0.4, rng, row_ids=jnp.array([b])))
        np.testing.assert_array_equal(alone[0], whole[b])
    assert not np.array_equal(whole[0], whole[3])


# --- seams ---------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_injected_optimizer_replaces_the_configs(mode):
    config = toy_config(optimizer="adam", lr=0.01)
    sgd_config = toy_config(optimizer="sgd", lr=0.3)
    rows = toy_rows(seed=1)
    dense = to_dense(rows)
    results = {}
    for name, cfg, opt in (("config_sgd", sgd_config, None),
                           ("injected", config, optax.sgd(0.3)),
                           ("injected_fn", config, lambda optim: optax.sgd(0.3))):
        step = ar.make_train_step(cfg, parallel=mode)
        state = step.parallel.replicate(fresh_state(cfg, rows, optimizer=opt))
        for i in range(2):
            state, _ = step(state, {"ratings": dense[i * 8:(i + 1) * 8]}, jax.random.key(1))
        results[name] = jax.device_get(state.params)
    chex.assert_trees_all_close(results["injected"], results["config_sgd"], atol=1e-7)
    chex.assert_trees_all_close(results["injected_fn"], results["config_sgd"], atol=1e-7)
    with pytest.raises(TypeError, match="GradientTransformation"):
        fresh_state(config, rows, optimizer="adam")


def l1_hidden_loss(outputs, batch, *, params, rng, weight=0.01):
    terms = reconstruction_loss(outputs, batch)
    rows = batch["row_mask"][:, None]
    l1 = sum(jnp.sum(jnp.where(rows, jnp.abs(h), 0.0)) for h in outputs.hidden)
    return LossTerms(sum=terms.sum + weight * l1, count=terms.count, metrics={"l1": l1})


@pytest.mark.parametrize("mode", MODES)
def test_loss_fn_sees_hidden_activations_and_its_metrics_are_summed(mode):
    config = toy_config(loss="observed")
    params_l1, metrics = run_own_loop(config, mode, loss_fn=functools.partial(
        l1_hidden_loss, weight=0.5))
    params_plain, _ = run_own_loop(config, mode)
    # The penalty took effect, and its metric is the whole batch's sum over devices.
    assert max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()),
                                            params_l1, params_plain))) > 1e-3
    assert "train/l1" in metrics and float(metrics["train/l1"]) > 0


@needs_devices
def test_loss_fn_and_grad_transform_agree_under_jit_and_pmap():
    def noisy(grads, *, params, rng):
        leaves, tree = jax.tree.flatten(grads)
        keys = jax.random.split(rng, len(leaves))
        return jax.tree.unflatten(tree, [g + 0.05 * jax.random.normal(k, g.shape)
                                         for g, k in zip(leaves, keys)])

    config = toy_config(loss="observed")
    seams = dict(loss_fn=l1_hidden_loss, grad_transform=noisy)
    jit_params, jit_metrics = run_own_loop(config, "jit", **seams)
    pmap_params, pmap_metrics = run_own_loop(config, "pmap", **seams)
    chex.assert_trees_all_close(pmap_params, jit_params, atol=1e-5)
    assert float(pmap_metrics["train/l1"]) == pytest.approx(float(jit_metrics["train/l1"]),
                                                            rel=1e-5)
    quiet_params, _ = run_own_loop(config, "jit", loss_fn=l1_hidden_loss)
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), jit_params, quiet_params)
    assert max(jax.tree.leaves(moved)) > 1e-3  # the noise took effect


def test_grad_transform_receives_the_summed_gradients_before_the_optimizer():
    config = toy_config(lr=0.3, loss="sum")
    rows = toy_rows()
    dense = to_dense(rows)
    index = np.arange(8, dtype=np.int32)
    seen = {}

    def spy(grads, *, params, rng):
        seen["grads"] = grads
        return jax.tree.map(lambda g: 2.0 * g, grads)

    state = fresh_state(config, rows)
    x = dense[index].astype(np.float64)
    plain = numpy_sgd_step(jax.tree.map(np.asarray, state.params), x, 0.3, 1.0)
    doubled = numpy_sgd_step(jax.tree.map(np.asarray, state.params), x, 0.6, 1.0)
    new_state, _ = ar.train_step(state, batch_of(dense, index), jax.random.key(1),
                                 config=config, grad_transform=spy)
    chex.assert_trees_all_close(jax.tree.map(np.asarray, new_state.params), doubled,
                                rtol=1e-5, atol=1e-6)
    expected_grads = jax.tree.map(lambda old, new: (old - new) / 0.3,
                                  jax.tree.map(np.asarray, state.params), plain)
    chex.assert_trees_all_close(jax.tree.map(np.asarray, seen["grads"]), expected_grads,
                                rtol=1e-4, atol=1e-6)


def test_per_entry_weights_weight_the_gradient():
    config = toy_config(lr=0.3, loss="sum")
    rows = toy_rows()
    dense = to_dense(rows)
    index = np.arange(8, dtype=np.int32)
    weights = np.random.default_rng(0).uniform(0.1, 3.0, dense.shape).astype(np.float32)
    state = fresh_state(config, rows)
    batch = {**batch_of(dense, index), "weights": jnp.asarray(weights[index])}
    new_state, metrics = ar.train_step(state, batch, jax.random.key(1), config=config)
    # NumPy: the SSE gradient with each entry's error scaled by its weight.
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), state.params)
    x, w = dense[index].astype(np.float64), weights[index].astype(np.float64)
    hidden = 1 / (1 + np.exp(-(x @ p["hidden_0"]["kernel"] + p["hidden_0"]["bias"])))
    d_out = 2 * w * (x != 0) * (hidden @ p["output"]["kernel"] + p["output"]["bias"] - x)
    d_pre = (d_out @ p["output"]["kernel"].T) * hidden * (1 - hidden)
    expected = {"hidden_0": {"kernel": p["hidden_0"]["kernel"] - 0.3 * x.T @ d_pre,
                             "bias": p["hidden_0"]["bias"] - 0.3 * d_pre.sum(0)},
                "output": {"kernel": p["output"]["kernel"] - 0.3 * hidden.T @ d_out,
                           "bias": p["output"]["bias"] - 0.3 * d_out.sum(0)}}
    chex.assert_trees_all_close(jax.tree.map(np.asarray, new_state.params), expected,
                                rtol=1e-5, atol=1e-6)
    assert float(metrics["loss_count"]) == pytest.approx((w * (x != 0)).sum(), rel=1e-5)


def test_entry_fields_reach_the_epoch_batches_in_csr_order(tmp_path):
    """Weight 0 on every rating of half the users: training then equals training on the
    other half's ratings alone (those users' inputs stay, only their loss terms go)."""
    ratings = random_ratings(num_users=30, num_items=40, density=0.3, seed=4)
    config = toy_config(loss="sum", lr=0.01, epochs=2, batch_size=8, split="ratio")
    muted = ratings.users % 2 == 0

    def weights(train):
        return np.where(train.users % 2 == 0, 0.0, 1.0)

    weighted = ar.train_and_evaluate(config, ratings=ratings, entry_fields={"weights": weights})
    assert weighted.summary["seams"]["entry_fields"] == "weights"

    def masked_loss(outputs, batch, *, params, rng):
        odd = (jnp.arange(batch["ratings"].shape[1]) % 2 == 1)[None, :]
        return LossTerms(*masked_sse(outputs.pred, batch["ratings"], batch["mask"] & odd))

    # Users are columns for I-AutoRec; raw id u+1 maps to index u, so odd index = odd user.
    assert np.all(ratings.user_ids == np.arange(1, 31)) and muted.any()
    masked = ar.train_and_evaluate(config, ratings=ratings, loss_fn=masked_loss)
    chex.assert_trees_all_close(jax.device_get(weighted.state.params),
                                jax.device_get(masked.state.params), atol=1e-6)
    plain = ar.train_and_evaluate(config, ratings=ratings)
    assert abs(plain.summary["test_rmse"] - weighted.summary["test_rmse"]) > 1e-5


# --- per-row gradients and norms -----------------------------------------------------------

@pytest.mark.parametrize("loss", ["book", "observed", "sum"])
def test_per_row_grads_sum_to_the_batch_gradient_with_dropout_on(loss):
    config = toy_config(loss=loss, dropout=0.3)
    rows = toy_rows()
    dense = to_dense(rows)
    index = np.array([3, 17, 0, 25, 9, 11, -1], np.int32)  # one padding row
    state = fresh_state(config, rows)
    batch = batch_of(dense, index)
    rng = jax.random.key(8)
    per_row = jax.jit(functools.partial(ar.per_row_grads, config=config))(state, batch, rng)
    batch_grads, _ = compute_grads(state, batch, step_keys(rng, state.step), config=config)
    assert jax.tree.leaves(per_row)[0].shape[0] == len(index)
    chex.assert_trees_all_close(jax.tree.map(lambda g: g.sum(0), per_row), batch_grads,
                                rtol=1e-4, atol=1e-7)
    # The control: with dropout on, other masks (another key) give another gradient.
    other, _ = compute_grads(state, batch, step_keys(jax.random.key(9), state.step),
                             config=config)
    assert not np.allclose(np.asarray(other["output"]["kernel"]),
                           np.asarray(batch_grads["output"]["kernel"]), rtol=1e-3)
    assert float(jnp.abs(per_row["output"]["bias"][-1]).max()) == 0.0  # padding row


def test_per_row_grads_refuse_flax_dropout():
    config = toy_config(dropout=0.1, dropout_rng="jax")
    rows = toy_rows()
    with pytest.raises(ConfigError, match="dropout_rng"):
        ar.per_row_grads(fresh_state(config, rows), batch_of(to_dense(rows), np.arange(4)),
                         jax.random.key(0), config=config)


def test_per_layer_norms_equal_numpy_norms_of_the_hand_derived_step():
    config = toy_config(lr=0.3, loss="observed")
    rows = toy_rows()
    dense = to_dense(rows)
    index = np.arange(8, dtype=np.int32)
    state = fresh_state(config, rows)
    old = jax.tree.map(lambda a: np.asarray(a, np.float64), state.params)
    x = dense[index].astype(np.float64)
    new = numpy_sgd_step(old, x, 0.3, (x != 0).sum())
    _, metrics = ar.train_step(state, batch_of(dense, index), jax.random.key(1), config=config)
    for layer in ("hidden_0", "output"):
        grad = [(old[layer][k] - new[layer][k]) / 0.3 for k in ("kernel", "bias")]
        assert float(metrics[f"grad_norm/{layer}"]) == pytest.approx(
            np.sqrt(sum((g ** 2).sum() for g in grad)), rel=1e-4)
        assert float(metrics[f"param_norm/{layer}"]) == pytest.approx(
            np.sqrt(sum((new[layer][k] ** 2).sum() for k in ("kernel", "bias"))), rel=1e-5)
        assert float(metrics[f"update_norm/{layer}"]) == pytest.approx(
            0.3 * float(metrics[f"grad_norm/{layer}"]), rel=1e-5)


def test_metrics_jsonl_has_per_layer_norms_every_epoch(tmp_path):
    ratings = random_ratings(num_users=30, num_items=50, seed=3)
    config = toy_config(optimizer="adam", lr=0.01, epochs=3, hidden=(6, 4))
    ar.train_and_evaluate(config, tmp_path, ratings=ratings, loss_fn=l1_hidden_loss)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3
    for record in records:
        for kind in ("grad_norm", "update_norm", "param_norm"):
            layers = [record[f"{kind}/{name}"] for name in ("hidden_0", "hidden_1", "output")]
            assert all(v > 0 for v in layers)
            assert record[kind] == pytest.approx(np.sqrt(np.sum(np.square(layers))), rel=1e-5)
        assert record["train/l1"] > 0


# --- parallel.py and compilation -----------------------------------------------------------

@needs_devices
@pytest.mark.parametrize("mode", ["sharded", "pmap"])
def test_per_device_outputs_are_returned_whole_or_refused(mode):
    parallel = Parallel.create(mode)
    x = np.arange(32 * 3, dtype=np.float32).reshape(32, 3)

    def row_sums(x, axis_name=None):
        return x.sum(1), psum_if(x.sum(), axis_name)

    if mode == "sharded":  # JAX's varying-value types (check_vma) see it; pmap cannot
        with pytest.raises(ConfigError, match=r"output \[0\] declared replicated.*out_axes=0"):
            parallel.compile(row_sums, in_axes=(0,))(parallel.shard_rows(x))
    fn = parallel.compile(row_sums, in_axes=(0,), out_axes=(0, None))
    per_row, total = fn(parallel.shard_rows(x))
    np.testing.assert_array_equal(parallel.unshard_rows(per_row, 32), x.sum(1))
    assert float(total) == x.sum()
    jit = Parallel.create("jit")
    np.testing.assert_array_equal(jit.unshard_rows(jit.compile(row_sums, in_axes=(0,))(x)[0],
                                                   32), x.sum(1))


def test_setup_compiles_nothing_and_any_epoch_length_works():
    ratings = random_ratings(num_users=30, num_items=50, seed=3)
    config = toy_config(optimizer="adam", lr=0.01)
    experiment, state = ar.setup(config, ratings, optimizer=optax.sgd(0.1))
    assert experiment.compile_seconds == 0.0
    for steps in (1, 4):
        index = np.arange(steps * 8, dtype=np.int32).reshape(steps, 8) % experiment.num_rows
        state, metrics = ar.run_epoch(experiment, state, index)
        assert metrics["loss"].shape == (steps,)
    assert experiment.compile_seconds > 0
    assert int(state.step) == 5
    scores = ar.evaluate(experiment, state.params)
    assert np.isfinite(scores["test"]["rmse"])


@pytest.mark.parametrize("batch_rows", [16, 30])
@pytest.mark.parametrize("loss", ["observed", "sum"])
@needs_devices
def test_make_train_step_pmap_equals_jit(batch_rows, loss):
    config = toy_config(lr=0.2 if loss == "observed" else 0.01, loss=loss)
    jit_params, jit_metrics = run_own_loop(config, "jit", batch_rows=batch_rows)
    pmap_params, pmap_metrics = run_own_loop(config, "pmap", batch_rows=batch_rows)
    chex.assert_trees_all_close(pmap_params, jit_params, atol=1e-5)
    assert float(pmap_metrics["rows"]) == float(jit_metrics["rows"]) == batch_rows


def test_every_public_name_resolves_and_is_listed_in_the_package_docstring():
    import re
    listed = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", ar.__doc__))
    for name in ar.__all__:
        assert getattr(ar, name) is not None
        assert name in listed, f"{name} is exported but not listed in autorec_jax's docstring"
    with pytest.raises(AttributeError):
        ar.not_a_name  # noqa: B018
