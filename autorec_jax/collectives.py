"""The step's only collectives, written so that one per-device function runs under jit (no
axis: identities) and under pmap or a mesh (an axis name: the reduction over it)."""

from __future__ import annotations

from typing import Any

import jax

PyTree = Any


def psum_if(tree: PyTree, axis_name: str | None) -> PyTree:
    """lax.psum over `axis_name`, or the identity on a single device."""
    return tree if axis_name is None else jax.lax.psum(tree, axis_name)


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
