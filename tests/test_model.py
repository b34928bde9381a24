"""The AutoRec network: shapes, parameter count, initialisation, dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autorec_jax import config as config_lib
from autorec_jax.model import ACTIVATIONS, AutoRec, create_model, init_params


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
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-7)


def test_dropout_acts_only_when_training_and_scales_kept_units():
    model = AutoRec(num_outputs=6, hidden=(2000,), dropout=0.5, output_activation="identity")
    params = init_params(model, jax.random.key(3))
    x = jnp.ones((2, 6))
    a = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(4)})
    b = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.key(5)})
    c = model.apply({"params": params}, x, train=False)
    assert not np.allclose(a, b)
    # Inverted dropout keeps the expectation: the mean over 2000 hidden units is close.
    np.testing.assert_allclose(np.asarray(a).mean(), np.asarray(c).mean(), atol=0.05)


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
