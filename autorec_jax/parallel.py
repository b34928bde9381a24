"""The only device-aware module: one per-device function, compiled with jit or pmap.

A per-device function takes its arguments positionally plus `axis_name=` (None under jit).
`in_axes` marks the arguments split across devices (their leading axis is the device axis
under pmap; the caller shards them with `shard` or `shard_rows`). Every collective is a psum
of sums and counts, so results are replicated and come back with the same structure as
under jit (`out_axes=None`). An output that differs per device must be declared with
`out_axes=0` (it then comes back [D, ...]; `unshard_rows` merges it); one declared
replicated that is not is refused when the function is first compiled, never returned as
device 0's share.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from autorec_jax.data.batching import PAD_ROW
from autorec_jax.errors import ConfigError

AXIS = "devices"
PyTree = Any
log = logging.getLogger(__name__)


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
    def create(cls, mode: "str | Parallel" = "auto") -> "Parallel":
        """`auto` picks pmap when more than one local device is present."""
        if isinstance(mode, Parallel):
            return mode
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

    def shard_rows(self, tree: PyTree) -> PyTree:
        """Splits the leading (rows) axis of every leaf: [B, ...] -> [D, ceil(B/D), ...].

        Padding rows are zeros (False for bool leaves): an all-zero, unobserved row with
        row_mask False, a no-op in every loss. jit: unchanged.
        """
        if self.mode == "jit":
            return tree

        def split(x):
            x = np.asarray(x)
            per_device = self.rows_per_device(x.shape[0])
            padded = np.zeros((per_device * self.num_devices,) + x.shape[1:], x.dtype)
            padded[:x.shape[0]] = x
            return padded.reshape((self.num_devices, per_device) + x.shape[1:])

        return jax.tree.map(split, tree)

    def unshard_rows(self, tree: PyTree, num_rows: int) -> PyTree:
        """Inverse of `shard_rows` for per-device outputs: [D, b, ...] -> [num_rows, ...]."""
        if self.mode == "jit":
            return jax.tree.map(lambda x: x[:num_rows], tree)
        return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:])[:num_rows], tree)

    def replicate(self, tree: PyTree) -> PyTree:
        """Places a pytree on every participating device (one copy each)."""
        return jax.device_put(tree, NamedSharding(self._mesh(), PartitionSpec()))

    def compile(self, fn: Callable, *, in_axes: tuple, out_axes: PyTree = None,
                donate_argnums: tuple[int, ...] = ()) -> "CompiledOnFirstUse":
        """Wraps the per-device `fn(*args, axis_name=...)` for this mode.

        Args:
          in_axes: one entry per positional argument: 0 if it is split across devices, else
            None.
          out_axes: a prefix of the output tree: None where replicated (psummed), 0 where
            each device returns its own share.
          donate_argnums: arguments whose buffers the call may reuse (never reuse them).
        """
        if self.mode == "jit":
            return CompiledOnFirstUse(jax.jit(functools.partial(fn, axis_name=None),
                                              donate_argnums=donate_argnums))
        wrapped = jax.pmap(functools.partial(fn, axis_name=AXIS), axis_name=AXIS,
                           in_axes=in_axes, out_axes=out_axes, donate_argnums=donate_argnums,
                           devices=self.devices)
        return CompiledOnFirstUse(wrapped, functools.partial(
            self._check_replication, fn, in_axes, out_axes))

    def _mesh(self) -> Mesh:
        return Mesh(np.array(self.devices), (AXIS,))

    def _check_replication(self, fn, in_axes, out_axes, *args) -> None:
        """Traces `fn` under shard_map's replication checker (no execution)."""
        def spec(axis):
            return PartitionSpec() if axis is None else PartitionSpec(AXIS)

        def per_device(*args):
            args = [a if ax is None else jax.tree.map(lambda x: x[0], a)
                    for a, ax in zip(args, in_axes)]
            out = fn(*args, axis_name=AXIS)
            return jax.tree.map(lambda ax, sub: sub if ax is None else jax.tree.map(
                lambda x: x[None], sub), out_axes, out, is_leaf=lambda x: x is None)

        out_specs = jax.tree.map(spec, out_axes, is_leaf=lambda x: x is None)
        checked = jax.shard_map(per_device, mesh=self._mesh(),
                                in_specs=tuple(spec(a) for a in in_axes),
                                out_specs=out_specs, check_vma=True)
        try:
            jax.eval_shape(checked, *args)
        except ValueError as err:
            if "out_specs" not in str(err):
                raise
            text = " ".join(str(err).split())
            detail = text[text.find("out_specs"):][:300]
            raise ConfigError(
                f"{getattr(fn, '__name__', fn)}: an output declared replicated (out_axes "
                "None) differs across devices under pmap; declare it per device with "
                f"out_axes=0 or psum it. JAX says: {detail}") from None


class CompiledOnFirstUse:
    """A jit- or pmap-wrapped function, compiled ahead of its first call for each argument
    signature (shapes and dtypes), so that any epoch length works and nothing is compiled
    that is not used. `compile_seconds` adds up the time spent compiling."""

    def __init__(self, wrapped: Callable, check: Callable | None = None):
        self._wrapped = wrapped
        self._check = check
        self._executables: dict = {}
        self.compile_seconds = 0.0

    def __call__(self, *args):
        key = _signature(args)
        executable = self._executables.get(key)
        if executable is None:
            start = time.perf_counter()
            if self._check is not None:
                self._check(*args)
            executable = self._wrapped.lower(*args).compile()
            self._executables[key] = executable
            self.compile_seconds += time.perf_counter() - start
        return executable(*args)


def _signature(args) -> tuple:
    leaves, treedef = jax.tree.flatten(args)
    return treedef, tuple((np.shape(x), str(getattr(x, "dtype", type(x)))) for x in leaves)
