"""The optimiser, built from the config as one optax GradientTransformation.

Gradient-level research changes go here as optax transforms (an init/update pair with a
NamedTuple state), chained where the config puts them.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from autorec_jax.config import OptimConfig

PyTree = Any


def kernels_only(params: PyTree) -> PyTree:
    """A mask selecting weight matrices (ndim > 1) and not biases."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def create_optimizer(config: OptimConfig) -> optax.GradientTransformation:
    """The book's recipe by default: wd * w added to the gradient, then Adam (MXNet `wd`).

    "coupled" decay is exactly the gradient of (wd / 2) * ||w||^2 added to the loss;
    "decoupled" decay (AdamW) is applied to the update after the optimiser's scaling.
    """
    if config.optimizer == "adam":
        scale = optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps)
    elif config.optimizer == "sgd":
        scale = optax.trace(decay=config.momentum) if config.momentum else optax.identity()
    elif config.optimizer == "rprop":
        # Per-weight step sizes adapted from gradient signs; lr is the initial step size,
        # and the update comes out already scaled (no learning-rate factor after it).
        scale = optax.rprop(config.lr)
    else:
        raise ValueError(f"unknown optimizer {config.optimizer!r}")
    parts = [scale]
    if config.weight_decay:
        decay = optax.add_decayed_weights(
            config.weight_decay, mask=None if config.decay_biases else kernels_only)
        parts.insert(0 if config.decay_style == "coupled" else 1, decay)
    if config.optimizer != "rprop":
        parts.append(optax.scale_by_learning_rate(config.lr))
    return optax.chain(*parts)


def encoder_decoder_labels(params: PyTree) -> PyTree:
    """"encoder" for every hidden_* leaf, "decoder" for the output layer's: the labels for
    `optax.multi_transform({"encoder": ..., "decoder": ...}, encoder_decoder_labels)`."""
    return {name: jax.tree.map(lambda _, n=name: "decoder" if n == "output" else "encoder",
                               layer)
            for name, layer in params.items()}
