"""The AutoRec network (Flax Linen) and its construction from the config.

Shape legend used across the package:
  B  rows in a batch (items for I-AutoRec, users for U-AutoRec)
  N  width of a row: the number of users (I-AutoRec) or items (U-AutoRec)
  H  hidden width
  D  number of devices
  S  steps in one compiled call (an epoch)
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from autorec_jax.config import ModelConfig

PyTree = Any

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "identity": lambda x: x,
    "sigmoid": nn.sigmoid,
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "elu": nn.elu,
    "selu": nn.selu,
    "softplus": nn.softplus,
    "gelu": nn.gelu,
}


class AutoRec(nn.Module):
    """h(r) = f(W . g(V . r + mu) + b), with dropout after each hidden layer when training.

    Attributes:
      num_outputs: N, the width of a reconstructed row.
      hidden: widths of the hidden layers, encoder first; (500,) is the book's network.
      activation: g, applied after every hidden layer.
      output_activation: f, applied to the output.
      dropout: rate of the dropout after each hidden layer (training only).
      init_std: kernels start ~ Normal(0, init_std); biases start at zero.
      dropout_rng: "hash" (`hash_dropout`, the default) or "jax" (flax's nn.Dropout, which
        draws one JAX PRNG uniform per unit).
    """

    num_outputs: int
    hidden: tuple[int, ...] = (500,)
    activation: str = "sigmoid"
    output_activation: str = "identity"
    dropout: float = 0.05
    init_std: float = 0.01
    dropout_rng: str = "hash"

    @nn.compact
    def __call__(self, ratings_BxN: jax.Array, *, train: bool) -> jax.Array:
        """Reconstructs rows: float32 [B, N] ratings (0 = unobserved) -> float32 [B, N]."""
        kernel_init = nn.initializers.normal(stddev=self.init_std)
        hidden_BxH = ratings_BxN
        for i, width in enumerate(self.hidden):
            hidden_BxH = nn.Dense(width, kernel_init=kernel_init, name=f"hidden_{i}")(hidden_BxH)
            hidden_BxH = ACTIVATIONS[self.activation](hidden_BxH)
            if self.dropout_rng == "jax":
                hidden_BxH = nn.Dropout(self.dropout, deterministic=not train)(hidden_BxH)
            elif train and self.dropout > 0:
                hidden_BxH = hash_dropout(hidden_BxH, self.dropout, self.make_rng("dropout"))
        output_BxN = nn.Dense(self.num_outputs, kernel_init=kernel_init, name="output")(hidden_BxH)
        return ACTIVATIONS[self.output_activation](output_BxN)


def _mix32(x: jax.Array) -> jax.Array:
    """A bijective 32-bit integer mixer (lowbias32: xorshift-multiply, full avalanche)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def hash_dropout(x: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
    """Inverted dropout whose keep mask hashes (unit index, 64-bit seed drawn from `rng`).

    Each unit is dropped with probability `rate` (to 2^-32) independently of the others; the
    JAX PRNG draws only the two seed words, so a step's fresh `rng` gives a fresh mask. On
    CPU this costs a tenth of drawing one threefry uniform per unit (measured in
    scripts/benchmark.py), with the same distribution for dropout's purposes (tested in
    tests/test_model.py).
    """
    seed = jax.random.bits(rng, (2,), jnp.uint32)
    counter = jax.lax.iota(jnp.uint32, x.size).reshape(x.shape)
    bits = _mix32(_mix32(counter ^ seed[0]) + seed[1])
    keep = bits >= jnp.uint32(min(round(rate * 2.0 ** 32), 2 ** 32 - 1))
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def create_model(config: ModelConfig, num_outputs: int) -> AutoRec:
    return AutoRec(num_outputs=num_outputs, hidden=config.hidden, activation=config.activation,
                   output_activation=config.output_activation, dropout=config.dropout,
                   init_std=config.init_std, dropout_rng=config.dropout_rng)


def init_params(model: AutoRec, rng: jax.Array) -> PyTree:
    """Fresh parameters for rows of width model.num_outputs."""
    dummy = jnp.zeros((1, model.num_outputs), jnp.float32)
    return model.init({"params": rng}, dummy, train=False)["params"]
