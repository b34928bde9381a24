"""The only device-aware module: one per-device function, compiled with jit or pmap.

Per-device functions take `(carry, data, index, *rest, axis_name=None)`; `index` is the only
argument split across devices (its last axis holds the rows of a batch). Every collective
is a psum of sums and counts, so pmap returns replicated results (`out_axes=None`) with the
same structure as jit's, and nothing downstream branches on the mode.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from autorec_jax.data.batching import PAD_ROW
from autorec_jax.errors import ConfigError

AXIS = "devices"
PyTree = Any


def psum_if(tree: PyTree, axis_name: str | None) -> PyTree:
    """lax.psum over `axis_name`, or the identity on a single device."""
    return tree if axis_name is None else jax.lax.psum(tree, axis_name)


def axis_index_if(axis_name: str | None) -> jax.Array | int:
    return 0 if axis_name is None else jax.lax.axis_index(axis_name)


@dataclasses.dataclass(frozen=True)
class Parallel:
    """How per-device functions are compiled: "jit" on one device or "pmap" over D devices."""

    mode: str
    num_devices: int

    @classmethod
    def create(cls, mode: str = "auto") -> "Parallel":
        """`auto` picks pmap when more than one local device is present."""
        count = jax.local_device_count()
        if mode == "auto":
            mode = "pmap" if count > 1 else "jit"
        if mode == "jit":
            return cls("jit", 1)
        if mode == "pmap":
            return cls("pmap", count)
        raise ConfigError(f"train.parallel must be auto, jit or pmap, got {mode!r}")

    @property
    def devices(self) -> list:
        return jax.local_devices()[:self.num_devices]

    def rows_per_device(self, batch_rows: int) -> int:
        return math.ceil(batch_rows / self.num_devices)

    def shard(self, index: np.ndarray) -> np.ndarray:
        """Splits the last (rows) axis of an int index array across devices.

        jit: unchanged. pmap: [..., B] -> [D, ..., ceil(B/D)], padding with PAD_ROW rows (which
        are no-ops) when B is not a multiple of D, so no row is dropped or counted twice.
        """
        if self.mode == "jit":
            return index
        per_device = self.rows_per_device(index.shape[-1])
        padded = np.full(index.shape[:-1] + (per_device * self.num_devices,), PAD_ROW,
                         index.dtype)
        padded[..., :index.shape[-1]] = index
        split = padded.reshape(index.shape[:-1] + (self.num_devices, per_device))
        return np.moveaxis(split, -2, 0)

    def replicate(self, tree: PyTree) -> PyTree:
        """Places a pytree on every participating device (one copy each)."""
        mesh = Mesh(np.array(self.devices), (AXIS,))
        return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))

    def compile(self, fn: Callable, *, num_args: int, donate_carry: bool) -> Callable:
        """Wraps `fn(carry, data, index, ...)` for this mode (argument 2 is the sharded one)."""
        donate = (0,) if donate_carry else ()
        if self.mode == "jit":
            return jax.jit(functools.partial(fn, axis_name=None), donate_argnums=donate)
        in_axes = tuple(0 if i == 2 else None for i in range(num_args))
        return jax.pmap(functools.partial(fn, axis_name=AXIS), axis_name=AXIS,
                        in_axes=in_axes, out_axes=None, donate_argnums=donate,
                        devices=self.devices)
