"""GLocal-K's two stages as one run: pre-training, then fine-tuning from its params.

`train_and_evaluate` with `model.network` "glocal" (and no `model=` or `initial_params=`)
comes here. The run folder holds one ordinary run folder per stage, each resumable on its
own, and the whole run's summary.json:

  <out>/pretrain/           the kernel AutoRec alone (`network` "kernel"), for
                            `model.glocal_pretrain_epochs` epochs
  <out>/finetune/           GLocal-K's network (`glocal_k.GLocalK`) for `train.epochs`, its
                            kernel layers starting from the pre-trained ones
  <out>/retrain/pretrain/   with `train.retrain`: both stages again on train + validation
  <out>/retrain/finetune/   for the epochs each stage selected on validation
  <out>/summary.json        the final stage's summary, with "stages" (folders, epochs)

Under selection (`train.early_stopping` / `select best`), each stage keeps its best
validation epoch and fine-tuning starts from the pre-training's selected params; the retrain
repeats both stages (selected epoch counts, same seeds) without validation, so the test set
scores a model whose every choice was made on validation. `--resume` resumes the stage that
was interrupted: a finished stage trains no further epoch and is not redone.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Callable

import jax

from autorec_jax import networks
from autorec_jax.config import Config, replace, to_dict
from autorec_jax.errors import TrainingInterrupted
from autorec_jax.glocal_k import create_glocal_model
from autorec_jax.distributed.parallel import is_primary
from autorec_jax.run import reporting

log = logging.getLogger(__name__)

STAGES = ("pretrain", "finetune")


def stage_configs(config: Config) -> dict[str, Config]:
    """The configs of the two stages of a "glocal" config (neither retrains by itself)."""
    pretrain = replace(config, network="kernel", epochs=config.model.glocal_pretrain_epochs,
                       retrain=False)
    return {"pretrain": pretrain, "finetune": replace(config, retrain=False)}


def finetune_start(config: Config, pretrained: dict, num_rows: int, num_cols: int) -> dict:
    """Fine-tuning's initial params: {"local": the pre-trained kernel AutoRec's params,
    "conv_kernel": a fresh [M, k*k] init} (the key: the run's seed, folded with 1)."""
    module = create_glocal_model(replace(config, glocal_rows=num_rows).model, num_cols)
    fresh = networks.init_params(module, jax.random.fold_in(jax.random.key(config.seed), 1),
                                 num_cols)
    return {**fresh, "local": pretrained}


def train_glocal(config: Config, out_dir, *, train_stage: Callable, resume: bool = False,
                 overwrite: bool = False, stop_requested=None, **kwargs):
    """Both stages (and, with `train.retrain`, both again on train + validation).

    Args:
      config: a config with `model.network` "glocal".
      out_dir: the run's folder (None: nothing written).
      train_stage: `train_and_evaluate` (called once per stage with its config, folder,
        `initial_params` for fine-tuning, and the other keyword arguments).

    Returns:
      A `TrainResult` shaped as `train.retrain`'s: without retraining, the fine-tuning
      stage's; with it, the selection run's fine-tuning (`experiment`, `selected_params`,
      validation scores) with the retrained fine-tuning's `params`, test scores and
      summary, and that run as `retrained`. The summary gains "stages".
    """
    root = None if out_dir is None else Path(out_dir).expanduser()
    configs = stage_configs(config)
    common = dict(resume=resume, overwrite=overwrite, stop_requested=stop_requested, **kwargs)

    def pipeline(configs: dict[str, Config], prefix: str) -> dict:
        results = {}
        for name in STAGES:
            folder = None if root is None else root / prefix / name
            start = None
            if name == "finetune":
                pre = results["pretrain"]
                start = finetune_start(config, pre.params, pre.experiment.num_rows,
                                       pre.experiment.row_width)
            log.info("GLocal-K %s%s: %d epoch(s)", prefix and prefix + " ", name,
                     configs[name].train.epochs)
            try:
                results[name] = train_stage(configs[name], folder, initial_params=start,
                                            **common)
            except TrainingInterrupted as interrupted:
                raise TrainingInterrupted(
                    f"GLocal-K {prefix and prefix + ' '}{name} stage: {interrupted}"
                    + (f"; continue with --resume --out {root}" if root else "")) from None
        return results

    selected = pipeline(configs, "")
    final, stages = selected["finetune"], {
        name: _stage_record(result, name) for name, result in selected.items()}
    if config.train.retrain:
        chosen = {name: _selected_epoch(result) for name, result in selected.items()}
        # train.cold_start "auto": each stage's rule as chosen on validation.
        retrain = {name: replace(stage, valid_ratio=0.0, early_stopping=0, select="last",
                                 epochs=chosen[name], cold_start=selected[name].summary.get(
                                     "cold_start_choice", {}).get("rule",
                                                                  stage.train.cold_start))
                   for name, stage in configs.items()}
        log.info("GLocal-K: retraining both stages on train + validation for %d and %d "
                 "epoch(s)", chosen["pretrain"], chosen["finetune"])
        retrained = pipeline(retrain, "retrain")
        picked, refit = selected["finetune"], retrained["finetune"]
        final = dataclasses.replace(picked, summary=refit.summary, params=refit.params,
                                    scores={**picked.scores, "test": refit.scores["test"]},
                                    retrained=refit)
        stages.update({f"retrain/{name}": _stage_record(result, f"retrain/{name}")
                       for name, result in retrained.items()})
        # Validation scores stay those of the params chosen on it (as `train.retrain`'s).
        for key in ("valid_rmse", "valid_mae"):
            if key in selected["finetune"].summary:
                final.summary[key] = selected["finetune"].summary[key]
    # The whole run's protocol and selection, not the last stage's alone.
    selection = dict(selected["finetune"].summary["selection"])
    if config.train.retrain:
        selection["retrain"] = {"epochs": chosen, "folder": "retrain"}
    final.summary.update(config=to_dict(config), stages=stages, selection=selection,
                         protocol={**reporting.protocol_record(config),
                                   "stages": "pre-training, then fine-tuning from its params"},
                         final_stage="retrain/finetune" if config.train.retrain else
                         "finetune")
    if root is not None and is_primary():
        reporting.write_json(root / "summary.json", final.summary)
    return final


def _selected_epoch(result) -> int:
    selection = result.summary["selection"]
    return selection.get("best_epoch") or result.summary["epochs_run"]


def _stage_record(result, folder: str) -> dict:
    summary = result.summary
    return {"folder": folder, "epochs_run": summary["epochs_run"],
            "best_epoch": summary["selection"].get("best_epoch"),
            "train_seconds": summary["train_seconds"],
            "valid_rmse": summary.get("valid_rmse"), "model": summary["model"]}
