"""A saved run, read back for inference: its config, chosen params and the raw ids."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import numpy as np

from autorec_jax.config import Config, config_from_dict
from autorec_jax.errors import AutoRecError, CheckpointError
from autorec_jax import networks
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
    model: Any = None        # the Flax module whose params these are (`networks`)


def load_run(run_dir: str | Path, *, model=None) -> Run:
    """Loads run.json, ids.json, model/ and summary.json without needing the model's code path.

    A run of stages (`model.network` "glocal", `run.stages`) loads its final stage.

    Args:
      model: the module the run was trained with when it was not the config's network (a
        Flax module or a function (config.model, N) -> module, as given to training).

    Raises:
      CheckpointError: a missing or unreadable file, naming it; a `model` other than the
        run's (run.json records which module made it).
    """
    run_dir = Path(run_dir)
    if not (run_dir / "run.json").exists() and (run_dir / "summary.json").exists():
        final = read_json(run_dir / "summary.json").get("final_stage")
        if isinstance(final, str):   # a run of stages (GLocal-K): its final stage's model
            return load_run(run_dir / final, model=model)
    try:
        identity = read_json(run_dir / "run.json")
        config = config_from_dict(identity.get("config", {}))
    except AutoRecError as error:
        raise CheckpointError(f"{run_dir / 'run.json'}: {error}") from None
    ids = read_json(run_dir / "ids.json")
    orientation = ids.get("orientation")
    if orientation != config.data.orientation or not all(
            isinstance(ids.get(k), list) for k in ("users", "items")):
        raise CheckpointError(f"{run_dir / 'ids.json'}: needs lists users and items and "
                              f"orientation {config.data.orientation!r} (run.json's)")
    width = len(ids["users"] if orientation == "item" else ids["items"])
    try:
        module = networks.resolve_model(config, width, model)
        networks.check_same(identity.get("model"), module, f"{run_dir}")
    except AutoRecError as error:
        raise CheckpointError(str(error)) from None
    abstract = jax.eval_shape(
        lambda: networks.init_params(module, jax.random.key(0), width))
    summary_path = run_dir / "summary.json"
    return Run(config=config, params=load_params(run_dir / "model", abstract),
               user_ids=np.asarray(ids["users"]), item_ids=np.asarray(ids["items"]),
               orientation=orientation,
               summary=read_json(summary_path) if summary_path.exists() else None,
               model=module)
