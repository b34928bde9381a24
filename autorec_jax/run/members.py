"""Members of one compiled step: which models can share it, and setting them up together.

Members share every shape and every static choice; they may differ in the traced fields
(TRACED_FIELDS: they become per-member arrays), the host-side fields (HOST_FIELDS and the
data settings other than STATIC_DATA_FIELDS) and nothing else (`check_members` refuses it
with `MembersDiffer`, naming the field). `group_members` sorts configs into groups that can
share a step. `setup_many` builds the members' data, states and the compiled vmapped epoch
and evaluation; `run_epoch_many` and `evaluate_many` call them. Shape legend: K members.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from autorec_jax.config import Config, flatten, to_dict
from autorec_jax.data import batching
from autorec_jax.distributed.parallel import Parallel, fetch
from autorec_jax.distributed.placement import heldout_ranking, take_rows
from autorec_jax.errors import ConfigError
from autorec_jax.evaluator import EvalData, eval_blocks, rank_blocks, summarize
from autorec_jax import networks
from autorec_jax.model import DropoutRate
from autorec_jax.optim import create_optimizer
from autorec_jax.rows import to_device_rows
from autorec_jax.run.experiment import ranking_options, setup
from autorec_jax.train import TrainState, resolve_optimizer, train_epoch

PyTree = Any

TRACED_FIELDS = ("optim.lr", "optim.weight_decay", "model.dropout")
HOST_FIELDS = ("seed", "train.epochs", "train.early_stopping", "train.select",
               "train.retrain", "train.eval_every", "train.divergence_factor",
               "train.cold_start", "train.checkpoint_every", "train.keep_checkpoints",
               "train.allow_cpu", "train.select_metric")
HOST_PREFIXES = ("data.",)


class MembersDiffer(ConfigError):
    """Members that cannot share one compiled step (a shape or static setting differs)."""


# Data fields that change the shapes (or the layout) whatever the ratings.
STATIC_DATA_FIELDS = ("data.orientation", "data.parts")


def _may_differ(field: str) -> bool:
    return field in TRACED_FIELDS or field in HOST_FIELDS or (
        field.startswith(HOST_PREFIXES) and field not in STATIC_DATA_FIELDS)


def member_key(config: Config) -> str:
    """What members must share: the config without the fields that may differ (JSON)."""
    flat = flatten(to_dict(config))
    return json.dumps({k: v for k, v in sorted(flat.items()) if not _may_differ(k)})


def group_members(configs: Sequence[Config]) -> list[list[int]]:
    """Indices of `configs` grouped by `member_key`, groups in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for index, config in enumerate(configs):
        groups.setdefault(member_key(config), []).append(index)
    return list(groups.values())


def check_members(configs: Sequence[Config], *, optimizer=None) -> None:
    """Refuses members that cannot train in one compiled step.

    Raises:
      MembersDiffer: a field other than the module docstring's differs from member 0's, or
        a traced field that cannot be traced here (the message names it and both values).
      ConfigError: no member, data.parts, or train.model_parallel > 1.
    """
    if not configs:
        raise ConfigError("train_many needs at least one member config")
    first = flatten(to_dict(configs[0]))
    for index, config in enumerate(configs):
        flat = flatten(to_dict(config))
        for field in sorted(first):
            if not _may_differ(field) and flat[field] != first[field]:
                raise MembersDiffer(
                    f"member {index} differs from member 0 in {field} ({flat[field]!r} vs "
                    f"{first[field]!r}): members of one compiled step share every shape and "
                    f"static setting; only {', '.join(TRACED_FIELDS)}, the seed, the data "
                    "settings and loop policies may differ; train them in separate calls")
        if config.data.parts:
            raise ConfigError(f"member {index} trains on data.parts; train_many takes "
                              "members on whole splits")
        if config.optim.optimizer == "lbfgs":
            raise MembersDiffer(f"member {index} uses optim.optimizer lbfgs, whose line "
                                "search does not run vmapped here; train it alone")
        if config.train.model_parallel != 1:
            raise ConfigError("train_many does not shard the model axis: set "
                              "train.model_parallel 1")
        for field in ("lr", "weight_decay"):
            if optimizer is not None and getattr(config.optim, field) != getattr(
                    configs[0].optim, field):
                raise MembersDiffer(
                    f"member {index} differs from member 0 in optim.{field}, but an "
                    "optimizer= seam is given: its hyperparameters are its own; give the "
                    "members one optim.{field}")
    rates = {c.model.dropout for c in configs}
    if len(rates) > 1 and configs[0].model.dropout_rng != "hash":
        raise MembersDiffer("members differ in model.dropout, which is traced only by hash "
                            "dropout: set model.dropout_rng hash (or one rate)")


def pad_stack(trees: Sequence[PyTree]) -> PyTree:
    """Stacks NumPy trees along a new leading axis, zero-padding each leaf's first axis to
    the longest (the CSR entry arrays of members with different numbers of ratings)."""
    def stack(*leaves):
        leaves = [np.asarray(x) for x in leaves]
        if leaves[0].ndim == 0:
            return np.stack(leaves)
        length = max(x.shape[0] for x in leaves)
        return np.stack([np.pad(x, [(0, length - x.shape[0])] + [(0, 0)] * (x.ndim - 1))
                         for x in leaves])
    return jax.tree.map(stack, *trees)


def member(tree: PyTree, k: int) -> PyTree:
    """Member k's slice of a stacked tree (a TrainState keeps its static fields)."""
    return jax.tree.map(lambda x: x[k], tree)


@dataclasses.dataclass(frozen=True)
class MultiExperiment:
    """K members set up for one compiled epoch and one compiled evaluation.

    `experiments[k]` is member k's own `setup` (its data, keys, batch plan, `evaluate`);
    `train_data` / `heldout` stack the members' rows along a leading [K] axis (CSR entry
    arrays padded to one length: entries past indptr[-1] are never read).
    `train_epoch_fn(states, hyper, train_data, index [(D,) K, S, B], rngs [K])` donates the
    states; `eval_fn(params [K, ...], EvalData [K, ...], eval_index)` gives sums [K, blocks].
    """

    configs: tuple
    experiments: tuple
    parallel: Parallel
    steps: list[int]               # steps of each epoch, for the longest member
    row_width: int
    layout: str                    # "replicated" (jit, pmap) or "shares" (sharded)
    train_data: Any                # stacked DeviceRows (replicated layout), else None
    heldout: dict                  # name -> stacked EvalData
    eval_index: Any
    eval_rows: Any                 # the evaluation blocks' global rows (`placement.Placed`)
    hyper: Any                     # the traced per-member settings ({"dropout": ...})
    step_rngs: jax.Array           # [K] typed keys
    epoch_nnz: int                 # shares: entry slots of a device's epoch rows
    train_epoch_fn: Callable
    eval_fn: Callable
    rank_fn: Callable              # `eval_fn` with the ranking metrics' sums, [K] each

    @property
    def size(self) -> int:
        return len(self.configs)


def _optimizer(configs, optimizer):
    """(the shared transformation, member k's optimiser state init)."""
    if optimizer is not None:
        tx = resolve_optimizer(configs[0], optimizer)
        return tx, [tx] * len(configs)
    optim = configs[0].optim
    decays = any(c.optim.weight_decay for c in configs)

    def factory(lr, weight_decay):
        return create_optimizer(optim, lr=lr, weight_decay=weight_decay if decays else None)

    def injected(config):
        return optax.inject_hyperparams(factory)(lr=config.optim.lr,
                                                 weight_decay=config.optim.weight_decay)
    return injected(configs[0]), [injected(c) for c in configs]


def setup_many(configs: Sequence[Config], ratings=None, cache_dir=None, *, model=None,
               optimizer=None, loss_fn=None, grad_transform=None, entry_fields=None
               ) -> tuple[MultiExperiment, TrainState]:
    """Sets up K members for one compiled step; returns (experiment, stacked states).

    Each member's data, init, shuffle seed and step key are exactly its own `setup`'s; the
    states are stacked along a leading [K] axis (one `TrainState` whose leaves are [K, ...],
    whose optimiser state holds each member's lr and weight decay).

    Raises:
      MembersDiffer, ConfigError: see `check_members`; members whose loaded data differ in
        shape (rows, row width, steps per epoch, held-out sets, rating range when clipping).
    """
    configs = tuple(configs)
    for index, config in enumerate(configs):
        if config.train.cold_start == "auto" or config.train.rating_scaling != "none":
            raise ConfigError(f"member {index}: train.cold_start 'auto' and "
                              "train.rating_scaling are not supported by several-model runs; "
                              "train it alone (train_and_evaluate)")
    check_members(configs, optimizer=optimizer)
    experiments = tuple(setup(c, ratings, cache_dir, model=model, optimizer=optimizer,
                              loss_fn=loss_fn,
                              grad_transform=grad_transform, entry_fields=entry_fields)[0]
                        for c in configs)
    first = experiments[0]
    longest = max(experiments, key=lambda e: len(e.steps))
    for index, e in enumerate(experiments):
        facts = {"rows": (e.num_rows, first.num_rows),
                 "row width": (e.row_width, first.row_width),
                 "held-out sets": (sorted(e.placed.heldout), sorted(first.placed.heldout)),
                 "steps per epoch": (e.steps, longest.steps[:len(e.steps)])}
        if configs[0].train.clip_predictions:
            facts["rating range"] = (e.data.facts.rating_range, first.data.facts.rating_range)
        for what, (mine, theirs) in facts.items():
            if mine != theirs:
                raise MembersDiffer(f"member {index}'s data differ from member 0's in {what} "
                                    f"({mine} vs {theirs}); train them in separate calls")
    parallel, num_cols = first.parallel, first.row_width
    tx, member_txs = _optimizer(configs, optimizer)
    states = []
    for config, member_tx in zip(configs, member_txs):
        init_rng = jax.random.split(jax.random.key(config.seed), 3)[0]
        params = networks.init_params(networks.resolve_model(config, num_cols, model),
                                      init_rng, num_cols)
        states.append((params, member_tx.init(params)))
    rates = [c.model.dropout for c in configs]
    model = first.model
    if len(set(rates)) > 1 and "dropout" not in getattr(type(model), "__dataclass_fields__",
                                                        {}):
        raise MembersDiffer(f"members differ in model.dropout but the model "
                            f"{type(model).__name__} has no dropout field to trace")
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    state = TrainState(step=jnp.zeros((len(configs),), jnp.int32), apply_fn=model.apply,
                       params=stacked[0], tx=tx, opt_state=stacked[1])
    state = parallel.replicate(state)
    hyper = {"dropout": None if len(set(rates)) == 1 else pad_stack(
        [DropoutRate.of(r) for r in rates])}
    layout = "shares" if parallel.shares_rows else "replicated"
    train_rows = [e.data.train_rows for e in experiments]
    fields = [e.data.entry_fields for e in experiments]
    heldout_names = sorted(first.placed.heldout)
    # Per evaluation block: the densification bounds of the compiled evaluation.
    block_rows = first.placed.eval_index.shape[-1]
    in_size = max(batching.max_nnz(e.data.train_lengths, block_rows) for e in experiments)
    target_size = max(batching.max_nnz(e.data.heldout_lengths[name], block_rows)
                      for e in experiments for name in heldout_names)
    eval_index = first.placed.eval_index
    # Each member's held-out sets with their orders (`placement.heldout_ranking`), all of
    # `pad_to` places: one compiled evaluation.
    pad_to = max(e.data.heldout_rows[n].nnz for e in experiments for n in heldout_names)
    prepared = [{name: heldout_ranking(e.data.heldout_rows[name], e.data.cold_fields[name],
                                       e.config.data.orientation, e.data.facts.num_users,
                                       e.config.train.ranking_k, pad_to)
                 for name in heldout_names} for e in experiments]
    if layout == "replicated":
        train_data = parallel.replicate(pad_stack(
            [to_device_rows(r, fields=f) for r, f in zip(train_rows, fields)]))
        # Every held-out set padded to one length: one compiled evaluation.
        heldout = {name: parallel.replicate(pad_stack([EvalData(
                       to_device_rows(e.data.train_rows),
                       to_device_rows(e.data.heldout_rows[name], pad_to, member[name][0]),
                       member[name][1])
                       for e, member in zip(experiments, prepared)]))
                   for name in heldout_names}
    else:
        # Each device holds its blocks' rows of every member; the blocks' local indices
        # (`take_rows`) depend on the blocks only, so member 0's serve all.
        blocks = parallel.shard(batching.blocks(first.num_rows,
                                                configs[0].train.eval_batch_size))
        share_in = max(batching.max_nnz(e.data.train_lengths, blocks[0].size)
                       for e in experiments)
        share_target = max(batching.max_nnz(e.data.heldout_lengths[name], blocks[0].size)
                           for e in experiments for name in heldout_names)
        train_data = None
        heldout = {name: parallel.put_shares(lambda d, name=name: pad_stack([EvalData(
                       take_rows(e.data.train_rows, blocks[d], share_in)[0],
                       take_rows(e.data.heldout_rows[name], blocks[d], share_target,
                                 member[name][0])[0], member[name][1])
                       for e, member in zip(experiments, prepared)]))
                   for name in heldout_names}
    data_axis = None if layout == "replicated" else 0
    repeats = 2 if configs[0].train.last_batch == "rollover" else 1
    max_nnz = max(batching.max_nnz(e.data.train_lengths,
                                   parallel.rows_per_device(first.batch_size), repeats)
                  for e in experiments)
    train_epoch_fn = parallel.compile(
        functools.partial(many_epochs, model=model, config=configs[0], max_nnz=max_nnz,
                          loss_fn=loss_fn, grad_transform=grad_transform),
        in_axes=(None, None, data_axis, 0, None), donate_argnums=(0,))
    eval_kwargs = dict(apply_fn=model.apply, max_nnz_inputs=in_size,
                       max_nnz_targets=target_size,
                       clip_range=first.data.facts.rating_range
                       if configs[0].train.clip_predictions else None)
    eval_fn = parallel.compile(functools.partial(many_evals, **eval_kwargs),
                               in_axes=(None, data_axis, 0))
    rank_fn = parallel.compile(functools.partial(
        many_ranks, **eval_kwargs, **ranking_options(configs[0], first.data.facts)),
        in_axes=(None, data_axis, 0, 0))
    rngs = jax.random.wrap_key_data(jnp.stack([jax.random.key_data(
        jax.random.split(jax.random.key(c.seed), 3)[2]) for c in configs]))
    epoch_nnz = max(batching.max_nnz(e.data.train_lengths,
                                     parallel.rows_per_device(first.batch_size) *
                                     max(longest.steps), 2) for e in experiments)
    multi = MultiExperiment(
        configs=configs, experiments=experiments, parallel=parallel, steps=longest.steps,
        row_width=num_cols, layout=layout, train_data=train_data, heldout=heldout,
        eval_index=eval_index, eval_rows=first.placed.eval_rows, hyper=parallel.replicate(hyper),
        step_rngs=parallel.replicate(rngs), epoch_nnz=epoch_nnz,
        train_epoch_fn=train_epoch_fn, eval_fn=eval_fn, rank_fn=rank_fn)
    return multi, state


def many_epochs(states: TrainState, hyper: dict, rows, index_KxSxB: jax.Array,
                rngs_K: jax.Array, *, model, config: Config, max_nnz: int,
                axis_name: str | None = None, loss_fn=None, grad_transform=None
                ) -> tuple[TrainState, dict]:
    """`train.train_epoch` of each member, vmapped over the leading [K] axis of the states,
    the traced settings, the rows, the index and the step keys (metrics come back [K, S])."""
    def one(state, hyper_k, rows_k, index_SxB, rng):
        if hyper_k["dropout"] is not None:
            # This member's rate, traced: the module is rebuilt inside the trace.
            state = state.replace(apply_fn=model.clone(dropout=hyper_k["dropout"]).apply)
        new_state, metrics = train_epoch(state, rows_k, index_SxB, rng, config=config,
                                         max_nnz=max_nnz, axis_name=axis_name,
                                         loss_fn=loss_fn, grad_transform=grad_transform)
        return new_state.replace(apply_fn=model.apply), metrics

    return jax.vmap(one)(states.replace(apply_fn=model.apply), hyper, rows, index_KxSxB,
                         rngs_K)


def many_evals(params_K: PyTree, data_K: EvalData, index: jax.Array, *,
               axis_name: str | None = None, **block_kwargs) -> dict[str, jax.Array]:
    """`evaluator.eval_blocks` of each member (vmapped): per-member block sums [K, blocks]."""
    return jax.vmap(lambda params, data: eval_blocks(params, data, index, axis_name=axis_name,
                                                     **block_kwargs))(params_K, data_K)


def many_ranks(params_K: PyTree, data_K: EvalData, index: jax.Array, rows: jax.Array, *,
               axis_name: str | None = None, **block_kwargs) -> dict[str, jax.Array]:
    """`evaluator.rank_blocks` of each member (vmapped)."""
    return jax.vmap(lambda params, data: rank_blocks(params, data, index, rows,
                                                     axis_name=axis_name, **block_kwargs)
                    )(params_K, data_K)


def run_epoch_many(multi: MultiExperiment, states: TrainState, batches_KxSxB: np.ndarray
                   ) -> tuple[TrainState, dict]:
    """One compiled epoch of every member over its own planned batches (int32 [K, S, B]);
    returns the states and the metrics on the host, [K, S]."""
    parallel = multi.parallel
    index = parallel.shard(np.asarray(batches_KxSxB, np.int32))
    if multi.layout == "shares":
        def build(d):
            taken = [take_rows(e.data.train_rows, index[d][k], multi.epoch_nnz,
                               e.data.entry_fields) for k, e in enumerate(multi.experiments)]
            return pad_stack([rows for rows, _ in taken]), np.stack([i for _, i in taken])
        data, index = parallel.put_shares(build)
    else:
        data = multi.train_data
    states, metrics = multi.train_epoch_fn(states, multi.hyper, data, index, multi.step_rngs)
    return states, fetch(metrics)


def evaluate_many(multi: MultiExperiment, params_K: PyTree, names=None, *,
                  ranking: bool = False) -> list[dict[str, dict[str, float]]]:
    """Each member's `evaluate` scores ({"test": {"rmse", ...}, ...}) of stacked params;
    `ranking` adds the ranking metrics."""
    params_K = multi.parallel.replicate(params_K)
    sums = {name: fetch(multi.rank_fn(params_K, data, multi.eval_index, multi.eval_rows)
                        if ranking else multi.eval_fn(params_K, data, multi.eval_index))
            for name, data in multi.heldout.items() if names is None or name in names}
    return [{name: summarize({key: values[k] for key, values in block.items()})
             for name, block in sums.items()} for k in range(multi.size)]


def single_state(state: TrainState, config: Config, optimizer=None) -> TrainState:
    """A member's state as its run alone holds it: the config's optimiser (`tx`) and its
    state, read from the injected one (the same leaves in the same order)."""
    tx = resolve_optimizer(config, optimizer)
    if optimizer is not None:
        return state.replace(tx=tx)
    structure = jax.tree.structure(jax.eval_shape(tx.init, state.params))
    leaves = jax.tree.leaves(state.opt_state.inner_state)
    if structure.num_leaves != len(leaves):
        raise AssertionError("the injected optimiser state does not match the config's")
    return state.replace(tx=tx, opt_state=jax.tree.unflatten(structure, leaves))
