"""A saved run, read back for inference: its config, chosen params and the raw ids."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import numpy as np

from autorec_jax.config import Config, config_from_dict
from autorec_jax.errors import AutoRecError, CheckpointError
from autorec_jax.model import create_model, init_params
from autorec_jax.run.checkpoint import load_params, read_json

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Run:
    """A finished run, ready for inference."""
    config: Config
    params: PyTree
    user_ids: np.ndarray     # raw user ids; column/row j of the model is user_ids[j]
    item_ids: np.ndarray     # raw item ids
    orientation: str         # "item": rows are items, width len(user_ids); "user": swapped
    summary: dict | None     # summary.json, when the run wrote one


def load_run(run_dir: str | Path) -> Run:
    """Loads run.json, ids.json, model/ and summary.json without needing the model's code path.

    Raises:
      CheckpointError: a missing or unreadable file, naming it.
    """
    run_dir = Path(run_dir)
    try:
        config = config_from_dict(read_json(run_dir / "run.json").get("config", {}))
    except AutoRecError as error:
        raise CheckpointError(f"{run_dir / 'run.json'}: {error}") from None
    ids = read_json(run_dir / "ids.json")
    orientation = ids.get("orientation")
    if orientation != config.data.orientation or not all(
            isinstance(ids.get(k), list) for k in ("users", "items")):
        raise CheckpointError(f"{run_dir / 'ids.json'}: needs lists users and items and "
                              f"orientation {config.data.orientation!r} (run.json's)")
    width = len(ids["users"] if orientation == "item" else ids["items"])
    abstract = jax.eval_shape(
        lambda: init_params(create_model(config.model, width), jax.random.key(0)))
    summary_path = run_dir / "summary.json"
    return Run(config=config, params=load_params(run_dir / "model", abstract),
               user_ids=np.asarray(ids["users"]), item_ids=np.asarray(ids["items"]),
               orientation=orientation,
               summary=read_json(summary_path) if summary_path.exists() else None)
