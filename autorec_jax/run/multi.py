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

import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from autorec_jax.config import Config, replace
from autorec_jax.distributed import placement
from autorec_jax.distributed.parallel import is_primary
from autorec_jax.errors import ConfigError, TrainingDivergedError, TrainingInterrupted
from autorec_jax.run import checkpoint, policies, reporting, run_folder
from autorec_jax.run.experiment import _finish, ranks_while_training
# The members' checks and their setup (re-exported: `multi.group_members`, ...).
from autorec_jax.run.members import (MembersDiffer, MultiExperiment, check_members,  # noqa: F401
                                     evaluate_many, group_members, member, run_epoch_many,
                                     setup_many, single_state)

log = logging.getLogger(__name__)
PyTree = Any


def train_many(configs: Sequence[Config], out_dirs: Sequence | None = None, *, ratings=None,
               cache_dir=None, model=None, optimizer=None, loss_fn=None,
               grad_transform=None, entry_fields=None, overwrite: bool = False,
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
      ratings, cache_dir, model, optimizer, loss_fn, grad_transform, entry_fields: as for
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
    seams = dict(model=model, optimizer=optimizer, loss_fn=loss_fn,
                 grad_transform=grad_transform, entry_fields=entry_fields)
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
                                                    for k in scoring) else None,
                                  ranking=any(ranks_while_training(configs[k])
                                              for k in scoring))
            eval_seconds = time.perf_counter() - start
            for k in scoring:
                config, record = configs[k], histories[k][-1]
                # While selecting on validation, the test set is scored once, at the end.
                scores[k] = {n: s for n, s in every[k].items()
                             if n == "valid" or not config.selects_on_validation}
                for name, score in scores[k].items():
                    record.update(reporting.score_fields(name, score))
                record["eval_seconds"] = eval_seconds
                try:
                    policies.check_scores(scores[k], epoch, exps[k].data.facts.rating_range,
                                          config.train.divergence_factor)
                except TrainingDivergedError as err:
                    _diverged(k, err, errors, run_dirs, histories, diverged)
                    continue
                if config.selects_on_validation:
                    metric = config.train.select_metric
                    best[k], stop = policies.early_stopping_step(
                        loops[k], member(states.params, k), best[k], epoch,
                        policies.selection_value(scores[k], metric),
                        config.train.early_stopping, metric)
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
    seams = {n: kwargs[n] for n in ("model", "optimizer", "loss_fn", "grad_transform",
                                    "entry_fields")}
    ok = [k for k in range(K) if errors[k] is None]
    # A diverged member's slot scores another member's params (and is ignored).
    chosen = [best[k] if best[k] is not None else final[k].params
              for k in (k if errors[k] is None else ok[0] for k in range(K))] if ok else []
    final_scores = evaluate_many(multi, jax.tree.map(
        lambda *xs: jnp.stack(xs), *chosen), ranking=configs[0].train.ranking != "off"
    ) if ok else []
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
