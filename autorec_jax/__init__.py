"""autorec_jax: AutoRec (Sedhain et al., WWW 2015) in JAX, Flax and Optax.

Importing the package touches no device and loads JAX only when a JAX-backed name is first
used (so `autorec_jax.data` works without it). The public API:
  config        d2l(), tiny(), paper(), honest(), glocal(), Config, DataConfig, ModelConfig,
                OptimConfig, TrainConfig, replace()
  a run         train_and_evaluate(config, out_dir, *, model=, optimizer=, loss_fn=,
                grad_transform=, entry_fields=) -> TrainResult (state, history, summary, experiment, scores,
                params, selected_params, retrained);
                setup(...) -> (Experiment, TrainState);
                run_epoch, evaluate(experiment, params)
  several models train_many(configs, out_dirs, *, ratings=, diverged=) -> [TrainResult] (K
                members vmapped in one compiled epoch: seeds, lr, weight decay, dropout, data
                and loop policies may differ; each equals its run alone);
                setup_many(configs, ...) -> (MultiExperiment, stacked TrainState);
                run_epoch_many, evaluate_many, check_members, group_members, MembersDiffer
  own loop      make_train_step(config, *, parallel=, loss_fn=, grad_transform=, model=),
                create_train_state(config, N, rng, *, optimizer=, model=, initial_params=),
                Parallel
  model seam    resolve_model(config, N, model), reads_whole_matrix, networks.init_params,
                forward, identity
                (`model=`: a Flax module or (config.model, N) -> module; the contract is in
                autorec_jax/networks.py); KernelAutoRec, KernelDense, local_kernel,
                kernel_penalty, make_kernel_loss (kernelised AutoRec, `--model kernel`);
                GLocalK, global_kernel, global_conv, create_glocal_model (GLocal-K's
                fine-tuning network), train_glocal, stage_configs, finetune_start (its two
                stages, `--model glocal` / `--preset glocal`); `initial_params=` of
                train_and_evaluate, setup and create_train_state (a warm start)
  step pieces   train_step, train_epoch, step_keys, compute_grads, apply_grads, norm_metrics,
                layer_norms, TrainState, StepKeys, resolve_loss (the loss a step minimises),
                objective_fn (the loss as a function of the params: a line search's value_fn)
  loss seam     LossTerms, ModelOutputs, reconstruction_loss, masked_sse, loss_denominator,
                observed_mask
  optimiser     create_optimizer(optim_config), encoder_decoder_labels(params),
                scale_by_rprop(initial_step) (iRprop-), with_restarts(tx, every) (L-BFGS restarts)
  research      per_row_grads(state, batch, rng, *, config, loss_fn=, model=)
  model         AutoRec (forward / encode / decode), create_model, init_params,
                low_precision_matmul(x, kernel, dtype=bf16) (bf16 inputs, float32 products,
                forward and backward)
  evaluator     eval_block, eval_blocks, rank_blocks (RMSE and ranking metrics, one pass),
                summarize; evaluate(experiment, params, ranking=True)
  ranking       topk_candidates, entry_ranks, rank_sums (the evaluator's full ranking:
                each relevant entry's rank among its user's candidates), topk_sums,
                running_topk, merge_topk, empty_topk, block_top_k, merge_sorted (pure,
                blocked: NDCG, Recall, Precision, HR, MRR @K)
  heldout_ranking  heldout_ndcg_sums (GLocal-K's held-out NDCG); HeldoutOrder,
                prepare_heldout (host), heldout_ndcg_prepared (from a host-made order)
  cold start    cold_mask(train, heldout, orientation), fallback_values(rule, train, heldout),
                choose_rule(network_cold_rmse, train, valid) (train.cold_start "auto")
  scaling       rating_unit(mode, train_ratings) (train.rating_scaling: the unit the
                network's ratings are divided by)
  data          Ratings, load_ratings, load_split, row_matrix, to_dense, epoch_batches,
                steps_per_epoch; load_split_files(data, seed, fmt) (a fixed split from files),
                file_checksums(data) (its files' paths and SHA-256, as run.json records);
                thin(ratings, fraction, seed), rescale(ratings, factor) (variants: a seeded
                uniform sample, ratings times a factor)
  a saved run   load_run(dir, *, model=) -> Run (.model: the module); top_k, predict_pairs (recommend); plot_runs
  protocols     split_plan(name, config); run_protocol(config, plan, out_dir, *, ratings=,
                train_fn=, batch_members=, **seams) -> ProtocolResult (table, test_rmse);
                compare(a, b) (paired t of test RMSE, a - b)
  ensembles     train_ensemble(configs, *, out_dir=, ratings=, batch_members=) ->
                EnsembleResult (summary, runs, weights);
                predict_heldout(experiment, params, heldout) -> [R];
                fit_blend(preds_MxR, targets_R) -> [M+1] (fit on validation only),
                apply_blend(weights, preds_MxR)
  statistics    t_cdf, t_quantile, mean_ci(values), paired_t(a, b) (NumPy only)
  sweeps        run_grid(config, grid, seeds, out_dir, *, batch_members=) -> results (one
                row per run, resumable); summarize_grid(results) -> per setting, best by
                validation RMSE
  tuning        tune(config, out_dir, *, trials=, budget=, space=, models=) -> TuneResult
                (config, params, valid_rmse, test_rmse, study, final, record): Optuna's
                search on validation, resumable; the winner retrained, test scored once
  baselines     run_baselines(train, valid, test) -> {"item_mean", "biased_mf"} (chosen
                on validation, refitted on train + validation, test once);
                fit_biased_mf(train, dim, reg) -> BiasedMF (ALS, NumPy)
  errors        AutoRecError, ConfigError, DataError, ChecksumError, SourceUnavailableError,
                TrainingDivergedError, TrainingInterrupted, CheckpointError
"""

import importlib

from autorec_jax.config import (Config, DataConfig, ModelConfig, OptimConfig, TrainConfig, d2l,
                                glocal, honest, paper, replace, tiny)
from autorec_jax.errors import (AutoRecError, CheckpointError, ChecksumError, ConfigError,
                                DataError, SourceUnavailableError, TrainingDivergedError,
                                TrainingInterrupted)

__version__ = "0.2.0"

_LAZY_MODULES = {
    "autorec_jax.serve.load": ("Run", "load_run"),
    "autorec_jax.data.coldstart": ("choose_rule", "cold_mask", "fallback_values"),
    "autorec_jax.data.scaling": ("rating_unit",),
    "autorec_jax.studies.ensemble": ("EnsembleResult", "apply_blend", "fit_blend",
                                     "predict_heldout", "train_ensemble"),
    "autorec_jax.data.batching": ("epoch_batches", "steps_per_epoch"),
    "autorec_jax.data.loading": ("load_ratings", "load_split"),
    "autorec_jax.data.split_files": ("file_checksums", "load_split_files"),
    "autorec_jax.data.ratings": ("Ratings", "row_matrix", "to_dense"),
    "autorec_jax.data.variants": ("rescale", "thin"),
    "autorec_jax.studies.baselines": ("BiasedMF", "fit_biased_mf", "run_baselines"),
    "autorec_jax.studies.plots": ("plot_runs",),
    "autorec_jax.studies.protocol": ("ProtocolResult", "compare", "run_protocol", "split_plan"),
    "autorec_jax.serve.recommend": ("predict_pairs", "top_k"),
    "autorec_jax.evaluator": ("eval_block", "eval_blocks", "rank_blocks", "summarize"),
    "autorec_jax.ranking": ("block_top_k", "empty_topk", "entry_ranks", "merge_sorted",
                            "merge_topk", "rank_sums", "running_topk", "topk_candidates",
                            "topk_sums"),
    "autorec_jax.heldout_ranking": ("HeldoutOrder", "heldout_ndcg_prepared",
                                    "heldout_ndcg_sums", "prepare_heldout"),
    "autorec_jax.run.experiment": ("Experiment", "TrainResult", "evaluate", "run_epoch",
                                   "setup", "train_and_evaluate"),
    "autorec_jax.losses": ("LossTerms", "ModelOutputs", "loss_denominator", "masked_sse",
                           "observed_mask", "reconstruction_loss"),
    "autorec_jax.model": ("AutoRec", "create_model", "init_params"),
    "autorec_jax.networks": ("resolve_model", "reads_whole_matrix"),
    "autorec_jax.kernel": ("KernelAutoRec", "KernelDense", "kernel_penalty", "local_kernel",
                           "make_kernel_loss"),
    "autorec_jax.glocal_k": ("GLocalK", "create_glocal_model", "global_conv", "global_kernel"),
    "autorec_jax.run.stages": ("finetune_start", "stage_configs", "train_glocal"),
    "autorec_jax.mixed_precision": ("low_precision_matmul",),
    "autorec_jax.run.members": ("MembersDiffer", "MultiExperiment", "check_members",
                                "evaluate_many", "group_members", "run_epoch_many",
                                "setup_many"),
    "autorec_jax.run.multi": ("train_many",),
    "autorec_jax.optim": ("create_optimizer", "encoder_decoder_labels", "scale_by_rprop",
                          "with_restarts"),
    "autorec_jax.distributed.parallel": ("Parallel",),
    "autorec_jax.distributed.steps": ("make_train_step",),
    "autorec_jax.research": ("per_row_grads",),
    "autorec_jax.studies.stats": ("mean_ci", "paired_t", "t_cdf", "t_quantile"),
    "autorec_jax.studies.sweep": ("run_grid", "summarize_grid"),
    "autorec_jax.studies.tune": ("TuneResult", "tune"),
    "autorec_jax.train": ("StepKeys", "TrainState", "apply_grads", "compute_grads",
                          "create_train_state", "layer_norms", "objective_fn", "resolve_loss",
                          "norm_metrics", "step_keys", "train_epoch", "train_step"),
}
_LAZY = {name: module for module, names in _LAZY_MODULES.items() for name in names}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'autorec_jax' has no attribute {name!r}")


__all__ = sorted([
    "AutoRecError", "CheckpointError", "ChecksumError", "Config", "ConfigError",
    "DataConfig", "DataError", "ModelConfig", "OptimConfig", "SourceUnavailableError",
    "TrainConfig", "TrainingDivergedError", "TrainingInterrupted", "d2l", "glocal", "honest",
    "paper",
    "replace", "tiny",
    *_LAZY])


def __dir__():
    return sorted(set(globals()) | set(__all__))
