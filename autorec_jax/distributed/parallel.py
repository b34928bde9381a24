"""The only device-aware module: one per-device function, compiled with jit, pmap or sharded
jit over a device mesh, and the multi-process start.

A per-device function takes its arguments positionally plus `axis_name=` (None under jit).
`in_axes` marks the arguments split across devices (their leading axis is the device axis;
the caller shards them with `shard` or `shard_rows`). Every collective is a psum of sums and
counts, so results are replicated and come back with the same structure as under jit
(`out_axes=None`). An output that differs per device must be declared with `out_axes=0` (it
then comes back [D, ...]; `unshard_rows` merges it); one declared replicated that is not is
refused when the function is first compiled, never returned as device 0's share.

Modes:
  jit      one device, `axis_name=None`: every psum is the identity.
  pmap     `jax.pmap` over the local devices (kept: it is part of the design, though JAX has
           it in maintenance mode), axis "devices".
  sharded  `jax.jit(jax.shard_map(...))` over a Mesh of two axes, ("data", "model"):
           - "data" (D devices) splits the rows of a batch, as pmap does. The shard_map is
             MANUAL over "data" with `check_vma=False`, so the per-device step is literally
             the pmap one: its explicit psums of sums, counts and (once) gradients are the
             only data-axis reductions. (With check_vma=True, autodiff would already psum the
             gradients of replicated params and the step's own psum would count them D
             times: JAX_NOTES 2.3.)
           - "model" (M devices, default 1) shards the row width N: every train-state leaf
             with an axis of size N (V [N, H], W [H, N], b [N] and their Adam moments) is
             placed split along it. The shard_map is AUTOMATIC (GSPMD) over "model"
             (`axis_names={"data"}`, partial-manual mode, checked on jax 0.10.2): XLA
             partitions the matmuls and inserts the model-axis reductions itself, so the
             step has no model-axis code at all and stays one code path for jit, pmap and
             sharded. The alternative, explicit model-axis psums (of V's partial products in
             the encoder, and of their cotangents), would have put device code into the
             model and the loss; GSPMD gives the same numbers (tested to 1e-5 on the meshes
             (8, 1), (4, 2), (2, 4)). N must be a multiple of M: JAX refuses uneven shards of
             a committed array, so an indivisible N is refused with the divisors that work.
           In several processes (`initialize_distributed`) the mesh spans every process's
           devices; each process builds its own devices' shards of a sharded argument from
           the host array (`jax.make_array_from_callback`), so the loop is unchanged, and
           `put_shares` places per-device data (each device's rows, `shares_rows`) built
           only for this process's devices.
  auto     sharded when more than one device is visible (the ecosystem's path, and faster
           than pmap on fake CPU devices), jit otherwise.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import time
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from autorec_jax.data.batching import PAD_ROW
from autorec_jax.errors import ConfigError

AXIS = "devices"          # pmap's axis
DATA_AXIS = "data"        # sharded: rows of a batch
MODEL_AXIS = "model"      # sharded: the row width N
MODES = ("auto", "jit", "pmap", "sharded")
PyTree = Any
log = logging.getLogger(__name__)


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
    """Starts multi-process JAX (`jax.distributed.initialize`) before any device is used.

    Each argument falls back to an environment variable: AUTOREC_COORDINATOR (or
    JAX_COORDINATOR_ADDRESS), AUTOREC_NUM_PROCESSES (or JAX_NUM_PROCESSES),
    AUTOREC_PROCESS_ID (or JAX_PROCESS_ID). With none of them set nothing is started (one
    process); on Slurm, Kubernetes or a Cloud TPU pass `coordinator_address="auto"` to let
    JAX detect the cluster. Returns whether a multi-process run was started.
    """
    def env(*names):
        return next((os.environ[n] for n in names if os.environ.get(n)), None)

    address = coordinator_address or env("AUTOREC_COORDINATOR", "JAX_COORDINATOR_ADDRESS")
    count = num_processes if num_processes is not None else env(
        "AUTOREC_NUM_PROCESSES", "JAX_NUM_PROCESSES")
    index = process_id if process_id is not None else env("AUTOREC_PROCESS_ID",
                                                          "JAX_PROCESS_ID")
    if address is None:
        if count is not None or index is not None:
            raise ConfigError("a process count or id was given without a coordinator "
                              "address; pass --coordinator-address HOST:PORT")
        return False
    if address == "auto":
        jax.distributed.initialize()
    else:
        if count is None or index is None:
            raise ConfigError("--coordinator-address needs --num-processes and --process-id "
                              "(or AUTOREC_NUM_PROCESSES and AUTOREC_PROCESS_ID)")
        jax.distributed.initialize(address, int(count), int(index))
    log.info("process %d of %d, %d local / %d global devices", jax.process_index(),
             jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def is_primary() -> bool:
    """Whether this process writes files (process 0; the only process when not distributed)."""
    return jax.process_index() == 0


def from_primary(value: int) -> int:
    """Process 0's `value` (an int32), on every process; every process must call it."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils
    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


@dataclasses.dataclass(frozen=True)
class Parallel:
    """How per-device functions are compiled: "jit" on one device, "pmap" over D local
    devices, or "sharded" over a (data D, model M) mesh of all devices (D * M of them)."""

    mode: str
    num_devices: int
    model: int = 1                 # sharded: size of the "model" axis (shards N)

    @classmethod
    def create(cls, mode: "str | Parallel" = "auto", model: int = 1) -> "Parallel":
        """`auto` picks sharded when more than one device is visible, jit otherwise."""
        if isinstance(mode, Parallel):
            return mode
        if mode == "auto":
            mode = "sharded" if jax.device_count() > 1 or model > 1 else "jit"
        if mode != "sharded" and model != 1:
            raise ConfigError(f"train.model_parallel {model} needs train.parallel sharded "
                              f"(or auto), not {mode}")
        if mode != "sharded" and jax.process_count() > 1:
            raise ConfigError(f"train.parallel {mode} runs in one process; with "
                              f"{jax.process_count()} processes use sharded (or auto)")
        if mode == "jit":
            return cls("jit", 1)
        if mode == "pmap":
            return cls("pmap", jax.local_device_count())
        if mode == "sharded":
            count = jax.device_count()
            if model < 1 or count % model:
                raise ConfigError(f"train.model_parallel must divide the {count} devices, "
                                  f"got {model}")
            parallel = cls("sharded", count, model)
            if any(len({device.process_index for device in group}) > 1
                   for group in parallel.mesh.devices):
                # XLA's SPMD partitioner rejects the partial-manual step when a model group
                # spans processes ("Cross-partition allreduce must be in (partial) manual
                # partitioning mode"; jax 0.10.2, CPU/gloo); within a process it works.
                raise ConfigError(
                    f"train.model_parallel {model} spans processes (each has "
                    f"{jax.local_device_count()} devices); the model axis must stay within "
                    f"one process: use at most {jax.local_device_count()}")
            return parallel
        raise ConfigError(f"train.parallel must be one of {', '.join(MODES)}, got {mode!r}")

    @property
    def devices(self) -> list:
        if self.mode == "sharded":
            return list(self.mesh.devices.flat)
        return jax.local_devices()[:self.num_devices]

    @property
    def data_size(self) -> int:
        """D: the devices a batch's rows are split over."""
        return self.num_devices // self.model

    @functools.cached_property
    def mesh(self) -> Mesh:
        """sharded: the (data, model) mesh; pmap: a 1-D mesh over its devices."""
        if self.mode != "sharded":
            return Mesh(np.array(jax.local_devices()[:self.num_devices]), (AXIS,))
        return jax.make_mesh((self.data_size, self.model), (DATA_AXIS, MODEL_AXIS),
                             axis_types=(AxisType.Auto, AxisType.Auto))

    @property
    def axis_name(self) -> str | None:
        """The axis name the per-device functions see."""
        return {"jit": None, "pmap": AXIS, "sharded": DATA_AXIS}[self.mode]

    def rows_per_device(self, batch_rows: int) -> int:
        return math.ceil(batch_rows / self.data_size)

    def shard(self, index: np.ndarray) -> np.ndarray:
        """Splits the last (rows) axis of an int index array across the data devices.

        jit: unchanged. Otherwise: [..., B] -> [D, ..., ceil(B/D)], padding with PAD_ROW rows
        (which are no-ops) when B is not a multiple of D, so no row is dropped or counted
        twice.
        """
        if self.mode == "jit":
            return index
        per_device = self.rows_per_device(index.shape[-1])
        padded = np.full(index.shape[:-1] + (per_device * self.data_size,), PAD_ROW,
                         index.dtype)
        padded[..., :index.shape[-1]] = index
        split = padded.reshape(index.shape[:-1] + (self.data_size, per_device))
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
            padded = np.zeros((per_device * self.data_size,) + x.shape[1:], x.dtype)
            padded[:x.shape[0]] = x
            return padded.reshape((self.data_size, per_device) + x.shape[1:])

        return jax.tree.map(split, tree)

    def unshard_rows(self, tree: PyTree, num_rows: int) -> PyTree:
        """Inverse of `shard_rows` for per-device outputs: [D, b, ...] -> [num_rows, ...]."""
        if self.mode == "jit":
            return jax.tree.map(lambda x: x[:num_rows], tree)
        return jax.tree.map(lambda x: to_host(x).reshape((-1,) + x.shape[2:])[:num_rows],
                            tree)

    @property
    def shares_rows(self) -> bool:
        """Whether each device holds only the rows it works on (sharded), not all of them."""
        return self.mode == "sharded"

    def _data_index_of(self) -> dict:
        """Each mesh device's position on the data axis."""
        return {device: d for (d, _), device in np.ndenumerate(self.mesh.devices)}

    def addressable_data_indices(self) -> list[int]:
        """The data-axis positions of this process's devices (sharded), in order."""
        return sorted({d for device, d in self._data_index_of().items()
                       if device.process_index == jax.process_index()})

    def put_shares(self, build: Callable[[int], PyTree]) -> PyTree:
        """A pytree whose leaves are [D, ...], entry d from `build(d)` (NumPy, one shape for
        every d), split over the data axis; `build` runs only for this process's devices.
        """
        index_of = self._data_index_of()
        sharding = NamedSharding(self.mesh, PartitionSpec(DATA_AXIS))
        built: dict = {}
        per_device = []
        for device in sharding.addressable_devices:
            d = index_of[device]
            if d not in built:
                built[d] = build(d)
            per_device.append((device, built[d]))
        leaves = [jax.tree.leaves(tree) for _, tree in per_device]
        treedef = jax.tree.structure(per_device[0][1])
        arrays = [jax.make_array_from_single_device_arrays(
            (self.data_size,) + np.shape(leaf), sharding,
            [jax.device_put(np.asarray(tree_leaves[i])[None], device)
             for (device, _), tree_leaves in zip(per_device, leaves)])
            for i, leaf in enumerate(leaves[0])]
        return jax.tree.unflatten(treedef, arrays)

    def replicate(self, tree: PyTree, row_width: int | None = None) -> PyTree:
        """Places a pytree on every participating device (one copy each).

        sharded with a model axis: given `row_width` (N), each leaf with an axis of size N
        is split along it over "model" (a train state's V, W, b and optimiser moments).
        """
        if self.mode != "sharded":
            return jax.device_put(tree, NamedSharding(self.mesh, PartitionSpec()))
        if row_width is not None and row_width % self.model:
            divisors = [m for m in range(1, self.num_devices + 1)
                        if row_width % m == 0 and self.num_devices % m == 0]
            raise ConfigError(f"train.model_parallel {self.model} does not divide the row "
                              f"width N={row_width} (JAX shards arrays evenly only); "
                              f"choose one of {divisors}")
        return jax.tree.map(lambda x: self._put(x, self._state_spec(x, row_width)), tree)

    def _state_spec(self, x, row_width: int | None) -> PartitionSpec:
        shape = np.shape(x)
        if self.model == 1 or row_width is None or row_width not in shape:
            return PartitionSpec()
        return PartitionSpec(*(MODEL_AXIS if i == shape.index(row_width) else None
                               for i in range(len(shape))))

    def _put(self, x, spec: PartitionSpec):
        """`x` (host, one device, or global) as a global array of sharding `spec`."""
        sharding = NamedSharding(self.mesh, spec)
        if isinstance(x, jax.Array):
            if x.sharding.is_equivalent_to(sharding, x.ndim):
                return x
            if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
                return jax.random.wrap_key_data(self._put(jax.random.key_data(x), spec),
                                                impl=jax.random.key_impl(x))
            if not x.is_fully_addressable:
                return jax.device_put(x, sharding)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

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
        check = functools.partial(self._check_replication, fn, in_axes, out_axes)
        if self.mode == "pmap":
            wrapped = jax.pmap(functools.partial(fn, axis_name=AXIS), axis_name=AXIS,
                               in_axes=in_axes, out_axes=out_axes,
                               donate_argnums=donate_argnums, devices=self.devices)
            return CompiledOnFirstUse(wrapped, check)

        def spec(axis):
            return PartitionSpec() if axis is None else PartitionSpec(DATA_AXIS)

        mapped = jax.shard_map(
            _per_device(fn, in_axes, out_axes, DATA_AXIS), mesh=self.mesh,
            in_specs=tuple(spec(a) for a in in_axes),
            out_specs=jax.tree.map(spec, out_axes, is_leaf=lambda x: x is None),
            axis_names={DATA_AXIS}, check_vma=False)

        def place(*args):
            return tuple(arg if axis is None and _placed(arg) else jax.tree.map(
                lambda x: self._put(x, spec(axis)), arg) for arg, axis in zip(args, in_axes))

        return CompiledOnFirstUse(jax.jit(mapped, donate_argnums=donate_argnums), check,
                                  place)

    def _check_replication(self, fn, in_axes, out_axes, *args) -> None:
        """Traces `fn` under shard_map's replication checker (no execution)."""
        axis = self.axis_name
        devices = np.array(self.devices).reshape(self.data_size, self.model)[:, 0]
        mesh = Mesh(devices, (axis,))

        def spec(a):
            return PartitionSpec() if a is None else PartitionSpec(axis)

        out_specs = jax.tree.map(spec, out_axes, is_leaf=lambda x: x is None)
        checked = jax.shard_map(_per_device(fn, in_axes, out_axes, axis), mesh=mesh,
                                in_specs=tuple(spec(a) for a in in_axes),
                                out_specs=out_specs, check_vma=True)
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype)
                                if hasattr(x, "dtype") else x, args)
        try:
            jax.eval_shape(checked, *abstract)
        except ValueError as err:
            if "out_specs" not in str(err):
                raise
            text = " ".join(str(err).split())
            detail = text[text.find("out_specs"):][:300]
            raise ConfigError(
                f"{getattr(fn, '__name__', fn)}: an output declared replicated (out_axes "
                "None) differs across devices; declare it per device with out_axes=0 or "
                f"psum it. JAX says: {detail}") from None


def _per_device(fn, in_axes, out_axes, axis_name):
    """`fn` on one device's share: drops the leading device axis of split arguments (shard_map
    keeps it, size 1) and restores it on per-device outputs."""
    def per_device(*args):
        args = [a if ax is None else jax.tree.map(lambda x: x[0], a)
                for a, ax in zip(args, in_axes)]
        out = fn(*args, axis_name=axis_name)
        return jax.tree.map(lambda ax, sub: sub if ax is None else jax.tree.map(
            lambda x: x[None], sub), out_axes, out, is_leaf=lambda x: x is None)
    return per_device


def _placed(tree) -> bool:
    """Whether every leaf is already a jax.Array on several devices (placed by `replicate`)."""
    return all(isinstance(x, jax.Array) and len(x.sharding.device_set) > 1
               for x in jax.tree.leaves(tree))


def to_host(x) -> np.ndarray:
    """A NumPy copy of `x` from this process's shards (no collective), so that process 0
    alone can read a replicated result or save a state whose every value it holds.

    Raises:
      ValueError: some values of `x` live only on other processes.
    """
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
    out = np.empty(x.shape, x.dtype)
    seen = np.zeros(x.shape, bool)
    for shard in x.addressable_shards:
        out[shard.index] = np.asarray(shard.data)
        seen[shard.index] = True
    if not seen.all():
        raise ValueError(f"an array of shape {x.shape} is split across processes; gather "
                         "it with jax.experimental.multihost_utils.process_allgather")
    return out


def fetch(tree: PyTree) -> PyTree:
    """`jax.device_get` that also reads multi-process arrays (see `to_host`)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return jax.tree.map(to_host, tree)


class CompiledOnFirstUse:
    """A jit- or pmap-wrapped function, compiled ahead of its first call for each argument
    signature (shapes, dtypes and shardings), so that any epoch length works and nothing is
    compiled that is not used. `compile_seconds` adds up the time spent compiling."""

    def __init__(self, wrapped: Callable, check: Callable | None = None,
                 place: Callable | None = None):
        self._wrapped = wrapped
        self._check = check
        self._place = place
        self._executables: dict = {}
        self.compile_seconds = 0.0

    def __call__(self, *args):
        if self._place is not None:
            args = self._place(*args)
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
    return treedef, tuple((np.shape(x), str(getattr(x, "dtype", type(x))),
                           getattr(x, "sharding", None) if isinstance(x, jax.Array) else None)
                          for x in leaves)
