"""Setting up a run (data on the device, lazily compiled calls) and the loop: the one place
with I/O. The research seams (`optimizer=`, `loss_fn=`, `grad_transform=`, `entry_fields=`)
enter here and pass unchanged to the pure pieces in `train.py`, under jit and pmap alike.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from autorec_jax import networks
from autorec_jax.run import (checkpoint, policies, preflight, reporting, run_folder, runtime,
                             stages)
from autorec_jax.data import coldstart
from autorec_jax.distributed import placement
from autorec_jax.config import Config, replace, to_dict
from autorec_jax.data import batching, loading
from autorec_jax.data.ratings import Ratings
from autorec_jax.errors import ConfigError, TrainingDivergedError, TrainingInterrupted
from autorec_jax.evaluator import eval_blocks, rank_blocks, summarize
from autorec_jax.losses import LossFn
from autorec_jax.distributed.parallel import (CompileClock, Parallel, fetch, from_primary,
                                              is_primary)
from autorec_jax.train import GradTransform, TrainState, create_train_state, train_epoch

log = logging.getLogger(__name__)
PyTree = Any
EntryFields = dict[str, Callable[[Ratings], np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Experiment:
    """Everything a run sets up before its first epoch: data on the device, compiled calls.

    `train_epoch_fn(state, train_data, sharded index [S, B], step_rng)` runs an epoch of any
    S steps (jit compiles on first use of each S) and donates the state. `eval_fn(params,
    EvalData, eval_index)` gives per-block sums for each held-out set in `placed.heldout`
    ("test", and "valid" when the split carves one out); `rank_fn(params, EvalData,
    eval_index, eval_rows)` adds the ranking metrics' sums. All are plain `jax.jit` (or
    `jax.pmap`) functions: they compose with vmap, scan and jit. `compile_clock` adds up
    the compile time of the calls `run_epoch` and `evaluate` make.
    """

    config: Config
    parallel: Parallel
    steps: list[int]               # steps of each epoch, in order
    batch_size: int                # rows per step (the config's, or all rows: full batch)
    row_width: int                 # N
    num_rows: int                  # rows of the training matrix
    data: placement.HostData       # the rows on this host, and the split's facts
    placed: placement.Placed       # the rows on the devices, evaluation blocks
    step_rng: jax.Array
    shuffle_seed: np.ndarray
    train_epoch_fn: Callable
    eval_fn: Callable
    rank_fn: Callable              # `eval_fn` with the ranking metrics, from the same pass
    model: Any = None              # the Flax module trained (`networks.resolve_model`)
    compile_clock: CompileClock = dataclasses.field(default_factory=CompileClock)

    @property
    def train(self) -> Ratings | None:
        """The split's training Ratings (None with data.parts: see `data.facts`)."""
        return self.data.splits[0] if self.data.splits else None

    @property
    def valid(self) -> Ratings | None:
        return self.data.splits[1] if self.data.splits else None

    @property
    def test(self) -> Ratings | None:
        return self.data.splits[2] if self.data.splits else None

    @property
    def compile_seconds(self) -> float:
        """Seconds spent tracing, lowering and compiling in `run_epoch` and `evaluate`."""
        return self.compile_clock.seconds


def setup(config: Config, ratings: Ratings | None = None, cache_dir=None, *,
          model=None, optimizer=None, loss_fn: LossFn | None = None,
          grad_transform: GradTransform | None = None,
          entry_fields: EntryFields | None = None,
          initial_params: PyTree | None = None) -> tuple[Experiment, TrainState]:
    """Loads and splits the data, places it on the device(s), builds the compiled calls.

    Nothing is compiled here: each call compiles on its first use of a shape, so injecting
    an optimiser costs no throwaway compile. `config.seed` gives one root key, split into
    init, shuffle and step keys. A TPU or GPU that the system shows but JAX did not start
    stops the run here (`runtime.check_accelerator`) unless `config.train.allow_cpu`.

    Args:
      model: replaces the config's network: a Flax module or a function (config.model, N)
        -> module (the contract: `autorec_jax.networks`).
      optimizer: replaces the config's optimiser (see `train.create_train_state`).
      loss_fn: replaces the masked reconstruction loss (contract: `autorec_jax.losses`).
      grad_transform: `(grads, *, params, rng) -> grads` before the optimiser.
      entry_fields: name -> function of the training `Ratings` returning one float per
        rating (in that Ratings' order); each becomes a [B, N] batch field. "weights" is
        read by the default loss as per-entry weights.
      initial_params: start from these params instead of a fresh init (a warm start; the
        model's tree and shapes). With `model.network` "glocal", `model.glocal_rows` 0 is
        set to the data's rows here, and `train.parallel` "auto" means "jit".

    Raises:
      ConfigError: an idle accelerator (the message names the install that fixes it);
        GLocal-K on several devices.
    """
    runtime.check_accelerator(config.train.allow_cpu)
    mode = config.train.parallel
    if config.model.network == "glocal" and mode == "auto":   # one device (see below)
        mode = "jit"
    parallel = Parallel.create(mode, config.train.model_parallel)
    data = placement.load(config, parallel, ratings, cache_dir, entry_fields)
    if config.model.network == "glocal":
        if parallel.num_devices > 1:
            raise ConfigError(
                f"GLocal-K runs on one device ({parallel.num_devices} here): its convolution "
                "couples neighbouring rows of the whole matrix; use --parallel jit")
        if config.model.glocal_rows == 0:
            config = replace(config, glocal_rows=data.num_rows)
    if model is None and config.model.network == "autorec":  # the estimate knows AutoRec
        preflight.check_memory(config, data.num_rows, data.num_cols,
                               available_bytes=_device_memory(),
                               num_ratings=data.local_ratings)
    batch_size = placement.rows_per_step(config, data)
    steps = placement.steps_per_epoch(config, data, batch_size)
    init_rng, shuffle_rng, step_rng = jax.random.split(jax.random.key(config.seed), 3)
    # Built under jit straight into its layout: each device holds only its shard.
    module = networks.resolve_model(config, data.num_cols, model)
    state = parallel.build(lambda rng: create_train_state(
        config, data.num_cols, rng, optimizer=optimizer, model=module,
        initial_params=initial_params), init_rng, row_width=data.num_cols)
    placed = placement.place(data, parallel, config.train.eval_batch_size,
                             orientation=config.data.orientation,
                             ranking_k=config.train.ranking_k)
    data_axis = None if placed.layout == "replicated" else 0
    repeats = 2 if config.train.last_batch == "rollover" else 1
    train_epoch_fn = parallel.compile(
        functools.partial(train_epoch, config=config, loss_fn=loss_fn,
                          grad_transform=grad_transform, max_nnz=batching.max_nnz(
                              data.train_lengths, parallel.rows_per_device(batch_size),
                              repeats)),
        in_axes=(None, data_axis, 0, None), donate_argnums=(0,))
    eval_rows = placed.eval_index.shape[-1]
    eval_kwargs = dict(
        apply_fn=state.apply_fn,
        max_nnz_inputs=batching.max_nnz(data.train_lengths, eval_rows),
        max_nnz_targets=max(batching.max_nnz(lengths, eval_rows)
                            for lengths in data.heldout_lengths.values()),
        clip_range=data.facts.rating_range if config.train.clip_predictions else None)
    eval_fn = parallel.compile(functools.partial(eval_blocks, **eval_kwargs),
                               in_axes=(None, data_axis, 0))
    rank_fn = parallel.compile(functools.partial(
        rank_blocks, **eval_kwargs, **ranking_options(config, data.facts)),
        in_axes=(None, data_axis, 0, 0))
    experiment = Experiment(
        config=config, parallel=parallel, steps=steps,
        batch_size=batch_size, row_width=data.num_cols, num_rows=data.num_rows,
        data=data, placed=placed, step_rng=parallel.replicate(step_rng),
        shuffle_seed=np.asarray(jax.random.key_data(shuffle_rng)),
        train_epoch_fn=train_epoch_fn, eval_fn=eval_fn, rank_fn=rank_fn, model=module)
    return experiment, state


def ranks_while_training(config: Config) -> bool:
    """Whether the evaluations during training compute the ranking metrics too."""
    return config.train.ranking == "every" or config.train.select_metric != "valid_rmse"


def ranking_options(config: Config, facts) -> dict:
    """`evaluator.rank_blocks`' static options for this config and split (`facts`:
    `placement.SplitFacts`): who the users are, the cut-offs, the relevance threshold."""
    low, high = facts.rating_range
    threshold = config.train.relevance_threshold
    return dict(users_are_rows=config.data.orientation == "user", num_users=facts.num_users,
                num_items=facts.num_items,
                ks=tuple(config.train.ranking_k),
                threshold=float(low + 0.75 * (high - low) if threshold is None
                                else threshold / facts.rating_unit))  # device units


def run_epoch(experiment: Experiment, state: TrainState, batches_SxB: np.ndarray
              ) -> tuple[TrainState, dict]:
    """One compiled epoch over host-planned batches; returns metrics on the host."""
    parallel = experiment.parallel
    data, index = placement.epoch_data(experiment.placed, experiment.data, parallel,
                                       parallel.shard(batches_SxB))
    with experiment.compile_clock:
        state, metrics = experiment.train_epoch_fn(state, data, index, experiment.step_rng)
        return state, fetch(metrics)


def evaluate(experiment: Experiment, params: PyTree, names=None, *, ranking: bool = False
             ) -> dict[str, dict[str, float]]:
    """RMSE, MAE and count of any `params` on held-out sets: {"test": {...}, ...}.

    `names` picks the sets ("valid", "test"); None: every set the split has. `ranking`
    adds the ranking metrics ("ndcg@10", ..., see `autorec_jax.ranking`). `params` may
    sit anywhere (`load_run` gives them on one device): params in the train state's layout
    (replicated, or split over the model axis) go straight in, others are placed in it,
    device to device.
    """
    params = experiment.parallel.replicate(params, row_width=experiment.row_width)
    placed = experiment.placed
    with experiment.compile_clock:
        scores = {name: summarize(fetch(
                      experiment.rank_fn(params, data, placed.eval_index, placed.eval_rows)
                      if ranking else experiment.eval_fn(params, data, placed.eval_index)))
                  for name, data in placed.heldout.items() if names is None or name in names}
    return {name: _in_rating_units(score, experiment.data.facts.rating_unit)
            for name, score in scores.items()}


RATING_UNIT_SCORES = ("rmse", "mae", "cold_rmse", "warm_rmse")  # errors, in rating units


def _in_rating_units(score: dict, unit: float) -> dict:
    """`summarize`'s scores of device-unit ratings (`train.rating_scaling`) in rating units:
    the errors times `unit`; counts and ranking metrics unchanged."""
    if unit == 1.0:
        return score
    return {k: v * unit if k in RATING_UNIT_SCORES else v for k, v in score.items()}


@dataclasses.dataclass
class TrainResult:
    state: TrainState
    history: list[dict]
    summary: dict
    experiment: Experiment         # the run's data and compiled calls (`evaluate`, ...)
    scores: dict = dataclasses.field(default_factory=dict)  # the final scores: set name ->
                                   # `evaluate`'s {"rmse", "mae", "count", "cold_rmse", ...}
    params: PyTree = None          # the model the run chose and saved (retrained, if so)
    selected_params: PyTree = None  # the params picked on validation (= params unless
                                   # retrained; then they were trained without validation)
    retrained: "TrainResult | None" = None  # the run on train + validation (`train.retrain`)


def train_and_evaluate(config: Config, out_dir: str | Path | None = None, *,
                       ratings: Ratings | None = None, cache_dir=None, model=None,
                       optimizer=None, loss_fn: LossFn | None = None,
                       grad_transform: GradTransform | None = None,
                       entry_fields: EntryFields | None = None, resume: bool = False,
                       overwrite: bool = False, progress: bool = False,
                       stop_requested: Callable[[], bool] | None = None,
                       initial_params: PyTree | None = None) -> TrainResult:
    """Trains AutoRec as configured, evaluating test RMSE/MAE; the one function with I/O.

    Args:
      config: the whole configuration.
      out_dir: the run's folder (see `run_folder`): metrics.jsonl and metrics.csv (rewritten
        atomically after each epoch), checkpoints every `train.checkpoint_every` epochs and
        at the last, model/ (the params the run chose) and summary.json at the end.
      ratings: use these ratings instead of loading `config.data.dataset`.
      cache_dir: dataset cache folder (default: $AUTOREC_JAX_DATA or ~/.cache/autorec_jax).
      model, optimizer, loss_fn, grad_transform, entry_fields: the research seams (see
        `setup`); a resumed run must be given the same ones (a run folder records the
        model's identity and refuses another).
      resume: continue the run in `out_dir` from its latest checkpoint (from scratch when it
        has none); the result equals an uninterrupted run's.
      overwrite: replace a previous run in `out_dir` instead of refusing it.
      progress: show a tqdm bar instead of one log line per epoch.
      stop_requested: polled after each epoch; when it returns True the epoch is saved and
        `TrainingInterrupted` is raised.
      initial_params: start from these params (see `setup`); not recorded in the folder:
        pass them again on `resume` (a checkpoint, when there is one, replaces them).

    With `model.network` "glocal" and neither `model` nor `initial_params`, the run is
    GLocal-K's two stages (`run.stages`): pre-training, then fine-tuning, in sub-folders.

    Raises:
      TrainingDivergedError: a non-finite loss, or a finite blow-up (`train.
        divergence_factor`); the message names the epoch.
      TrainingInterrupted: `stop_requested()` said so.
      CheckpointError: `resume` with another config, other data or a damaged checkpoint.
    """
    if config.model.network == "glocal" and model is None and initial_params is None:
        return stages.train_glocal(
            config, out_dir, train_stage=train_and_evaluate, ratings=ratings,
            cache_dir=cache_dir, optimizer=optimizer, loss_fn=loss_fn,
            grad_transform=grad_transform, entry_fields=entry_fields, resume=resume,
            overwrite=overwrite, progress=progress, stop_requested=stop_requested)
    # Only process 0 writes files (metrics, the summary); every process joins the
    # collective saves of checkpoints and the model into `save_dir`, which process 0 writes.
    run_dir = None if out_dir is None or not is_primary() else run_folder.claim(
        out_dir, resume=resume, overwrite=overwrite)
    save_dir = run_dir if run_dir is not None or out_dir is None else Path(
        out_dir).expanduser()
    log.debug("config: %s", to_dict(config))
    experiment, state = setup(config, ratings, cache_dir, model=model, optimizer=optimizer,
                              loss_fn=loss_fn, grad_transform=grad_transform,
                              entry_fields=entry_fields, initial_params=initial_params)
    log.info("%s, %s split (seed %d): %d train / %d valid / %d test ratings; %d rows x %d; "
             "%s on %d %s device(s)", loading.dataset_label(
                 config.data, experiment.data.facts.split_files),
             "fixed-files" if experiment.data.facts.split_files else config.data.split,
             config.split_seed, *experiment.data.facts.counts.values(),
             experiment.num_rows,
             experiment.row_width, experiment.parallel.mode, experiment.parallel.num_devices,
             jax.local_devices()[0].platform)
    selecting = config.selects_on_validation
    loop = {"epoch": 0, "shuffle_state": np.random.default_rng(
                experiment.shuffle_seed).bit_generator.state,
            "carry": [], "best": None, "bad_epochs": 0, "seconds": 0.0, "entries": 0,
            "first_loss": None}
    history: list[dict] = []
    # A copy, never the state's own buffers: the next epoch donates (deletes) those.
    best_params = jax.tree.map(jnp.copy, state.params) if selecting else None
    if save_dir is not None:
        state, best_params, loop, history = run_folder.open_and_restore(
            run_dir, save_dir, experiment, state, best_params, loop, resume)
    shuffle = np.random.default_rng()
    shuffle.bit_generator.state = loop["shuffle_state"]
    carry = np.asarray(loop["carry"], np.int32)
    scale = tuple(v * experiment.data.facts.rating_unit
                  for v in experiment.data.facts.rating_range)  # the scores' units
    # A resumed run that had stopped early is finished: it trains no further epoch.
    last = loop["epoch"] if _stopped_early(loop, config) else config.train.epochs
    epochs = range(loop["epoch"] + 1, last + 1)
    bar = tqdm.tqdm(epochs, unit="epoch", delay=2.0, leave=False) if progress else None
    scores, cadence = {}, policies.CheckpointCadence()
    for epoch in bar if bar is not None else epochs:
        batches, carry = placement.plan_epoch(config, experiment.data, experiment.batch_size,
                                              shuffle, carry, experiment.shuffle_seed, epoch)
        compile_before = experiment.compile_seconds
        start = time.perf_counter()
        state, metrics = run_epoch(experiment, state, batches)
        # Compilation on first use of an epoch length is not training time.
        seconds = time.perf_counter() - start - (experiment.compile_seconds - compile_before)
        entries = int(np.sum(batches >= 0)) * experiment.row_width
        loop["seconds"] += seconds
        loop["entries"] += entries
        record = reporting.epoch_record(epoch, sum(experiment.steps[:epoch]), metrics,
                                        seconds, entries)
        history.append(record)
        try:
            policies.check_loss(metrics, epoch, sum(experiment.steps[:epoch - 1]), loop,
                                config.train.divergence_factor)
        except TrainingDivergedError:
            run_folder.write_history(run_dir, history)
            raise
        stop = False
        if epoch % config.train.eval_every == 0 or epoch == config.train.epochs or selecting:
            start = time.perf_counter()
            # While selecting on validation, the test set is scored once, at the end.
            # The last epoch's scores are the final ones of a run that does not select.
            final = not selecting and epoch == config.train.epochs
            scores = evaluate(experiment, state.params, ("valid",) if selecting else None,
                              ranking=ranks_while_training(config) or (
                                  final and config.train.ranking != "off"))
            for name, score in scores.items():
                record.update(reporting.score_fields(name, score))
            record["eval_seconds"] = time.perf_counter() - start
            try:
                policies.check_scores(scores, epoch, scale, config.train.divergence_factor)
            except TrainingDivergedError:
                run_folder.write_history(run_dir, history)
                raise
        if selecting:
            metric = config.train.select_metric
            best_params, stop = policies.early_stopping_step(
                loop, state.params, best_params, epoch,
                policies.selection_value(scores, metric), config.train.early_stopping, metric)
        run_folder.write_history(run_dir, history)
        loop.update(epoch=epoch, shuffle_state=shuffle.bit_generator.state,
                    carry=carry.tolist())
        interrupted = stop_requested is not None and stop_requested()
        if save_dir is not None and _agreed(
                stop or interrupted or epoch == config.train.epochs
                or cadence.due(epoch, config.train.checkpoint_every)):
            start = time.perf_counter()
            checkpoint.save(save_dir, epoch, run_folder.checkpoint_tree(state, best_params), loop,
                            keep=config.train.keep_checkpoints,
                            best_epoch=loop["best"]["epoch"] if loop["best"] else None)
            cadence.record(start, time.perf_counter())
        _report(bar, record)
        if interrupted:
            raise TrainingInterrupted(
                f"interrupted after epoch {epoch}" + (
                    f"; continue with --resume --out {run_dir}" if run_dir else ""))
        if stop:
            log.info("early stopping after epoch %d: no better %s for %d epochs; best "
                     "epoch %d", epoch, config.train.select_metric, loop["bad_epochs"],
                     loop["best"]["epoch"])
            break
    if bar is not None:
        bar.close()
    loop["checkpoint_seconds"] = loop.get("checkpoint_seconds", 0.0) + cadence.total_seconds
    seams = dict(model=model, optimizer=optimizer, loss_fn=loss_fn,
                 grad_transform=grad_transform, entry_fields=entry_fields)
    # train.cold_start "auto": the rule is chosen now, on validation, for the chosen params.
    choice, evaluate_fn, rule = None, None, config.train.cold_start
    if rule == coldstart.AUTO:
        # Selected under "global-mean" (`coldstart.loaded_rule`); the network's own cold
        # predictions are scored on a second setup, and the chosen rule's, if another.
        params = state.params if best_params is None else best_params
        scoring = setup(replace(config, cold_start="network"), ratings, cache_dir, **seams)[0]
        choice = _choose_cold_start(scoring, params)
        rule = choice["rule"]
        if rule not in ("network", coldstart.loaded_rule(coldstart.AUTO)):
            scoring = setup(replace(config, cold_start=rule), ratings, cache_dir, **seams)[0]
        if rule != coldstart.loaded_rule(coldstart.AUTO):
            evaluate_fn = functools.partial(evaluate, scoring,
                                            ranking=config.train.ranking != "off")
    retrained = None
    if config.train.retrain:
        retrained = _retrain(config, loop["best"]["epoch"], out_dir, ratings=ratings,
                             cache_dir=cache_dir, resume=resume, progress=progress,
                             stop_requested=stop_requested, cold_start=rule, **seams)
    return _finish(run_dir, save_dir, experiment, state, best_params, loop, history, scores,
                   retrained, evaluate_fn=evaluate_fn, cold_choice=choice, **seams)


def _choose_cold_start(experiment: Experiment, params) -> dict:
    """`coldstart.choose_rule` for the params the run selected (`train.cold_start` auto);
    `experiment` scores cold entries by the network (rule "network")."""
    valid = evaluate(experiment, params, ("valid",))["valid"]
    choice = coldstart.choose_rule(valid["cold_rmse"], experiment.train, experiment.valid,
                                   experiment.config.data.orientation)
    log.info("cold-start rule chosen on validation (%d cold entries): %s",
             choice["valid_cold_count"], choice["rule"])
    return choice


def _retrain(config: Config, epochs: int, out_dir, *, resume: bool, cold_start: str | None = None,
             **kwargs) -> TrainResult:
    """The selected number of epochs, from scratch (same seeds) on train + validation, with
    `cold_start` (the rule chosen for "auto") when given.

    With `data.valid_ratio` 0 the same split's training part is train + validation and its
    test part is unchanged. The run lives in `<out>/retrain` (resumable like any run).
    """
    retrain_config = replace(config, valid_ratio=0.0, early_stopping=0, select="last",
                             retrain=False, epochs=epochs,
                             cold_start=cold_start or config.train.cold_start)
    log.info("retraining on train + validation for the selected %d epoch(s)", epochs)
    folder = None if out_dir is None else Path(out_dir).expanduser() / "retrain"
    try:
        return train_and_evaluate(retrain_config, folder, resume=resume, **kwargs)
    except TrainingInterrupted as interrupted:
        raise TrainingInterrupted(
            f"interrupted while retraining ({interrupted}); continue with --resume --out "
            f"{out_dir}" if out_dir is not None else str(interrupted)) from None


def _stopped_early(loop: dict, config: Config) -> bool:
    """Whether the (restored) loop had run out of early-stopping patience."""
    patience = config.train.early_stopping
    return bool(patience) and loop["best"] is not None and loop["bad_epochs"] >= patience


def _report(bar, record) -> None:
    held = "".join(f"  {name} RMSE {record[f'{name}_rmse']:.4f}" for name in ("valid", "test")
                   if f"{name}_rmse" in record)
    rate = record["entries_per_sec"] / 1e6
    if bar is not None:
        bar.set_postfix_str(f"loss {record['train_loss']:.4f}{held}  {rate:.1f}M entries/s")
        return
    log.info("epoch %3d  train loss %.4f%s  %.3f s  %.1fM entries/s", record["epoch"],
             record["train_loss"], held, record["train_seconds"], rate)


def _finish(run_dir, save_dir, experiment, state, best_params, loop, history, scores,
            retrained=None, *, evaluate_fn=None, extra=None, cold_choice=None, **seams):
    """Scores the chosen params on every held-out set, saves the model and the summary.

    With `retrained` (a `TrainResult` on train + validation), the test scores and the saved
    model are the retrained run's; validation scores stay the selected params'.
    `evaluate_fn(params, names)` replaces `evaluate(experiment, ...)` (`multi` passes the
    scores it computed for all members at once); `extra` is added to the summary;
    `cold_choice` is `coldstart.choose_rule`'s record under `train.cold_start` "auto"
    (`evaluate_fn` then scores with the chosen rule).
    """
    config = experiment.config
    evaluate_fn = evaluate_fn or functools.partial(evaluate, experiment,
                                                   ranking=config.train.ranking != "off")
    params = selected = best_params if best_params is not None else state.params
    if retrained is not None:
        scores = {**evaluate_fn(params, ("valid",)), "test": retrained.scores["test"]}
        params = retrained.state.params
    elif best_params is not None or cold_choice is not None or "test" not in scores or (
            config.train.ranking != "off" and "rank_users" not in scores["test"]):
        scores = evaluate_fn(params, None)
    test, facts = scores["test"], experiment.data.facts
    rule = config.train.cold_start if cold_choice is None else cold_choice["rule"]
    summary = {
        "config": to_dict(config),
        "test_rmse": test["rmse"], "test_mae": test["mae"], "test_count": int(test["count"]),
        **({"valid_rmse": scores["valid"]["rmse"], "valid_mae": scores["valid"]["mae"]}
           if "valid" in scores else {}),
        **{key: value for name in ("test", "valid") if name in scores
           for key, value in reporting.ranking_fields(name, scores[name]).items()},
        **({"ranking": reporting.ranking_record(config, _threshold_in_rating_units(
                ranking_options(config, facts), facts.rating_unit))}
           if config.train.ranking != "off" else {}),
        **coldstart.summary_fields(rule, scores),
        **({"cold_start_choice": cold_choice} if cold_choice is not None else {}),
        "epochs_run": loop["epoch"],
        "protocol": reporting.protocol_record(config),
        "selection": ({"rule": "best " + reporting.selection_label(
                           config.train.select_metric) + (
                           ", early stopping" if config.train.early_stopping else ""),
                       "patience": config.train.early_stopping,
                       "best_epoch": loop["best"]["epoch"],
                       "stopped_early": loop["epoch"] < config.train.epochs,
                       "retrain": None if retrained is None else {
                           "epochs": retrained.summary["epochs_run"],
                           "train_ratings": retrained.summary["data"]["train_ratings"],
                           "folder": "retrain"}}
                      if best_params is not None else {"rule": "last epoch"}),
        "train_seconds": loop["seconds"],
        "entries_per_sec": loop["entries"] / max(loop["seconds"], 1e-9),
        "compile_seconds": experiment.compile_seconds, "steps": int(state.step),
        "checkpoint_seconds": loop.get("checkpoint_seconds", 0.0),
        "parallel": experiment.parallel.mode, "num_devices": experiment.parallel.num_devices,
        "matmul_precision": config.model.matmul_precision,
        "model": networks.identity(experiment.model)["class"],
        "seams": {name: _describe(value) for name, value in seams.items()
                  if value is not None},
        "data": {"dataset": loading.dataset_label(config.data, facts.split_files),
                 "split": "files" if facts.split_files else config.data.split,
                 **({"split_files": facts.split_files} if facts.split_files else {}),
                 "split_seed": config.split_seed, "orientation": config.data.orientation,
                 "num_users": facts.num_users, "num_items": facts.num_items,
                 **{f"{name}_ratings": count for name, count in facts.counts.items()},
                 **({"parts": str(config.data.parts)} if config.data.parts else {}),
                 "rows": experiment.num_rows, "row_width": experiment.row_width},
        **reporting.environment(),
        **(extra or {}),
    }
    if save_dir is not None:
        start = time.perf_counter()
        checkpoint.save_params(save_dir / "model", params)
        summary["checkpoint_seconds"] += time.perf_counter() - start
    if run_dir is not None:
        reporting.write_json(run_dir / "summary.json", summary)
    cold = (f", {int(test['cold_count'])} cold: RMSE {test['cold_rmse']:.4f} by "
            f"{rule}" if test["cold_count"] else "")
    log.info("final test RMSE %.4f  MAE %.4f  (%d test ratings%s; %.2f s training, "
             "%.1fM entries/s, %.2f s compile)", test["rmse"], test["mae"],
             int(test["count"]), cold, loop["seconds"], summary["entries_per_sec"] / 1e6,
             experiment.compile_seconds)
    return TrainResult(state=state, history=history, summary=summary,
                       experiment=experiment, scores=scores, params=params,
                       selected_params=selected, retrained=retrained)


def _threshold_in_rating_units(options: dict, unit: float) -> dict:
    return {**options, "threshold": options["threshold"] * unit}


def _agreed(decision: bool) -> bool:
    """Process 0's decision, on every process (a save is collective; clocks differ)."""
    return bool(from_primary(int(decision)))


def _describe(seam) -> str:
    """A seam's name for summary.json (what was injected, not its code)."""
    if isinstance(seam, dict):
        return ", ".join(sorted(seam))
    return getattr(seam, "__qualname__", None) or type(seam).__name__


def _device_memory() -> int | None:
    """An accelerator's memory in bytes; None on the CPU (host memory is checked then)."""
    device = jax.local_devices()[0]
    if device.platform == "cpu":
        return None
    stats = device.memory_stats() or {}
    return stats.get("bytes_limit")
