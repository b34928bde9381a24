"""The AutoRec network: shapes, parameter count, initialisation, dropout."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autorec_jax import config as config_lib
from autorec_jax.model import ACTIVATIONS, AutoRec, create_model, hash_dropout, init_params


def test_book_network_shapes_and_parameter_count():
    model = create_model(config_lib.d2l().model, num_outputs=943)
    params = init_params(model, jax.random.key(0))
    shapes = jax.tree.map(jnp.shape, params)
    assert shapes == {"hidden_0": {"kernel": (943, 500), "bias": (500,)},
                      "output": {"kernel": (500, 943), "bias": (943,)}}
    assert sum(x.size for x in jax.tree.leaves(params)) == 943 * 500 + 500 + 500 * 943 + 943
    out = model.apply({"params": params}, jnp.ones((4, 943)), train=False)
    assert out.shape == (4, 943) and bool(jnp.all(jnp.isfinite(out)))


def test_initialisation_is_normal_001_with_zero_biases():
    params = init_params(AutoRec(num_outputs=400, hidden=(300,)), jax.random.key(1))
    kernel = np.asarray(params["hidden_0"]["kernel"])
    assert abs(kernel.mean()) < 1e-3 and abs(kernel.std() - 0.01) < 5e-4
    assert not np.any(params["hidden_0"]["bias"]) and not np.any(params["output"]["bias"])


def test_forward_matches_numpy_sigmoid_encoder_linear_decoder():
    model = AutoRec(num_outputs=12, hidden=(5,), dropout=0.5)
    params = init_params(model, jax.random.key(2))
    x = np.random.default_rng(0).integers(0, 6, (3, 12)).astype(np.float32)
    p = jax.tree.map(np.asarray, params)
    hidden = 1 / (1 + np.exp(-(x @ p["hidden_0"]["kernel"] + p["hidden_0"]["bias"])))
    expected = hidden @ p["output"]["kernel"] + p["output"]["bias"]
    got = model.apply({"params": params}, x, train=False)  # inference: no dropout
    # float32 vs float64 at rtol 1e-5: the matmuls run at precision "highest" (the default);
    # at "default" a TPU's single bf16 pass would need rtol ~1e-2.
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-7)


def dot_precisions(lowered_text: str) -> list[str]:
    """The precision of every dot_general in StableHLO text ("HIGHEST", "DEFAULT", ...)."""
    dots = [line for line in lowered_text.splitlines() if "stablehlo.dot_general" in line]
    found = [re.search(r"precision = \[(\w+), (\w+)\]", line) for line in dots]
    return [m.group(1) if m and m.group(1) == m.group(2) else "unset" for m in found]


@pytest.mark.parametrize("precision", ["highest", "high", "default"])
def test_matmul_precision_reaches_every_dense_layer(precision):
    config = config_lib.replace(config_lib.d2l(), hidden=(7, 5), matmul_precision=precision)
    model = create_model(config.model, num_outputs=12)
    params = init_params(model, jax.random.key(0))
    lowered = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False)).lower(
        params, jnp.ones((3, 12)))
    assert dot_precisions(lowered.as_text()) == [precision.upper()] * 3


def _dropout_outputs(impl, rate, draws=256):
    model = AutoRec(num_outputs=6, hidden=(300,), dropout=rate, dropout_rng=impl)
    params = init_params(model, jax.random.key(3))
    x = jnp.ones((1, 6))
    keys = jax.random.split(jax.random.key(4), draws)
    train = jax.vmap(lambda k: model.apply({"params": params}, x, train=True,
                                           rngs={"dropout": k})[0])(keys)
    return np.asarray(train), np.asarray(model.apply({"params": params}, x, train=False)[0])


@pytest.mark.parametrize("impl", ["hash", "jax"])
def test_dropout_acts_only_when_training_and_keeps_the_expectation(impl):
    train, infer = _dropout_outputs(impl, rate=0.5)
    assert np.all(train.std(axis=0) > 0)  # masks differ from draw to draw
    # Inverted dropout: the mean over draws is the inference output (5 standard errors).
    stderr = train.std(axis=0) / np.sqrt(len(train))
    assert np.all(np.abs(train.mean(axis=0) - infer) < 5 * stderr)


def test_deep_stack_and_every_activation_build():
    for name in ACTIVATIONS:
        model = AutoRec(num_outputs=9, hidden=(7, 3, 7), activation=name,
                        output_activation=name)
        params = init_params(model, jax.random.key(0))
        assert [params[f"hidden_{i}"]["kernel"].shape for i in range(3)] == [
            (9, 7), (7, 3), (3, 7)]
        out = model.apply({"params": params}, jnp.ones((2, 9)), train=False)
        assert out.shape == (2, 9) and bool(jnp.all(jnp.isfinite(out)))


def test_unknown_activation_is_rejected_by_the_config():
    with pytest.raises(Exception, match="model.activation"):
        config_lib.replace(config_lib.d2l(), activation="swish")


def _keep_mask(rng, shape=(256, 500), rate=0.05):
    return np.asarray(hash_dropout(jnp.ones(shape), rate, rng)) != 0


def test_hash_dropout_keeps_each_unit_with_probability_one_minus_rate():
    for rate in (0.05, 0.5, 0.9):
        kept = np.mean([_keep_mask(jax.random.key(s), rate=rate).mean() for s in range(8)])
        sigma = np.sqrt(rate * (1 - rate) / (8 * 256 * 500))
        assert abs(kept - (1 - rate)) < 5 * sigma, (rate, kept)
    x = jnp.full((4, 5), 2.0)
    out = np.asarray(hash_dropout(x, 0.5, jax.random.key(0)))
    assert set(np.unique(out)) <= {0.0, 4.0}  # kept units are scaled by 1 / (1 - rate)


def test_hash_dropout_masks_are_deterministic_per_key_and_independent_across_keys():
    key = jax.random.key(3)
    a, b = _keep_mask(jax.random.fold_in(key, 1)), _keep_mask(jax.random.fold_in(key, 2))
    np.testing.assert_array_equal(a, _keep_mask(jax.random.fold_in(key, 1)))
    # Two independent Bernoulli(0.95) masks agree on a drop with probability 0.05^2.
    both_dropped = np.mean(~a & ~b)
    assert abs(both_dropped - 0.0025) < 5 * np.sqrt(0.0025 / a.size)


def test_hash_dropout_bits_have_no_structure_between_neighbours():
    drops = ~_keep_mask(jax.random.key(7), shape=(512, 512), rate=0.5)
    for axis in (0, 1):  # neighbouring units along rows and columns are uncorrelated
        x = np.moveaxis(drops, axis, 0).astype(float)
        corr = np.corrcoef(x[:-1].ravel(), x[1:].ravel())[0, 1]
        assert abs(corr) < 5 / np.sqrt(x.size)
    counts = np.bincount((np.arange(drops.size) % 64)[drops.ravel()], minlength=64)
    expected = drops.sum() / 64  # drops spread evenly over positions mod 64 (chi-square)
    assert np.sum((counts - expected) ** 2 / expected) < 120  # 63 dof: p ~ 1e-5


def test_bfloat16_compute_keeps_float32_params_outputs_and_loss():
    from autorec_jax import config as config_lib
    from autorec_jax.distributed.steps import make_train_step
    from autorec_jax.train import create_train_state
    config = config_lib.replace(config_lib.tiny(), compute_dtype="bfloat16", parallel="jit")
    ratings = jnp.asarray(np.random.default_rng(0).integers(0, 6, (8, 12)), jnp.float32)
    state = create_train_state(config, 12, jax.random.key(0))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
    out = state.apply_fn({"params": state.params}, ratings, train=False)
    assert out.dtype == jnp.float32
    f32 = create_train_state(config_lib.replace(config, compute_dtype="float32"), 12,
                             jax.random.key(0))
    f32_out = f32.apply_fn({"params": f32.params}, ratings, train=False)
    np.testing.assert_allclose(out, f32_out, atol=0.02)  # bf16 rounding, not another model
    assert float(jnp.abs(out - f32_out).max()) > 0  # ... but really bf16
    step = make_train_step(config)
    new, metrics = step(state, {"ratings": ratings}, jax.random.key(1))
    assert metrics["loss"].dtype == jnp.float32
    floats = [x for x in jax.tree.leaves((new.params, new.opt_state))
              if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and all(x.dtype == jnp.float32 for x in floats)


@pytest.mark.parametrize("rate", [0.3, 0.7])
def test_input_dropout_drops_observed_inputs_while_training_only(rate):
    """Identity layers make the output the (dropped, rescaled) input itself."""
    n = 4000
    model = AutoRec(num_outputs=n, hidden=(n,), activation="identity", dropout=0.0,
                    input_dropout=rate)
    eye = jnp.eye(n)
    params = {"hidden_0": {"kernel": eye, "bias": jnp.zeros(n)},
              "output": {"kernel": eye, "bias": jnp.zeros(n)}}
    ratings = np.zeros((1, n), np.float32)
    ratings[0, ::2] = 4.0  # half observed
    pred = np.asarray(model.apply({"params": params}, jnp.asarray(ratings), train=True,
                                  rngs={"dropout": jax.random.key(3)}))[0]
    observed = ratings[0] != 0
    assert np.all(pred[~observed] == 0)
    kept = pred[observed] != 0
    assert abs(1 - kept.mean() - rate) < 0.04
    np.testing.assert_allclose(pred[observed][kept], 4.0 / (1 - rate), rtol=1e-6)
    evaluated = model.apply({"params": params}, jnp.asarray(ratings), train=False)
    np.testing.assert_array_equal(np.asarray(evaluated), ratings)
