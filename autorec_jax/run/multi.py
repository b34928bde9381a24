"""Several models in one compiled step: K members, vmapped inside the per-device epoch.

Members share every shape and every static choice (N, hidden sizes, batch, optimiser kind,
loss, precision, ...); they may differ in
  traced      optim.lr, optim.weight_decay (through `optax.inject_hyperparams`: they live in
              each member's optimiser state) and model.dropout (`model.DropoutRate`);
  host-side   seed (init, shuffling, dropout keys), the data settings and split seed (each
              member loads its own split; the loaded shapes must agree; not the
              orientation or data.parts), train.epochs, early_stopping, select, retrain,
              eval_every, divergence_factor, cold_start and the checkpoint settings
              (a member is checkpointed once, at its last epoch).
Anything else that differs is refused (`MembersDiffer`, a ConfigError naming the field).

Each member is the same model trained alone with its own config: its own init, its own
shuffle of the rows (the batch order follows its seed, so the index array has a member
axis [K, S, B]), its own dropout keys. The vmap sits inside the per-device function, so
`Parallel.compile` wraps it unchanged under jit, pmap and sharded. Shape legend: K members.

Validation selection is per member: a member that stops early (or reaches its own
train.epochs) is frozen with its best params while the others go on (its slot still
computes, unused, until every member is done).

On a 2-core CPU one model already keeps the cores busy, and XLA:CPU's batched matmuls are
slower than K plain ones, so there K models together are not faster than in turn
(`scripts/benchmark_models.py`); the gain is for accelerators that one small model
leaves mostly idle.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from autorec_jax.run import checkpoint, policies, reporting, run_folder
from autorec_jax.distributed import placement
from autorec_jax.config import Config, flatten, replace, to_dict
from autorec_jax.data import batching
from autorec_jax.errors import ConfigError, TrainingDivergedError, TrainingInterrupted
from autorec_jax.evaluator import EvalData, eval_blocks, summarize
from autorec_jax.run.experiment import _finish, setup
from autorec_jax.model import DropoutRate, create_model, init_params
from autorec_jax.optim import create_optimizer
from autorec_jax.distributed.parallel import Parallel, fetch, is_primary
from autorec_jax.rows import to_device_rows
from autorec_jax.distributed.placement import take_rows
from autorec_jax.train import TrainState, resolve_optimizer, train_epoch

log = logging.getLogger(__name__)
PyTree = Any

TRACED_FIELDS = ("optim.lr", "optim.weight_decay", "model.dropout")
HOST_FIELDS = ("seed", "train.epochs", "train.early_stopping", "train.select",
               "train.retrain", "train.eval_every", "train.divergence_factor",
               "train.cold_start", "train.checkpoint_every", "train.keep_checkpoints",
               "train.allow_cpu")
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
    hyper: Any                     # the traced per-member settings ({"dropout": ...})
    step_rngs: jax.Array           # [K] typed keys
    epoch_nnz: int                 # shares: entry slots of a device's epoch rows
    train_epoch_fn: Callable
    eval_fn: Callable

    @property
    def size(self) -> int:
        return len(self.configs)


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


def setup_many(configs: Sequence[Config], ratings=None, cache_dir=None, *, optimizer=None,
               loss_fn=None, grad_transform=None, entry_fields=None
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
    check_members(configs, optimizer=optimizer)
    experiments = tuple(setup(c, ratings, cache_dir, optimizer=optimizer, loss_fn=loss_fn,
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
        params = init_params(create_model(config.model, num_cols), init_rng)
        states.append((params, member_tx.init(params)))
    model = create_model(configs[0].model, num_cols)
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    state = TrainState(step=jnp.zeros((len(configs),), jnp.int32), apply_fn=model.apply,
                       params=stacked[0], tx=tx, opt_state=stacked[1])
    state = parallel.replicate(state)
    rates = [c.model.dropout for c in configs]
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
    if layout == "replicated":
        train_data = parallel.replicate(pad_stack(
            [to_device_rows(r, fields=f) for r, f in zip(train_rows, fields)]))
        # Every held-out set padded to one length: one compiled evaluation.
        pad_to = max(e.data.heldout_rows[n].nnz for e in experiments for n in heldout_names)
        heldout = {name: parallel.replicate(pad_stack([EvalData(
                       to_device_rows(e.data.train_rows),
                       to_device_rows(e.data.heldout_rows[name], pad_to,
                                      e.data.cold_fields[name]))
                       for e in experiments]))
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
                                 e.data.cold_fields[name])[0]) for e in experiments]))
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
    eval_fn = parallel.compile(
        functools.partial(
            many_evals, apply_fn=model.apply, max_nnz_inputs=in_size,
            max_nnz_targets=target_size,
            clip_range=first.data.facts.rating_range
            if configs[0].train.clip_predictions else None),
        in_axes=(None, data_axis, 0))
    rngs = jax.random.wrap_key_data(jnp.stack([jax.random.key_data(
        jax.random.split(jax.random.key(c.seed), 3)[2]) for c in configs]))
    epoch_nnz = max(batching.max_nnz(e.data.train_lengths,
                                     parallel.rows_per_device(first.batch_size) *
                                     max(longest.steps), 2) for e in experiments)
    multi = MultiExperiment(
        configs=configs, experiments=experiments, parallel=parallel, steps=longest.steps,
        row_width=num_cols, layout=layout, train_data=train_data, heldout=heldout,
        eval_index=eval_index, hyper=parallel.replicate(hyper),
        step_rngs=parallel.replicate(rngs), epoch_nnz=epoch_nnz,
        train_epoch_fn=train_epoch_fn, eval_fn=eval_fn)
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


def evaluate_many(multi: MultiExperiment, params_K: PyTree, names=None
                  ) -> list[dict[str, dict[str, float]]]:
    """Each member's `evaluate` scores ({"test": {"rmse", ...}, ...}) of stacked params."""
    params_K = multi.parallel.replicate(params_K)
    sums = {name: fetch(multi.eval_fn(params_K, data, multi.eval_index))
            for name, data in multi.heldout.items() if names is None or name in names}
    return [{name: summarize({key: values[k] for key, values in block.items()})
             for name, block in sums.items()} for k in range(multi.size)]


def train_many(configs: Sequence[Config], out_dirs: Sequence | None = None, *, ratings=None,
               cache_dir=None, optimizer=None, loss_fn=None, grad_transform=None,
               entry_fields=None, overwrite: bool = False,
               stop_requested: Callable[[], bool] | None = None,
               diverged: str = "raise") -> list:
    """Trains K members in one compiled step per epoch; one `TrainResult` each.

    Member k's result (history, scores, summary, params, selected_params, retrained) is
    that of `train_and_evaluate(configs[k], out_dirs[k], ...)` to float32 round-off (a
    test shows it), except: train_seconds and entries/s are the group's epoch times (the
    members ran together; summary["members"] says how many), the first epoch's time
    includes compilation (summary["compile_seconds"] is None), and the only checkpoint is
    each member's last epoch (a killed group starts over; a finished member's folder
    resumes as a finished single run). `state` holds the config's own optimiser.

    Args:
      configs: the members (`check_members` says which may share a step).
      out_dirs: None, or one run folder (or None) per member: metrics.jsonl/.csv after each
        epoch, model/ and summary.json at the end, retrain/ when retraining.
      ratings, cache_dir, optimizer, loss_fn, grad_transform, entry_fields: as for
        `train_and_evaluate`, shared by every member.
      overwrite: replace previous runs in the folders.
      stop_requested: polled after each epoch; True raises TrainingInterrupted.
      diverged: "raise" (as `train_and_evaluate`) or "return": a diverged member's entry is
        its TrainingDivergedError and the others go on.

    Raises:
      MembersDiffer, ConfigError: members that cannot share a step, a bad folder.
      TrainingDivergedError: a member diverged (diverged="raise").
    """
    if diverged not in ("raise", "return"):
        raise ConfigError(f"diverged must be 'raise' or 'return', got {diverged!r}")
    configs = list(configs)
    out_dirs = [None] * len(configs) if out_dirs is None else list(out_dirs)
    if len(out_dirs) != len(configs):
        raise ConfigError(f"{len(configs)} configs but {len(out_dirs)} out_dirs")
    check_members(configs, optimizer=optimizer)
    run_dirs = [None if d is None or not is_primary() else run_folder.claim(
        d, overwrite=overwrite) for d in out_dirs]
    save_dirs = [r if r is not None or d is None else Path(d).expanduser()
                 for r, d in zip(run_dirs, out_dirs)]
    seams = dict(optimizer=optimizer, loss_fn=loss_fn, grad_transform=grad_transform,
                 entry_fields=entry_fields)
    multi, states = setup_many(configs, ratings, cache_dir, **seams)
    K, exps = multi.size, multi.experiments
    log.info("%d members in one compiled step: %s on %d device(s)", K, multi.parallel.mode,
             multi.parallel.num_devices)
    loops = [{"epoch": 0, "best": None, "bad_epochs": 0, "seconds": 0.0, "entries": 0,
              "first_loss": None} for _ in range(K)]
    for k in range(K):
        if run_dirs[k] is not None:
            _, loops[k] = run_folder.open_run(run_dirs[k], exps[k], member(states, k), None,
                                              loops[k], False)
    shuffles = [np.random.default_rng(e.shuffle_seed) for e in exps]
    carries = [np.zeros(0, np.int32) for _ in range(K)]
    histories: list[list[dict]] = [[] for _ in range(K)]
    best: list = [None] * K
    scores: list[dict] = [{} for _ in range(K)]
    final: list = [None] * K           # a finished member's state
    errors: list = [None] * K
    for epoch in range(1, max(c.train.epochs for c in configs) + 1):
        active = [k for k in range(K) if final[k] is None and errors[k] is None]
        if not active:
            break
        batches = []
        for k, e in enumerate(exps):
            plan, carries[k] = placement.plan_epoch(e.config, e.data, e.batch_size,
                                                    shuffles[k], carries[k], e.shuffle_seed,
                                                    epoch)
            batches.append(plan)
        start = time.perf_counter()
        states, metrics = run_epoch_many(multi, states, np.stack(batches))
        seconds = time.perf_counter() - start
        stops = set()
        for k in active:
            config, loop = configs[k], loops[k]
            metrics_k = {key: value[k] for key, value in metrics.items()}
            entries = int(np.sum(batches[k] >= 0)) * multi.row_width
            loop["seconds"] += seconds
            loop["entries"] += entries
            histories[k].append(reporting.epoch_record(epoch, sum(exps[k].steps[:epoch]),
                                                       metrics_k, seconds, entries))
            try:
                policies.check_loss(metrics_k, epoch, sum(exps[k].steps[:epoch - 1]), loop,
                                    config.train.divergence_factor)
            except TrainingDivergedError as err:
                _diverged(k, err, errors, run_dirs, histories, diverged)
        scoring = [k for k in active if errors[k] is None and (
            epoch % configs[k].train.eval_every == 0 or epoch == configs[k].train.epochs
            or configs[k].selects_on_validation)]
        if scoring:
            start = time.perf_counter()
            every = evaluate_many(multi, states.params,
                                  ("valid",) if all(configs[k].selects_on_validation
                                                    for k in scoring) else None)
            eval_seconds = time.perf_counter() - start
            for k in scoring:
                config, record = configs[k], histories[k][-1]
                # While selecting on validation, the test set is scored once, at the end.
                scores[k] = {n: s for n, s in every[k].items()
                             if n == "valid" or not config.selects_on_validation}
                for name, score in scores[k].items():
                    record.update({f"{name}_rmse": score["rmse"], f"{name}_mae": score["mae"]})
                    if score["cold_count"]:
                        record[f"{name}_cold_rmse"] = score["cold_rmse"]
                record["eval_seconds"] = eval_seconds
                try:
                    policies.check_scores(scores[k], epoch, exps[k].data.facts.rating_range,
                                          config.train.divergence_factor)
                except TrainingDivergedError as err:
                    _diverged(k, err, errors, run_dirs, histories, diverged)
                    continue
                if config.selects_on_validation:
                    best[k], stop = policies.early_stopping_step(
                        loops[k], member(states.params, k), best[k], epoch,
                        scores[k]["valid"]["rmse"], config.train.early_stopping)
                    if stop:
                        stops.add(k)
        for k in active:
            if errors[k] is not None:
                continue
            run_folder.write_history(run_dirs[k], histories[k])
            loops[k].update(epoch=epoch, shuffle_state=shuffles[k].bit_generator.state,
                            carry=carries[k].tolist())
            if k in stops or epoch == configs[k].train.epochs:
                final[k] = single_state(member(states, k), configs[k], optimizer)
                if save_dirs[k] is not None:
                    # The checkpoint a single run would leave: resuming the folder alone
                    # (`train_and_evaluate(resume=True)`) finds the run finished.
                    checkpoint.save(save_dirs[k], epoch,
                                    run_folder.checkpoint_tree(final[k], best[k]), loops[k],
                                    keep=configs[k].train.keep_checkpoints,
                                    best_epoch=loops[k]["best"]["epoch"] if loops[k]["best"]
                                    else None)
                if k in stops:
                    log.info("member %d: early stopping after epoch %d; best epoch %d", k,
                             epoch, loops[k]["best"]["epoch"])
        if stop_requested is not None and stop_requested():
            raise TrainingInterrupted(f"interrupted after epoch {epoch}; members trained "
                                      "together keep no checkpoint: run them again")
    return _finish_members(multi, final, best, loops, histories, scores, errors, run_dirs,
                           save_dirs, out_dirs, ratings=ratings, cache_dir=cache_dir,
                           overwrite=overwrite, stop_requested=stop_requested,
                           diverged=diverged, **seams)


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


def _diverged(k, err, errors, run_dirs, histories, diverged):
    run_folder.write_history(run_dirs[k], histories[k])
    if diverged == "raise":
        raise err
    log.info("member %d: %s", k, err)
    errors[k] = err


def _finish_members(multi, final, best, loops, histories, scores, errors, run_dirs,
                    save_dirs, out_dirs, **kwargs) -> list:
    """Scores every member's chosen params in one evaluation, retrains those that retrain
    (together, `train_many`), and writes each member's model and summary."""
    configs, K = multi.configs, multi.size
    seams = {n: kwargs[n] for n in ("optimizer", "loss_fn", "grad_transform", "entry_fields")}
    ok = [k for k in range(K) if errors[k] is None]
    # A diverged member's slot scores another member's params (and is ignored).
    chosen = [best[k] if best[k] is not None else final[k].params
              for k in (k if errors[k] is None else ok[0] for k in range(K))] if ok else []
    final_scores = evaluate_many(multi, jax.tree.map(
        lambda *xs: jnp.stack(xs), *chosen)) if ok else []
    retrain = [k for k in ok if configs[k].train.retrain]
    retrained = {}
    if retrain:
        log.info("retraining %d member(s) on train + validation", len(retrain))
        again = train_many(
            [replace(configs[k], valid_ratio=0.0, early_stopping=0, select="last",
                     retrain=False, epochs=loops[k]["best"]["epoch"]) for k in retrain],
            [None if out_dirs[k] is None else Path(out_dirs[k]).expanduser() / "retrain"
             for k in retrain], **kwargs)
        retrained = dict(zip(retrain, again))
    results = []
    for k in range(K):
        if errors[k] is not None or isinstance(retrained.get(k), TrainingDivergedError):
            results.append(errors[k] or retrained[k])  # a retrained run that diverged
            continue

        def given(params, names, k=k):
            return {n: s for n, s in final_scores[k].items() if names is None or n in names}
        results.append(_finish(
            run_dirs[k], save_dirs[k], multi.experiments[k], final[k], best[k], loops[k],
            histories[k], scores[k], retrained.get(k), evaluate_fn=given,
            # The group's compilation is in its first epochs' time, not measured apart.
            extra={"members": {"count": K, "index": k, "parallel": multi.parallel.mode},
                   "compile_seconds": None},
            **seams))
    return results
