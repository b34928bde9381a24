"""autorec_jax: AutoRec (Sedhain et al., WWW 2015) in JAX, Flax and Optax.

Importing the package touches no device and loads JAX only when a JAX-backed name is first
used (so `autorec_jax.data` works without it). The public API:
  config presets   d2l(), tiny(), Config and its groups, replace()
  training         train_and_evaluate(config, out_dir) -> TrainResult
  pieces           AutoRec, create_model, train_step, train_epoch, eval_block, masked_sse
"""

import importlib

from autorec_jax.config import (Config, DataConfig, ModelConfig, OptimConfig, TrainConfig, d2l,
                                replace, tiny)
from autorec_jax.errors import (AutoRecError, ChecksumError, ConfigError, DataError,
                                SourceUnavailableError, TrainingDivergedError)

__version__ = "0.1.0"

_LAZY = {
    "eval_block": "autorec_jax.evaluate", "summarize": "autorec_jax.evaluate",
    "masked_sse": "autorec_jax.losses",
    "AutoRec": "autorec_jax.model", "create_model": "autorec_jax.model",
    "TrainResult": "autorec_jax.train", "TrainState": "autorec_jax.train",
    "create_train_state": "autorec_jax.train", "train_and_evaluate": "autorec_jax.train",
    "train_epoch": "autorec_jax.train", "train_step": "autorec_jax.train",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'autorec_jax' has no attribute {name!r}")


__all__ = [
    "AutoRec", "AutoRecError", "ChecksumError", "Config", "ConfigError", "DataConfig",
    "DataError", "ModelConfig", "OptimConfig", "SourceUnavailableError", "TrainConfig",
    "TrainResult", "TrainState", "TrainingDivergedError", "create_model", "create_train_state",
    "d2l", "eval_block", "masked_sse", "replace", "summarize", "tiny", "train_and_evaluate",
    "train_epoch", "train_step",
]
