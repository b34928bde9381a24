"""autorec_jax: AutoRec (Sedhain et al., WWW 2015) in JAX, Flax and Optax.

Importing the package touches no device. The public API:
  config presets   d2l(), tiny(), Config and its groups, replace()
  training         train_and_evaluate(config, out_dir) -> TrainResult
  pieces           AutoRec, create_model, train_step, train_epoch, eval_block, masked_sse
"""

from autorec_jax.config import (Config, DataConfig, ModelConfig, OptimConfig, TrainConfig, d2l,
                                replace, tiny)
from autorec_jax.errors import (AutoRecError, ChecksumError, ConfigError, DataError,
                                SourceUnavailableError, TrainingDivergedError)
from autorec_jax.evaluate import eval_block, summarize
from autorec_jax.losses import masked_sse
from autorec_jax.model import AutoRec, create_model
from autorec_jax.train import (TrainResult, TrainState, create_train_state, train_and_evaluate,
                               train_epoch, train_step)

__version__ = "0.1.0"

__all__ = [
    "AutoRec", "AutoRecError", "ChecksumError", "Config", "ConfigError", "DataConfig",
    "DataError", "ModelConfig", "OptimConfig", "SourceUnavailableError", "TrainConfig",
    "TrainResult", "TrainState", "TrainingDivergedError", "create_model", "create_train_state",
    "d2l", "eval_block", "masked_sse", "replace", "summarize", "tiny", "train_and_evaluate",
    "train_epoch", "train_step",
]
