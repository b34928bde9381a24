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
