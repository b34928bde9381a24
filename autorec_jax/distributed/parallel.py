"""The only device-aware module: one per-device function, compiled with jit, pmap or sharded
jit over a device mesh, and the multi-process start.

A per-device function takes its arguments positionally plus `axis_name=` (None under jit).
`in_axes` marks the arguments split across devices (their leading axis is the device axis;
the caller shards them with `shard` or `shard_rows`). Every collective is a psum of sums and
counts, so results are replicated and come back with the same structure as under jit
(`out_axes=None`). An output that differs per device must be declared with `out_axes=0` (it
then comes back [D, ...]; `unshard_rows` merges it); under sharded, one declared replicated
that is not is refused when the function is traced, never returned as device 0's share
(pmap cannot tell: see below).

Modes:
  jit      one device, `axis_name=None`: every psum is the identity.
  pmap     `jax.pmap` over the local devices (kept: it is part of the design, though JAX has
           it in maintenance mode), axis "devices".
  sharded  `jax.jit(jax.shard_map(...))` over a Mesh of two axes, ("data", "model"):
           - "data" (D devices) splits the rows of a batch, as pmap does. The shard_map is
             MANUAL over "data" with `check_vma=True`: JAX types every value as varying
             over "data" or not, so an output declared replicated (out_axes None) that
             varies is refused while tracing (`_per_device`), by the type, not by a run.
             Autodiff under check_vma psums the gradients of replicated (invariant)
             params itself; `compute_grads` marks the params varying first (`pvary_if`),
             so the step's own explicit psum stays the one data-axis reduction of the
             gradients, as under pmap (JAX_NOTES 2.3: otherwise they count D times).
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

What pmap shares with sharded: the per-device function and its `axis_name` convention, the
in_axes/out_axes meaning (split [D, ...] arguments lose their device axis: pmap squeezes it,
`_per_device` drops shard_map's size-1 block), the host layouts (`shard`, `shard_rows`,
`unshard_rows`) and the replicated results. jax.pmap is itself built as jit over a
shard_map (jax/_src/pmap.py, jax 0.10), but with `check_vma=False` and no way to turn it on,
so pmap cannot see which values vary: an output declared replicated that varies comes back
as device 0's share there. Write and check a per-device function under sharded (the
default on several devices), which refuses it.

Every mode compiles with plain `jax.jit` (or `jax.pmap`): the compiled calls compose with
`jax.vmap`, `lax.scan` and a caller's own `jax.jit`, and jit's own cache handles new shapes.
`CompileClock` measures their compile time from JAX's monitoring events.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from autorec_jax.data.batching import PAD_ROW
from autorec_jax.collectives import varying_axes
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

    def split_rows(self, tree: PyTree) -> PyTree:
        """`shard_rows` as traced code, for use inside jit: on the device, no host copy."""
        if self.mode == "jit":
            return tree

        def split(x):
            per_device = self.rows_per_device(x.shape[0])
            pad = [(0, per_device * self.data_size - x.shape[0])] + [(0, 0)] * (x.ndim - 1)
            return jnp.pad(x, pad).reshape((self.data_size, per_device) + x.shape[1:])

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
        Leaves already placed so go through untouched; other device arrays move device to
        device; host values (and, across processes, one device's arrays) are built shard
        by shard from the host copy.
        """
        shardings = self.shardings(tree, row_width)
        return jax.tree.map(self._put, tree, shardings)

    def build(self, create: Callable[..., PyTree], *args, row_width: int | None = None
              ) -> PyTree:
        """`create(*args)` (e.g. a fresh train state) computed under jit straight into the
        layout of `replicate`: each device only ever holds its own shard."""
        abstract = jax.eval_shape(create, *args)
        # Leaves only: static fields (a train state's apply_fn, tx) differ between two calls
        # of `create`, and jit's out_shardings must match the output's structure exactly.
        leaves = jax.jit(lambda *a: jax.tree.leaves(create(*a)),
                         out_shardings=jax.tree.leaves(self.shardings(abstract, row_width)))(
            *self.replicate(args))  # replicated: across processes jit takes global arrays
        return jax.tree.unflatten(jax.tree.structure(abstract), leaves)

    def shardings(self, tree: PyTree, row_width: int | None = None) -> PyTree:
        """The `NamedSharding` of each leaf of `tree` (arrays or shapes) in this layout."""
        if self.mode != "sharded":
            return jax.tree.map(lambda _: NamedSharding(self.mesh, PartitionSpec()), tree)
        if row_width is not None and row_width % self.model:
            divisors = [m for m in range(1, self.num_devices + 1)
                        if row_width % m == 0 and self.num_devices % m == 0]
            raise ConfigError(f"train.model_parallel {self.model} does not divide the row "
                              f"width N={row_width} (JAX shards arrays evenly only); "
                              f"choose one of {divisors}")
        return jax.tree.map(
            lambda x: NamedSharding(self.mesh, self._state_spec(x, row_width)), tree)

    def _state_spec(self, x, row_width: int | None) -> PartitionSpec:
        shape = np.shape(x)
        if self.model == 1 or row_width is None or row_width not in shape:
            return PartitionSpec()
        return PartitionSpec(*(MODEL_AXIS if i == shape.index(row_width) else None
                               for i in range(len(shape))))

    def _put(self, x, sharding: NamedSharding):
        """`x` (host, one device, or global) as a global array of `sharding`."""
        if isinstance(x, jax.Array):
            if x.sharding.is_equivalent_to(sharding, x.ndim):
                return x
            if not x.is_fully_addressable or sharding.is_fully_addressable:
                return jax.device_put(x, sharding)     # device to device
            if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
                return jax.random.wrap_key_data(
                    self._put(jax.random.key_data(x), sharding), impl=jax.random.key_impl(x))
        # Across processes a local array cannot be device_put to a global sharding (JAX_NOTES
        # 6): every process builds its own devices' shards from the host copy.
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    def compile(self, fn: Callable, *, in_axes: tuple, out_axes: PyTree = None,
                donate_argnums: tuple[int, ...] = ()) -> Callable:
        """Wraps the per-device `fn(*args, axis_name=...)` for this mode: a plain `jax.jit`
        (sharded: of a `jax.shard_map`) or `jax.pmap` function, traced and compiled by JAX on
        each new argument signature, which composes with vmap, scan and jit.

        Args:
          in_axes: one entry per positional argument: 0 if it is split across devices (its
            leading axis is the device axis, see `shard`), else None.
          out_axes: a prefix of the output tree: None where replicated (psummed), 0 where
            each device returns its own share.
          donate_argnums: arguments whose buffers the call may reuse (never reuse them).

        Raises (sharded, when traced):
          ConfigError: an output declared replicated varies across the data devices.
        """
        if self.mode == "jit":
            return jax.jit(functools.partial(fn, axis_name=None), donate_argnums=donate_argnums)
        if self.mode == "pmap":
            return jax.pmap(functools.partial(fn, axis_name=AXIS), axis_name=AXIS,
                            in_axes=in_axes, out_axes=out_axes,
                            donate_argnums=donate_argnums, devices=self.devices)

        def spec(axis):
            return PartitionSpec() if axis is None else PartitionSpec(DATA_AXIS)

        mapped = jax.jit(jax.shard_map(
            _per_device(fn, in_axes, out_axes, DATA_AXIS), mesh=self.mesh,
            in_specs=tuple(spec(a) for a in in_axes),
            out_specs=jax.tree.map(spec, out_axes, is_leaf=lambda x: x is None),
            axis_names={DATA_AXIS}, check_vma=True), donate_argnums=donate_argnums)

        def place(args):
            """Host arguments onto the mesh (several processes: each builds its shards)."""
            return tuple(arg if axis is None and _placed(arg) else jax.tree.map(
                lambda x: self._put(x, NamedSharding(self.mesh, spec(axis))), arg)
                for arg, axis in zip(args, in_axes))

        @functools.wraps(fn)
        def call(*args):
            # Under a caller's trace (vmap, scan, jit) the arguments are tracers: no placing.
            if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(args)):
                return mapped(*args)
            return mapped(*place(args))

        call.lower = lambda *args: mapped.lower(*place(args))
        return call


def _per_device(fn, in_axes, out_axes, axis_name):
    """`fn` on one device's share: drops the leading device axis of split arguments (shard_map
    keeps it, size 1) and restores it on per-device outputs. An output declared replicated
    that JAX types as varying over `axis_name` is refused here, naming it."""
    def per_device(*args):
        args = [a if ax is None else jax.tree.map(lambda x: x[0], a)
                for a, ax in zip(args, in_axes)]
        out = fn(*args, axis_name=axis_name)
        varying = []

        def find(prefix, ax, sub):
            if ax is None:
                varying.extend(jax.tree_util.keystr(prefix + path) or "the output"
                               for path, x in jax.tree_util.tree_leaves_with_path(sub)
                               if axis_name in varying_axes(x))

        jax.tree_util.tree_map_with_path(find, out_axes, out, is_leaf=lambda x: x is None)
        if varying:
            raise ConfigError(
                f"{getattr(fn, '__name__', 'the function')}: output {', '.join(varying)} "
                f"declared replicated (out_axes None) varies across the {axis_name!r} "
                "devices; declare it per device with out_axes=0, or psum it")
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


# JAX's monitoring events of one compilation: tracing to a jaxpr, lowering to MLIR, and XLA's
# compile (jax/_src/dispatch.py; the same names in jax 0.10 and 0.11).
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                  "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


class CompileClock:
    """Seconds this process spent tracing, lowering and compiling while the clock ran.

    `with clock:` listens to JAX's compile events (`jax.monitoring` time spans) for the
    block and removes its listener after it; `seconds` adds up the union of the spans, so
    a trace nested in another (a jitted helper inside a step) counts once. A call that
    hits jit's cache adds nothing.
    """

    def __init__(self):
        self.seconds = 0.0
        self._spans: list[tuple[float, float]] | None = None

    def _listen(self, event: str, start: float, end: float, **_) -> None:
        if event in COMPILE_EVENTS:
            self._spans.append((start, end))

    def __enter__(self) -> "CompileClock":
        if self._spans is not None:
            raise RuntimeError("CompileClock is already running")
        self._spans = []
        jax.monitoring.register_event_time_span_listener(self._listen)
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_time_span_listener(self._listen)
        spans, self._spans = sorted(self._spans), None
        end = -np.inf
        for start, stop in spans:          # the union of the spans
            self.seconds += max(0.0, stop - max(start, end))
            end = max(end, stop)
