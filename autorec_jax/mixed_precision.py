"""Mixed-precision matmul: low-precision (bf16) inputs, float32 products, in both passes.

`low_precision_matmul(x, kernel)` multiplies float32 arrays as bf16 with float32
accumulation, forward and backward, and returns float32 results and float32 gradients.

Why not `jax.lax.dot_general(..., preferred_element_type=float32)` on bf16 operands and
JAX's own derivative: its backward dots contract over the batch axis (x^T . dy) or over the
kernel's output axis (dy . k^T). XLA:CPU (jax 0.10-0.12) folds those transposes into the
dot, and its bf16 matmul fast path (YNNPACK) only takes the plain row-major form, so XLA
converts those operands back to float32: only the two forward matmuls of the five in a
step ran in bf16. Here, on the CPU, the backward operands are transposed by a gather, which
XLA cannot fold into the dot, so every matmul is a plain bf16 one (measured in
`scripts/benchmark.py --precision`). Other platforms get plain transposes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """[M, K] . [K, N] with float32 products."""
    return jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())),
                               preferred_element_type=jnp.float32)


def _transposed(a: jax.Array) -> jax.Array:
    """a.T [C, R] of a [R, C]: on the CPU materialised row-major by a gather (see the
    module doc); elsewhere a plain transpose, which GPU and TPU dots take as it is."""
    return jax.lax.platform_dependent(a, cpu=_gathered_transpose, default=jnp.transpose)


def _gathered_transpose(a: jax.Array) -> jax.Array:
    rows, cols = a.shape
    index = (jnp.arange(cols, dtype=jnp.int32)[:, None]
             + jnp.arange(rows, dtype=jnp.int32)[None, :] * cols).reshape(-1)
    return jnp.take(a.reshape(-1), index, unique_indices=True).reshape(cols, rows)


def low_precision_matmul(x: jax.Array, kernel: jax.Array,
                         dtype: jnp.dtype = jnp.bfloat16) -> jax.Array:
    """x [B, K] . kernel [K, N] -> float32 [B, N], both operands rounded to `dtype`.

    The gradients are float32: dx = dy . k^T and dk = x^T . dy, with dy, x and k rounded
    to `dtype` and the products accumulated in float32.
    """
    x, kernel = _same_varying_axes(x.astype(jnp.float32), kernel.astype(jnp.float32))
    return _low_precision_matmul(jnp.dtype(dtype), x, kernel)


def _varying_axes(a: jax.Array) -> frozenset:
    """The shard_map axes `a` varies over (only traced with check_vma=True; else none)."""
    aval = jax.typeof(a)
    vma = getattr(aval, "vma", None)
    if vma is None:
        vma = getattr(getattr(aval, "manual_axis_type", None), "varying", frozenset())
    return frozenset(vma)


def _same_varying_axes(x: jax.Array, kernel: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Both operands marked varying over the axes either varies over. A custom VJP must
    return cotangents typed like its inputs; a replicated kernel's cotangent, computed
    from a per-device dy, varies, and the cast's transpose psums it as JAX's own dot
    derivative would."""
    axes = _varying_axes(x) | _varying_axes(kernel)
    cast = [tuple(sorted(axes - _varying_axes(a))) for a in (x, kernel)]
    return tuple(jax.lax.pcast(a, names, to="varying") if names else a
                 for a, names in zip((x, kernel), cast))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _low_precision_matmul(dtype, x, kernel):
    return _matmul(x.astype(dtype), kernel.astype(dtype))


def _forward(dtype, x, kernel):
    x_low, kernel_low = x.astype(dtype), kernel.astype(dtype)
    return _matmul(x_low, kernel_low), (x_low, kernel_low)


def _backward(dtype, residuals, dy):
    x_low, kernel_low = residuals
    dy_low = dy.astype(dtype)
    return _matmul(dy_low, _transposed(kernel_low)), _matmul(_transposed(x_low), dy_low)


_low_precision_matmul.defvjp(_forward, _backward)
