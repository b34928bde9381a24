"""The optimiser, built from the config as one optax GradientTransformation.

Gradient-level research changes go here as optax transforms (an init/update pair with a
NamedTuple state), chained where the config puts them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from autorec_jax.config import OptimConfig

PyTree = Any


def kernels_only(params: PyTree) -> PyTree:
    """A mask selecting weight matrices (ndim > 1) and not biases."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def create_optimizer(config: OptimConfig, *, lr=None,
                     weight_decay=None) -> optax.GradientTransformation:
    """The book's recipe by default: wd * w added to the gradient, then Adam (MXNet `wd`).

    "coupled" decay is exactly the gradient of (wd / 2) * ||w||^2 added to the loss, so it
    goes through the optimiser's scaling. "decoupled" decay (AdamW, Loshchilov & Hutter; as
    `optax.adamw` and `torch.optim.AdamW`) bypasses it: after the optimiser's (descent-signed)
    update, every decayed weight moves by -lr * wd * w, so it shrinks by the factor
    (1 - lr * wd) per step whatever the optimiser. For rprop, lr is its initial step size.

    Args:
      lr, weight_decay: replace the config's values; may be arrays (as
        `optax.inject_hyperparams` passes them, `run.multi`). A given weight_decay always
        adds the decay transform (a decay of 0 then adds 0 * w).
    """
    lr = config.lr if lr is None else lr
    decays = bool(config.weight_decay) if weight_decay is None else True
    weight_decay = config.weight_decay if weight_decay is None else weight_decay
    mask = None if config.decay_biases else kernels_only
    if config.optimizer == "lbfgs":
        tx = optax.lbfgs(learning_rate=None, memory_size=config.lbfgs_memory)
        if config.lbfgs_restart:
            tx = with_restarts(tx, config.lbfgs_restart)
        return with_decay_objective(tx, weight_decay, mask) if decays else tx
    if config.optimizer == "adam":
        scale = optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps)
    elif config.optimizer == "sgd":
        scale = optax.trace(decay=config.momentum) if config.momentum else optax.identity()
    elif config.optimizer == "rprop":
        # Per-weight step sizes adapted from gradient signs; lr is the initial step size,
        # and the update comes out already scaled (no learning-rate factor after it).
        scale = scale_by_rprop(lr)
    else:
        raise ValueError(f"unknown optimizer {config.optimizer!r}")
    # Every part list ends in a descent step: updates to add to the params.
    parts = [scale] if config.optimizer == "rprop" else [
        scale, optax.scale_by_learning_rate(lr)]
    if decays:
        if config.decay_style == "coupled":
            parts.insert(0, optax.add_decayed_weights(weight_decay, mask=mask))
        else:
            # After the descent step, so the sign is the descent's: -lr * wd * w.
            parts.append(optax.add_decayed_weights(-lr * weight_decay, mask=mask))
    return optax.chain(*parts)


def with_restarts(tx: optax.GradientTransformationExtraArgs, every: int
                  ) -> optax.GradientTransformationExtraArgs:
    """`tx` started afresh (its state re-initialised from the params) before every
    `every`-th update: L-BFGS that forgets its curvature pairs every k iterations, as
    scipy's L-BFGS-B called k iterations at a time (GLocal-K's 5 per epoch) does.

    The state is (tx's state, int32 updates done)."""
    def init_fn(params):
        return tx.init(params), jnp.zeros((), jnp.int32)

    def update_fn(grads, state, params=None, **extra):
        inner, count = state
        restart = count % every == 0
        inner = jax.tree.map(lambda fresh, old: jnp.where(restart, fresh, old),
                             tx.init(params), inner)
        updates, inner = tx.update(grads, inner, params, **extra)
        return updates, (inner, count + 1)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def with_decay_objective(tx: optax.GradientTransformationExtraArgs, weight_decay,
                         mask=None) -> optax.GradientTransformationExtraArgs:
    """Coupled weight decay for a loss-aware optimiser (optax.lbfgs): the gradient gains
    wd * w and the objective its integral (wd / 2) ||w||^2, in `value` and in every
    `value_fn` call of the line search, so that both describe one function.

    Args:
      mask: a function of the params selecting the decayed leaves (None: all).
    """
    def penalty(params):
        selected = jax.tree.leaves(_selected(params, mask))
        return 0.5 * weight_decay * sum(jnp.sum(p * p) for p in selected)

    def update_fn(grads, state, params, *, value, grad=None, value_fn, **extra):
        grads = jax.tree.map(lambda g, w, keep: g + weight_decay * w * keep, grads, params,
                             _keep(params, mask))
        return tx.update(grads, state, params, value=value + penalty(params), grad=grads,
                         value_fn=lambda p: value_fn(p) + penalty(p), **extra)

    return optax.GradientTransformationExtraArgs(tx.init, update_fn)


def _keep(params: PyTree, mask) -> PyTree:
    """1.0 where `mask(params)` selects a leaf (every leaf without a mask), else 0.0."""
    selected = jax.tree.map(lambda _: True, params) if mask is None else mask(params)
    return jax.tree.map(lambda s: jnp.float32(1.0 if s else 0.0), selected)


def _selected(params: PyTree, mask) -> PyTree:
    return jax.tree.map(lambda p, k: p * k, params, _keep(params, mask))


class RpropState(NamedTuple):
    step_sizes: PyTree   # per-weight step size
    prev_grads: PyTree   # last step's gradient (0 where its sign flipped)


def scale_by_rprop(learning_rate: float, eta_minus: float = 0.5, eta_plus: float = 1.2,
                   min_step_size: float = 1e-6, max_step_size: float = 50.0
                   ) -> optax.GradientTransformation:
    """iRprop- (as torch.optim.Rprop): each weight moves by its own step size against the
    sign of its gradient; the step grows by eta_plus while the sign holds and shrinks by
    eta_minus when it flips (that step then skips the weight). `learning_rate` is the
    initial step size; the updates come out ready to add to the params.

    Not `optax.scale_by_rprop`: in optax 0.2.8 it emits the previous step's update (its
    first update is zero; google-deepmind/optax pull request 1725).
    """
    def init_fn(params):
        return RpropState(jax.tree.map(lambda p: jnp.full_like(p, learning_rate), params),
                          jax.tree.map(jnp.zeros_like, params))

    def update_fn(grads, state, params=None):
        del params
        agree = jax.tree.map(lambda g, prev: jnp.sign(g * prev), grads, state.prev_grads)
        steps = jax.tree.map(
            lambda a, step: jnp.where(a > 0, jnp.minimum(step * eta_plus, max_step_size),
                                      jnp.where(a < 0, jnp.maximum(step * eta_minus,
                                                                   min_step_size), step)),
            agree, state.step_sizes)
        grads = jax.tree.map(lambda a, g: jnp.where(a < 0, 0.0, g), agree, grads)
        updates = jax.tree.map(lambda g, step: -step * jnp.sign(g), grads, steps)
        return updates, RpropState(steps, grads)

    return optax.GradientTransformation(init_fn, update_fn)


def encoder_decoder_labels(params: PyTree) -> PyTree:
    """"encoder" for every hidden_* leaf, "decoder" for the output layer's: the labels for
    `optax.multi_transform({"encoder": ..., "decoder": ...}, encoder_decoder_labels)`."""
    return {name: jax.tree.map(lambda _, n=name: "decoder" if n == "output" else "encoder",
                               layer)
            for name, layer in params.items()}
