"""The step's only collectives, written so that one per-device function runs under jit (no
axis: identities) and under pmap or a mesh (an axis name: the reduction over it)."""

from __future__ import annotations

from typing import Any

import jax

PyTree = Any


def psum_if(tree: PyTree, axis_name: str | None) -> PyTree:
    """lax.psum over `axis_name`, or the identity on a single device."""
    return tree if axis_name is None else jax.lax.psum(tree, axis_name)


def gather_if(x: jax.Array, axis_name: str | None) -> jax.Array:
    """Every device's `x` stacked, [D, ...], the same on every device ([1, ...] on one).

    Built as a psum of each device's value in its own slot, so that the result is typed
    replicated under shard_map's check_vma (`lax.all_gather`'s is typed varying).
    """
    if axis_name is None:
        return x[None]
    size = jax.lax.axis_size(axis_name)
    kind = x.dtype
    if kind == jax.numpy.bool_:
        x = x.astype(jax.numpy.int32)
    slots = jax.numpy.zeros((size,) + x.shape, x.dtype).at[jax.lax.axis_index(axis_name)].set(x)
    out = jax.lax.psum(slots, axis_name)
    return out.astype(kind) if kind == jax.numpy.bool_ else out


def axis_index_if(axis_name: str | None) -> jax.Array | int:
    return 0 if axis_name is None else jax.lax.axis_index(axis_name)


def pvary_if(tree: PyTree, axis_name: str | None) -> PyTree:
    """Marks the leaves not yet varying over `axis_name` as varying (`lax.pcast`).

    Under shard_map with check_vma a replicated value is typed invariant, and autodiff
    psums the cotangent of an invariant input itself; marking a differentiated input
    varying keeps its gradients per device, for one explicit psum. The identity on one
    device and under pmap (which does not track varying values).
    """
    if axis_name is None:
        return tree
    return jax.tree.map(lambda x: x if axis_name in varying_axes(x) else jax.lax.pcast(
        x, axis_name, to="varying"), tree)


def varying_axes(x) -> frozenset:
    """The manual mesh axes `x` varies over, as JAX's type says (empty outside shard_map)."""
    aval = jax.typeof(x)
    manual = getattr(aval, "mat", None)        # jax 0.10 and 0.11: aval.mat.varying
    if manual is not None:
        return frozenset(manual.varying)
    return frozenset(getattr(aval, "vma", ()))  # earlier releases
