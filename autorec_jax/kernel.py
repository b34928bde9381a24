"""Kernelised AutoRec ("Sparse FC", Muller, Martel and Indiveri, ICML 2018), on the model seam.

Each layer's weight is W * K elementwise, K[i, j] = max(0, 1 - ||u_i - v_j||^2), with learned
d-dimensional embeddings u_i of the layer's inputs and v_j of its outputs: a finite-support
kernel that zeroes the connections whose embeddings lie farther apart than 1. Training adds
lambda_s ||K||^2 + lambda_2 ||W||^2 over all layers (`kernel_penalty`), a global term that
the loss seam carries as `LossTerms.penalty` (`make_kernel_loss`).

GLocal-K's TF1 code (usydnlp/Glocal_K) minimises sum(err^2)/2 + lambda_s/2 ||K||^2 +
lambda_2/2 ||W||^2; with `train.loss` "sum" the objective here is twice that, the same
minimiser. Its initialisation is the one used: W Glorot uniform, u and v truncated
normal with std 1e-3 (every K starts near 1), b uniform in +-sqrt(3 / width) (TF's Glorot
for a vector).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from autorec_jax.losses import LossFn, LossTerms, reconstruction_loss
from autorec_jax.mixed_precision import low_precision_matmul
from autorec_jax.model import ACTIVATIONS, DropoutRate, hash_dropout

PyTree = dict


def local_kernel(u_IxD: jax.Array, v_OxD: jax.Array) -> jax.Array:
    """K[i, j] = max(0, 1 - ||u_i - v_j||^2): float32 [I, O], zero beyond distance 1."""
    diff_IxOxD = u_IxD[:, None, :] - v_OxD[None, :, :]
    return jnp.maximum(0.0, 1.0 - jnp.sum(diff_IxOxD * diff_IxOxD, axis=-1))


def _vector_glorot(key, shape, dtype=jnp.float32):
    limit = jnp.sqrt(3.0 / shape[0])
    return jax.random.uniform(key, shape, dtype, -limit, limit)


class KernelDense(nn.Module):
    """x [B, I] -> x . (W * K) + b  [B, O]; params W [I, O], u [I, d], v [O, d], b [O]."""

    features: int
    dim: int = 5
    precision: str = "highest"
    compute_dtype: str = "float32"

    @nn.compact
    def __call__(self, x_BxI: jax.Array) -> jax.Array:
        width = x_BxI.shape[-1]
        w_IxO = self.param("W", nn.initializers.glorot_uniform(), (width, self.features))
        embed = nn.initializers.truncated_normal(stddev=1e-3)
        u_IxD = self.param("u", embed, (width, self.dim))
        v_OxD = self.param("v", embed, (self.features, self.dim))
        b_O = self.param("b", _vector_glorot, (self.features,))
        weight_IxO = w_IxO * local_kernel(u_IxD, v_OxD)
        if self.compute_dtype != "float32":
            out = low_precision_matmul(x_BxI, weight_IxO, jnp.dtype(self.compute_dtype))
        else:
            out = jnp.dot(x_BxI, weight_IxO, precision=jax.lax.Precision(self.precision))
        return out + b_O[None, :]


class KernelAutoRec(nn.Module):
    """An AutoRec of kernel layers: hidden layers `hidden` then an output layer of N.

    The parameter tree: {"hidden_0": {"W", "u", "v", "b"}, ..., "output": {...}}.

    Attributes:
      num_outputs: N.
      hidden: hidden widths; GLocal-K's I-AutoRec is (500, 500).
      activation, output_activation: names of `model.ACTIVATIONS`.
      dropout: hash dropout after each hidden layer while training (0: none, as GLocal-K).
      dim: d, the embeddings' dimension (5 in the paper).
    """

    num_outputs: int
    hidden: tuple[int, ...] = (500, 500)
    activation: str = "sigmoid"
    output_activation: str = "identity"
    dropout: float = 0.0
    dim: int = 5
    matmul_precision: str = "highest"
    compute_dtype: str = "float32"

    def setup(self):
        layer = functools.partial(KernelDense, dim=self.dim, precision=self.matmul_precision,
                                  compute_dtype=self.compute_dtype)
        for i, width in enumerate(self.hidden):
            setattr(self, f"hidden_{i}", layer(width))
        self.output = layer(self.num_outputs)

    def forward(self, ratings_BxN: jax.Array, *, train: bool,
                row_ids: jax.Array | None = None) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        """(reconstruction float32 [B, N], each hidden layer's activations [B, H_i])."""
        x, activations = ratings_BxN, []
        for i in range(len(self.hidden)):
            x = ACTIVATIONS[self.activation](getattr(self, f"hidden_{i}")(x))
            activations.append(x)
            if train and (isinstance(self.dropout, DropoutRate) or self.dropout > 0):
                x = hash_dropout(x, self.dropout, self.make_rng("dropout"), row_ids)
        pred = ACTIVATIONS[self.output_activation](self.output(x))
        return pred.astype(jnp.float32), tuple(activations)

    def __call__(self, ratings_BxN: jax.Array, *, train: bool,
                 row_ids: jax.Array | None = None) -> jax.Array:
        return self.forward(ratings_BxN, train=train, row_ids=row_ids)[0]


def create_kernel_model(model_config, num_outputs: int) -> KernelAutoRec:
    """The kernelised AutoRec `config.model` describes (`network` "kernel")."""
    return KernelAutoRec(num_outputs=num_outputs, hidden=model_config.hidden,
                         activation=model_config.activation,
                         output_activation=model_config.output_activation,
                         dropout=model_config.dropout, dim=model_config.kernel_dim,
                         matmul_precision=model_config.matmul_precision,
                         compute_dtype=model_config.compute_dtype)


def kernel_penalty(params: PyTree, lambda_s: float, lambda_2: float) -> jax.Array:
    """lambda_s sum ||K||^2 + lambda_2 sum ||W||^2 over the kernel layers of `params`, at
    any depth of the tree (GLocal-K's are under "local"), each layer once."""
    total = jnp.zeros((), jnp.float32)
    for layer in params.values():
        if isinstance(layer, dict) and {"W", "u", "v"} <= set(layer):
            kernel = local_kernel(layer["u"], layer["v"])
            total += lambda_s * jnp.sum(kernel * kernel) + lambda_2 * jnp.sum(
                layer["W"] * layer["W"])
        elif isinstance(layer, dict):
            total += kernel_penalty(layer, lambda_s, lambda_2)
    return total


def make_kernel_loss(lambda_s: float, lambda_2: float, base: LossFn | None = None) -> LossFn:
    """`base` (default: the masked reconstruction loss) with `kernel_penalty` as its penalty."""
    base = base or reconstruction_loss

    def kernel_loss(outputs, batch, *, params, rng=None) -> LossTerms:
        terms = base(outputs, batch, params=params, rng=rng)
        penalty = kernel_penalty(params, lambda_s, lambda_2)
        if terms.penalty is not None:
            penalty = penalty + terms.penalty
        return terms._replace(penalty=penalty)

    return kernel_loss
