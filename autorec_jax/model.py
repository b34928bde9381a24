"""The AutoRec network (Flax Linen) and its construction from the config.

Shape legend used across the package:
  B  rows in a batch (items for I-AutoRec, users for U-AutoRec)
  N  width of a row: the number of users (I-AutoRec) or items (U-AutoRec)
  H  hidden width
  D  number of devices
  S  steps in one compiled call (an epoch)
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from autorec_jax.config import ModelConfig
from autorec_jax.mixed_precision import low_precision_matmul

PyTree = Any


class DropoutRate(NamedTuple):
    """A dropout rate as arrays, so that it can be traced (several models in one step,
    `autorec_jax.run.multi`): the hash threshold and the keep probability that `hash_dropout`
    derives from a float rate, computed on the host exactly as it does."""

    threshold: Any         # uint32: a unit is kept where its hash bits >= threshold
    keep: Any              # float32: 1 - rate, what kept units are divided by

    @classmethod
    def of(cls, rate: float) -> "DropoutRate":
        return cls(np.uint32(_threshold(rate)), np.float32(1.0 - rate))


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

    The parameter tree (what `optax.multi_transform` labels and masks address):
      {"hidden_0": {"kernel": [N, H0], "bias": [H0]}, ..., "hidden_{L-1}": {...},
       "output": {"kernel": [H_{L-1}, N], "bias": [N]}}
    "hidden_*" is the encoder (V, mu), "output" the decoder (W, b).

    Attributes:
      num_outputs: N, the width of a reconstructed row.
      hidden: widths of the hidden layers, encoder first; (500,) is the book's network.
      activation: g, applied after every hidden layer.
      output_activation: f, applied to the output.
      dropout: rate of the dropout after each hidden layer (training only); a `DropoutRate`
        of arrays (hash dropout only) is always applied, so a traced rate may be 0.
      init_std: kernels start ~ Normal(0, init_std); biases start at zero.
      dropout_rng: "hash" (`hash_dropout`, the default) or "jax" (flax's nn.Dropout, which
        draws one JAX PRNG uniform per unit).
      matmul_precision: every layer's matmul precision ("highest", "high", "default"): at
        "default" a TPU multiplies float32 in one bf16 pass (recent GPUs: TF32), so results
        differ from the CPU's; "highest" keeps float32. Backward matmuls inherit it. The CPU
        ignores it.
      compute_dtype: "float32" or "bfloat16": the dtype of the matmul inputs, forward and
        backward (mixed precision, `mixed_precision.low_precision_matmul`); params, their
        gradients, activations and the reconstruction stay float32 (products accumulate in
        float32), so the loss and its sums are float32.
    """

    num_outputs: int
    hidden: tuple[int, ...] = (500,)
    activation: str = "sigmoid"
    output_activation: str = "identity"
    dropout: float = 0.05
    init_std: float = 0.01
    dropout_rng: str = "hash"
    matmul_precision: str = "highest"
    compute_dtype: str = "float32"
    input_dropout: float = 0.0

    def setup(self):
        kernel_init = nn.initializers.normal(stddev=self.init_std)
        dense = dict(kernel_init=kernel_init, precision=jax.lax.Precision(self.matmul_precision),
                     dtype=jnp.float32, param_dtype=jnp.float32)
        if self.compute_dtype != "float32":
            # Low-precision matmul inputs, float32 products, in the forward and backward
            # passes (`mixed_precision`); float32 gradients, activations and outputs.
            dense["dot_general"] = functools.partial(_low_precision_dot_general,
                                                     dtype=jnp.dtype(self.compute_dtype))
        # Attribute names are the parameter names (hidden_0, ..., output).
        for i, width in enumerate(self.hidden):
            setattr(self, f"hidden_{i}", nn.Dense(width, **dense))
        self.output = nn.Dense(self.num_outputs, **dense)
        if self.dropout_rng == "jax":
            self.jax_dropout = nn.Dropout(self.dropout)

    def forward(self, ratings_BxN: jax.Array, *, train: bool,
                row_ids: jax.Array | None = None) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        """Reconstruction and the hidden activations.

        Args:
          ratings_BxN: float32 [B, N] ratings, 0 = unobserved.
          train: apply dropout (needs a "dropout" rng).
          row_ids: int [B], each row's position in its batch, which seeds its hash-dropout
            mask (default: 0..B-1). A single row given its batch position draws the mask it
            had in the batch (see `autorec_jax.research.per_row_grads`).

        Returns:
          (pred float32 [B, N], activations of each hidden layer [B, H_i], before dropout).
        """
        code_BxH, activations = self._encode(ratings_BxN, train, row_ids)
        return self.decode(code_BxH), activations

    def encode(self, ratings_BxN: jax.Array, *, train: bool = False,
               row_ids: jax.Array | None = None) -> jax.Array:
        """The code the decoder reads: the last hidden layer [B, H] (after dropout if training)."""
        return self._encode(ratings_BxN, train, row_ids)[0]

    def decode(self, code_BxH: jax.Array) -> jax.Array:
        """Code [B, H] -> reconstructed rows float32 [B, N]."""
        return ACTIVATIONS[self.output_activation](self.output(code_BxH)).astype(jnp.float32)

    def __call__(self, ratings_BxN: jax.Array, *, train: bool,
                 row_ids: jax.Array | None = None) -> jax.Array:
        """Reconstructs rows: float32 [B, N] ratings (0 = unobserved) -> float32 [B, N]."""
        return self.forward(ratings_BxN, train=train, row_ids=row_ids)[0]

    def _encode(self, ratings_BxN, train, row_ids):
        if train and self.input_dropout > 0:
            # Denoising: observed inputs are dropped (and the rest scaled by 1 / (1 - rate));
            # the loss still scores the dropped entries, so the network learns to predict
            # ratings it does not see, as at evaluation.
            ratings_BxN = hash_dropout(ratings_BxN, self.input_dropout,
                                       self.make_rng("dropout"), row_ids)
        hidden_BxH, activations = ratings_BxN, []
        for i in range(len(self.hidden)):
            hidden_BxH = ACTIVATIONS[self.activation](getattr(self, f"hidden_{i}")(hidden_BxH))
            activations.append(hidden_BxH)
            if train and (isinstance(self.dropout, DropoutRate) or self.dropout > 0):
                if self.dropout_rng == "jax":
                    hidden_BxH = self.jax_dropout(hidden_BxH, deterministic=False)
                else:
                    hidden_BxH = hash_dropout(hidden_BxH, self.dropout,
                                              self.make_rng("dropout"), row_ids)
        return hidden_BxH, tuple(activations)


def _low_precision_dot_general(lhs, rhs, dimension_numbers, precision=None, *, dtype):
    """nn.Dense's matmul as `low_precision_matmul` (its precision does not apply)."""
    if dimension_numbers != (((lhs.ndim - 1,), (0,)), ((), ())) or lhs.ndim != 2:
        raise ValueError(f"low-precision matmul takes [B, K] . [K, N], got {lhs.shape} . "
                         f"{rhs.shape} with {dimension_numbers}")
    return low_precision_matmul(lhs, rhs, dtype)


def _mix32(x: jax.Array) -> jax.Array:
    """A bijective 32-bit integer mixer (lowbias32: xorshift-multiply, full avalanche)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _threshold(rate: float) -> int:
    return min(round(rate * 2.0 ** 32), 2 ** 32 - 1)


def hash_dropout(x: jax.Array, rate: "float | DropoutRate", rng: jax.Array,
                 row_ids: jax.Array | None = None) -> jax.Array:
    """Inverted dropout whose keep mask hashes (unit index, 64-bit seed drawn from `rng`).

    The unit index of x[b, j] (x: [B, H]) is row_ids[b] * H + j, with row_ids = 0..B-1 by
    default, so one row given its batch position gets exactly the mask it has in the batch.

    Each unit is dropped with probability `rate` (to 2^-32) independently of the others; the
    JAX PRNG draws only the two seed words, so a step's fresh `rng` gives a fresh mask. On
    CPU this costs a tenth of drawing one threefry uniform per unit (measured in
    scripts/benchmark.py), with the same distribution for dropout's purposes (tested in
    tests/test_model.py).
    """
    seed = jax.random.bits(rng, (2,), jnp.uint32)
    if row_ids is None:
        counter = jax.lax.iota(jnp.uint32, x.size).reshape(x.shape)
    else:
        width = x.shape[-1]
        counter = (jnp.asarray(row_ids, jnp.uint32)[:, None] * jnp.uint32(width)
                   + jax.lax.iota(jnp.uint32, width)[None, :])
    bits = _mix32(_mix32(counter ^ seed[0]) + seed[1])
    if isinstance(rate, DropoutRate):
        return jnp.where(bits >= rate.threshold, x / rate.keep, 0.0)
    keep = bits >= jnp.uint32(_threshold(rate))
    return jnp.where(keep, x / (1.0 - rate), 0.0)


def create_model(config: ModelConfig, num_outputs: int) -> AutoRec:
    return AutoRec(num_outputs=num_outputs, hidden=config.hidden, activation=config.activation,
                   output_activation=config.output_activation, dropout=config.dropout,
                   init_std=config.init_std, dropout_rng=config.dropout_rng,
                   matmul_precision=config.matmul_precision,
                   compute_dtype=config.compute_dtype, input_dropout=config.input_dropout)


def init_params(model: AutoRec, rng: jax.Array) -> PyTree:
    """Fresh parameters for rows of width model.num_outputs."""
    dummy = jnp.zeros((1, model.num_outputs), jnp.float32)
    return model.init({"params": rng}, dummy, train=False)["params"]
