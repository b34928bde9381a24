"""create_optimizer against a NumPy hand computation, for every optimizer and decay style."""

import numpy as np
import optax
import pytest

import jax.numpy as jnp

from autorec_jax.config import OptimConfig
from autorec_jax.optim import create_optimizer

# A tiny param tree shaped like the model's: one hidden layer and the output layer.
PARAMS = {"hidden_0": {"kernel": np.array([[0.5, -1.0, 2.0], [-0.25, 1.5, -3.0]]),
                       "bias": np.array([0.1, -0.2, 0.3])},
          "output": {"kernel": np.array([[1.0, -2.0], [0.5, 0.75], [-1.25, 2.5]]),
                     "bias": np.array([-0.4, 0.6])}}
# Two steps' gradients; step 2 flips some signs (rprop's shrink-and-skip branch) and keeps
# others (its grow branch), and has zeros.
GRADS = [
    {"hidden_0": {"kernel": np.array([[0.3, -0.2, 0.1], [0.0, 0.4, -0.5]]),
                  "bias": np.array([0.2, -0.1, 0.05])},
     "output": {"kernel": np.array([[-0.3, 0.2], [0.1, 0.0], [0.6, -0.7]]),
                "bias": np.array([0.15, -0.25])}},
    {"hidden_0": {"kernel": np.array([[-0.1, -0.3, 0.2], [0.2, -0.4, -0.1]]),
                  "bias": np.array([0.2, 0.1, 0.0])},
     "output": {"kernel": np.array([[0.3, 0.4], [0.1, -0.2], [-0.6, -0.1]]),
                "bias": np.array([-0.15, -0.25])}},
]
LEAVES = [("hidden_0", "kernel"), ("hidden_0", "bias"), ("output", "kernel"),
          ("output", "bias")]


def numpy_steps(config: OptimConfig, params, grads_per_step):
    """The optimiser written out leaf by leaf in float64 NumPy."""
    params = {k: dict(v) for k, v in params.items()}
    state = {leaf: {"m": 0.0, "v": 0.0, "step": np.full_like(params[leaf[0]][leaf[1]],
                                                             config.lr),
                    "prev": 0.0} for leaf in LEAVES}
    for t, grads in enumerate(grads_per_step, start=1):
        for layer, name in LEAVES:
            w, g, s = params[layer][name], grads[layer][name], state[(layer, name)]
            decays = config.decay_biases or name == "kernel"
            wd = config.weight_decay if decays else 0.0
            if config.decay_style == "coupled":
                g = g + wd * w
            if config.optimizer == "adam":
                s["m"] = config.b1 * s["m"] + (1 - config.b1) * g
                s["v"] = config.b2 * s["v"] + (1 - config.b2) * g * g
                m_hat, v_hat = s["m"] / (1 - config.b1 ** t), s["v"] / (1 - config.b2 ** t)
                delta = -config.lr * m_hat / (np.sqrt(v_hat) + config.eps)
            elif config.optimizer == "sgd":
                s["m"] = g + config.momentum * s["m"]
                delta = -config.lr * s["m"]
            else:  # iRprop-, step sizes in [1e-6, 50], eta 0.5 / 1.2
                agree = np.sign(g * s["prev"])
                s["step"] = np.where(agree > 0, np.minimum(s["step"] * 1.2, 50.0),
                                     np.where(agree < 0, np.maximum(s["step"] * 0.5, 1e-6),
                                              s["step"]))
                g = np.where(agree < 0, 0.0, g)
                s["prev"] = g
                delta = -s["step"] * np.sign(g)
            if config.decay_style == "decoupled":
                delta = delta - config.lr * wd * w
            params[layer][name] = w + delta
    return params


def optax_steps(config: OptimConfig, params, grads_per_step):
    tx = create_optimizer(config)
    params = {k: {n: jnp.asarray(v, jnp.float32) for n, v in d.items()}
              for k, d in params.items()}
    state = tx.init(params)
    for grads in grads_per_step:
        grads = {k: {n: jnp.asarray(v, jnp.float32) for n, v in d.items()}
                 for k, d in grads.items()}
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


OPTIMIZERS = {
    "adam": dict(optimizer="adam", lr=0.01),
    "sgd": dict(optimizer="sgd", lr=0.1),
    "sgd_momentum": dict(optimizer="sgd", lr=0.1, momentum=0.9),
    "rprop": dict(optimizer="rprop", lr=0.05),
}


@pytest.mark.parametrize("decay_biases", [True, False], ids=["biases", "kernels_only"])
@pytest.mark.parametrize("decay_style", ["coupled", "decoupled"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_create_optimizer_matches_a_numpy_hand_computation(name, decay_style, decay_biases):
    config = OptimConfig(**OPTIMIZERS[name], weight_decay=0.5, decay_style=decay_style,
                         decay_biases=decay_biases)
    want = numpy_steps(config, PARAMS, GRADS)
    got = optax_steps(config, PARAMS, GRADS)
    for layer, leaf in LEAVES:
        np.testing.assert_allclose(np.asarray(got[layer][leaf]), want[layer][leaf],
                                   rtol=1e-5, atol=1e-6, err_msg=f"{layer}/{leaf}")


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_decoupled_decay_shrinks_weights_for_every_optimizer(name):
    # With zero gradients every optimiser's own update is zero, so only the decay moves the
    # weights: each must shrink by the factor (1 - lr * wd), never grow.
    config = OptimConfig(**OPTIMIZERS[name], weight_decay=0.5, decay_style="decoupled")
    zeros = {k: {n: np.zeros_like(v) for n, v in d.items()} for k, d in PARAMS.items()}
    got = optax_steps(config, PARAMS, [zeros])
    for layer, leaf in LEAVES:
        w = PARAMS[layer][leaf]
        np.testing.assert_allclose(np.asarray(got[layer][leaf]),
                                   w * (1 - config.lr * config.weight_decay), rtol=1e-6)
        assert np.all(np.abs(np.asarray(got[layer][leaf])) < np.abs(w))
