"""GLocal-K (Han et al., CIKM 2021): a kernelised AutoRec fine-tuned on a globally smoothed
rating matrix, on the model seam.

After pre-training the kernel AutoRec f (`kernel.KernelAutoRec`) on the rating matrix R
[M rows, N columns], fine-tuning trains f on relu(conv(R, G)) instead of R, where the k x k
global kernel G is built from f's own reconstruction of R (usydnlp/Glocal_K's TF1 code):

  pooled_M = mean over the N columns of f(R)             one average per row (item)
  G        = reshape(pooled_M @ C * dot_scale, [k, k])   C [M, k*k], learned
  pred     = f(relu(conv2d(R, G, stride 1, zero "same" padding)))

`conv2d` is a cross-correlation (TF's and XLA's): out[i, j] = sum_{a, b} R[i+a-k//2,
j+b-k//2] G[a, b]. Gradients flow through both passes of f, as in the reference; the kernel
penalty counts each layer once. The whole matrix is one input: rows in index order (the
convolution couples neighbouring rows), every row in one block, one device
(`GLocalK.forward` refuses fewer rows; the config refuses shuffled or several batches).

The two stages are run by `run.stages.train_glocal`; this module is the fine-tuning network,
its params {"local": the kernel AutoRec's, "conv_kernel": C}.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from autorec_jax.errors import ConfigError
from autorec_jax.kernel import KernelAutoRec


def global_kernel(pooled_M: jax.Array, conv_kernel_MxK2: jax.Array, size: int,
                  dot_scale: float) -> jax.Array:
    """The k x k global kernel: (pooled_M @ C) * dot_scale, reshaped row-major: [k, k]."""
    return (pooled_M @ conv_kernel_MxK2 * dot_scale).reshape(size, size)


def global_conv(ratings_MxN: jax.Array, kernel_KxK: jax.Array) -> jax.Array:
    """relu(cross-correlation of the matrix with the kernel), zero "same" padding: [M, N]."""
    out = jax.lax.conv_general_dilated(
        ratings_MxN[None, None], kernel_KxK[None, None].astype(ratings_MxN.dtype),
        window_strides=(1, 1), padding="SAME", precision=jax.lax.Precision.HIGHEST)
    return jax.nn.relu(out[0, 0])


class GLocalK(nn.Module):
    """GLocal-K's fine-tuning network over a rating matrix of `num_rows` rows of N.

    Attributes:
      num_outputs: N, the row width.
      num_rows: M, the matrix's rows (the conv kernel map C is [M, k*k]).
      hidden, activation, output_activation, dropout, dim, matmul_precision,
        compute_dtype: the kernel AutoRec's (`kernel.KernelAutoRec`).
      kernel_size: k (3 in the paper).
      dot_scale: the global kernel's scale (1 for ML-100K, 0.5 for ML-1M in the paper).
    """

    reads_whole_matrix: ClassVar[bool] = True  # inference feeds every row (networks.py)
    num_outputs: int
    num_rows: int
    hidden: tuple[int, ...] = (500, 500)
    activation: str = "sigmoid"
    output_activation: str = "identity"
    dropout: float = 0.0
    dim: int = 5
    kernel_size: int = 3
    dot_scale: float = 1.0
    matmul_precision: str = "highest"
    compute_dtype: str = "float32"

    def setup(self):
        self.local = KernelAutoRec(
            num_outputs=self.num_outputs, hidden=self.hidden, activation=self.activation,
            output_activation=self.output_activation, dropout=self.dropout, dim=self.dim,
            matmul_precision=self.matmul_precision, compute_dtype=self.compute_dtype)
        self.conv_kernel = self.param(
            "conv_kernel", nn.initializers.truncated_normal(stddev=0.1),
            (self.num_rows, self.kernel_size ** 2))

    def forward(self, ratings_BxN: jax.Array, *, train: bool
                ) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        """(pred float32 [B, N], the second pass's hidden activations [B, H_i]).

        Rows past M (an evaluation block's padding) are zero in and out. `init` traces one
        row: it builds the params without the smoothing pass.

        Raises:
          ConfigError: fewer than M rows (but for `init`'s one row).
        """
        rows = ratings_BxN.shape[0]
        if self.is_initializing() and rows < self.num_rows:
            return self.local.forward(ratings_BxN, train=train)
        if rows < self.num_rows:
            raise ConfigError(
                f"GLocal-K reads the whole rating matrix at once ({self.num_rows} rows in "
                f"index order), got a block of {rows}: use train.batch_size 0 and "
                f"train.eval_batch_size >= {self.num_rows} on one device")
        matrix_MxN = ratings_BxN[:self.num_rows]
        recon_MxN, _ = self.local.forward(matrix_MxN, train=train)
        kernel_KxK = global_kernel(jnp.mean(recon_MxN, axis=1), self.conv_kernel,
                                   self.kernel_size, self.dot_scale)
        pred_MxN, hidden = self.local.forward(global_conv(matrix_MxN, kernel_KxK),
                                              train=train)
        pad = rows - self.num_rows
        if pad:
            pred_MxN = jnp.pad(pred_MxN, ((0, pad), (0, 0)))
            hidden = tuple(jnp.pad(h, ((0, pad), (0, 0))) for h in hidden)
        return pred_MxN, hidden

    def __call__(self, ratings_BxN: jax.Array, *, train: bool) -> jax.Array:
        return self.forward(ratings_BxN, train=train)[0]


def create_glocal_model(model_config, num_outputs: int) -> GLocalK:
    """The GLocal-K fine-tuning network `config.model` describes (`network` "glocal").

    Raises:
      ConfigError: `model.glocal_rows` is 0 (the run sets it from the data).
    """
    if model_config.glocal_rows < 1:
        raise ConfigError("model.glocal_rows is 0: GLocal-K's network needs the rating "
                          "matrix's row count (train_and_evaluate sets it from the data)")
    return GLocalK(num_outputs=num_outputs, num_rows=model_config.glocal_rows,
                   hidden=model_config.hidden, activation=model_config.activation,
                   output_activation=model_config.output_activation,
                   dropout=model_config.dropout, dim=model_config.kernel_dim,
                   kernel_size=model_config.glocal_kernel_size,
                   dot_scale=model_config.glocal_dot_scale,
                   matmul_precision=model_config.matmul_precision,
                   compute_dtype=model_config.compute_dtype)
