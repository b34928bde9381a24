"""The configuration: a tree of frozen dataclasses, validated on construction, and presets.

Every knob of a run lives here. Field names are unique across groups so that each one is
also a command-line flag (`--hidden 500` or `--model.hidden 500`, see `cli.py`).

Presets:
  d2l():  the Dive into Deep Learning AutoRec recipe (item-based, MovieLens 100K).
          Run: `python scripts/train.py` (this is the default). Expected: test RMSE about
          0.900 (mean over seeds 0..4), under 5 s wall on a 2-core CPU with a warm cache.
  tiny(): a few-second configuration for tests and smoke runs (no ranking metrics).
  paper(): the AutoRec paper's objective and optimiser (full-batch RProp, L2 on weights).
  honest(): the best single I-AutoRec found with every choice made on validation.
"""

from __future__ import annotations

import dataclasses
import math
import re

from autorec_jax.errors import ConfigError

# The named datasets of data/movielens.py (a test checks they match), listed here so that
# validating a config imports no data code.
DATASETS = ("ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-latest-small")
SEED_LIMIT = 2**32  # seeds must lie below: NumPy's RandomState (the book's split) takes 32 bits
NETWORKS = ("autorec", "kernel", "glocal")  # networks.builtin_model's (a test checks they match)
ACTIVATIONS = ("identity", "sigmoid", "relu", "tanh", "elu", "selu", "softplus", "gelu")
DROPOUT_RNGS = ("hash", "jax")
COMPUTE_DTYPES = ("float32", "bfloat16")
SPLITS = ("random", "seq-aware", "ratio", "kfold", "leave-last", "ml100k-u1", "ml100k-u2",
          "ml100k-u3", "ml100k-u4", "ml100k-u5", "ml100k-ua", "ml100k-ub")
RATINGS_FORMATS = ("auto", "delimited", "netflix")
DUPLICATE_POLICIES = ("error", "keep-last", "mean")
COLUMN_ROLES = ("user", "item", "rating", "timestamp")   # data/readers.py's ROLES, SKIP, ...
SKIP_COLUMN = "-"
HEADER_CHOICES = ("auto", "yes", "no")
ID_TYPES = ("auto", "int", "str")
ORIENTATIONS = ("item", "user")
OPTIMIZERS = ("adam", "sgd", "rprop", "lbfgs")
DECAY_STYLES = ("coupled", "decoupled")
LAST_BATCH = ("rollover", "pad", "drop")
LOSS_NORMALIZATIONS = ("book", "observed", "sum")
RATING_SCALINGS = ("none", "max")  # data/scaling.py's (a test checks they match)
SELECTIONS = ("last", "best")
PARALLEL_MODES = ("auto", "jit", "pmap", "sharded")
MATMUL_PRECISIONS = ("highest", "high", "default")
COLD_START_RULES = ("network", "global-mean", "user-mean", "item-mean")  # or a number
COLD_START_AUTO = "auto"  # chosen among COLD_START_RULES on validation (data/coldstart.py)
RANKING_MODES = ("off", "final", "every")
TOPK_METRICS = ("recall", "precision", "ndcg", "hr", "mrr")  # ranking.topk_sums' metrics
COLD_START_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)")  # "3", "3.5", "-1"


def _check(ok: bool, field: str, allowed: str, value) -> None:
    if not ok:
        raise ConfigError(f"{field} must be {allowed}, got {value!r}")


def _check_choice(value: str, field: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, field, "one of " + ", ".join(choices), value)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_seed(value) -> bool:
    return _is_int(value) and 0 <= value < SEED_LIMIT


def _is_cold_start(value) -> bool:
    """A named rule of COLD_START_RULES, "auto", or a decimal number as text ("3", "3.5")."""
    return isinstance(value, str) and (value in COLD_START_RULES or value == COLD_START_AUTO
                                       or COLD_START_NUMBER.fullmatch(value) is not None)


def select_metrics(ranking_k: tuple[int, ...]) -> tuple[str, ...]:
    """The names `train.select_metric` takes with these cut-offs."""
    return ("valid_rmse", "valid_heldout_ndcg") + tuple(
        f"valid_{name}@{k}" for k in ranking_k for name in (*TOPK_METRICS, "heldout_ndcg"))


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    dataset: str = "ml-100k"       # a named dataset (ml-100k, ml-1m, ml-10m, ml-20m, ml-25m,
                                   # ml-latest-small); ignored when `ratings` is set
    data_dir: str | None = None    # folder holding the dataset's files; None: cache, download
    ratings: str | None = None     # a ratings file (or Netflix folder) to use instead
    ratings_format: str = "auto"   # "delimited", "netflix" (MovieID: blocks), "auto": detect
    sep: str | None = None         # field separator of `ratings`; None: sniffed
    columns: str | None = None     # fields of `ratings` in order, "-" skips one (e.g.
                                   # user,item,rating,-); None: user,item,rating[,timestamp]
    header: str = "auto"           # first line of `ratings` is a header: auto, yes, no
    rating_scale: tuple[float, ...] | None = None  # (min, max) ratings must lie in; None: the
                                   # named dataset's scale, unchecked for `ratings` files
    duplicates: str = "error"      # repeated (user, item): "error", "keep-last", "mean"
    id_type: str = "auto"          # raw ids: "auto" (integers if all parse), "int", "str"
    split: str = "random"          # see autorec_jax/data/splits.py: random (the book's),
                                   # seq-aware, ratio, kfold, leave-last, ml100k-u1..u5/ua/ub
    test_ratio: float = 0.1        # test fraction for "random" and "ratio"
    valid_ratio: float = 0.0       # fraction of the training part held out for validation
    folds: int = 5                 # "kfold": number of folds
    fold: int = 0                  # "kfold": which fold is the test set
    leave_last: int = 1            # "leave-last": test ratings per user
    split_seed: int | None = None  # seed of the split draws; None: use Config.seed
    orientation: str = "item"      # "item": I-AutoRec, rows are items; "user": U-AutoRec
    parts: str | None = None       # a folder of row parts (scripts/data.py parts) to train
                                   # on instead: each process loads only its devices' parts
    train_ratings: str | None = None  # a fixed split from files: the training file, or a
                                   # folder holding train.*, test.* (and valid.*); replaces
                                   # `ratings`/`dataset` and the split options (split,
                                   # test_ratio, folds, ...); see data/split_files.py
    test_ratings: str | None = None   # the test file (with a training *file*)
    valid_ratings: str | None = None  # the validation file (optional; else valid_ratio
                                   # carves validation out of the training file)

    def __post_init__(self):
        _check_choice(self.dataset, "data.dataset", DATASETS)
        _check_choice(self.ratings_format, "data.ratings_format", RATINGS_FORMATS)
        _check_choice(self.split, "data.split", SPLITS)
        _check(_is_real(self.test_ratio) and 0.0 < self.test_ratio < 1.0, "data.test_ratio",
               "in (0, 1)", self.test_ratio)
        _check(_is_real(self.valid_ratio) and 0.0 <= self.valid_ratio < 1.0,
               "data.valid_ratio", "in [0, 1)", self.valid_ratio)
        _check(_is_int(self.folds) and self.folds >= 2, "data.folds", "an integer >= 2",
               self.folds)
        _check(_is_int(self.fold) and 0 <= self.fold < self.folds, "data.fold",
               f"an integer in [0, {self.folds})", self.fold)
        _check(_is_int(self.leave_last) and self.leave_last >= 1, "data.leave_last",
               "an integer >= 1", self.leave_last)
        _check(self.split_seed is None or _is_seed(self.split_seed), "data.split_seed",
               "None or an integer in [0, 2**32)", self.split_seed)
        _check_choice(self.orientation, "data.orientation", ORIENTATIONS)
        _check(self.rating_scale is None or (
            len(self.rating_scale) == 2 and all(_is_real(v) for v in self.rating_scale)
            and self.rating_scale[0] < self.rating_scale[1]), "data.rating_scale",
            "None or (min, max) with min < max", self.rating_scale)
        _check_choice(self.duplicates, "data.duplicates", DUPLICATE_POLICIES)
        _check(self.parts is None or (isinstance(self.parts, str) and self.parts.strip() != ""),
               "data.parts", "None or a folder (str)", self.parts)
        roles = [c.strip() for c in (self.columns or ",".join(COLUMN_ROLES)).split(",")]
        roles = [c for c in roles if c != SKIP_COLUMN]
        _check(all(c in COLUMN_ROLES for c in roles) and len(set(roles)) == len(roles)
               and {"user", "item", "rating"} <= set(roles), "data.columns",
               "user, item and rating once each (and optionally timestamp, '-' to skip a "
               "field)", self.columns)
        _check_choice(self.header, "data.header", HEADER_CHOICES)
        for name in ("train_ratings", "test_ratings", "valid_ratings"):
            value = getattr(self, name)
            _check(value is None or (isinstance(value, str) and value.strip() != ""),
                   f"data.{name}", "None or a path (str)", value)
        if self.train_ratings is None and (self.test_ratings or self.valid_ratings):
            raise ConfigError("data.test_ratings/data.valid_ratings need data.train_ratings "
                              "(--train-ratings FILE --test-ratings FILE)")
        if self.train_ratings is not None and self.ratings is not None:
            raise ConfigError("data.ratings and data.train_ratings both name the data; give "
                              "--ratings FILE (split internally) or --train-ratings (a fixed "
                              "split from files), not both")
        _check_choice(self.id_type, "data.id_type", ID_TYPES)
        _check(self.sep is None or (isinstance(self.sep, str) and self.sep != ""
                                    and "\n" not in self.sep and '"' not in self.sep),
               "data.sep", "a non-empty separator", self.sep)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    network: str = "autorec"           # the built-in network (`--model`): "autorec" (model.py)
                                       # or "kernel" (kernelised AutoRec, kernel.py), or
                                       # "glocal" (GLocal-K: kernel AutoRec pre-training, then
                                       # fine-tuning on a smoothed matrix, glocal_k.py); a Flax
                                       # module of one's own goes through `model=` instead
    hidden: tuple[int, ...] = (500,)   # hidden layer widths, encoder first (500,250,500: deep)
    activation: str = "sigmoid"        # activation of every hidden layer (the encoder)
    output_activation: str = "identity"  # activation of the output layer (the decoder)
    dropout: float = 0.05              # dropout rate after each hidden layer, training only
    init_std: float = 0.01             # kernels ~ Normal(0, init_std); biases start at 0
    input_dropout: float = 0.0         # denoising: rate at which observed inputs are dropped
                                       # while training (the loss still scores them)
    dropout_rng: str = "hash"          # "hash": counter hash seeded by the JAX PRNG (fast);
                                       # "jax": flax nn.Dropout, one PRNG uniform per unit
    matmul_precision: str = "highest"  # precision of every layer's matmul: "highest" (float32,
                                       # the book's numbers on any device), "high", "default"
                                       # (fastest: one bf16 pass on TPU, TF32 on recent GPUs);
                                       # the CPU ignores it
    compute_dtype: str = "float32"     # dtype of the layers' matmul inputs, forward and
                                       # backward: "float32" or "bfloat16" (params, grads,
                                       # optimiser state, activations, accumulation and the
                                       # loss stay float32)
    kernel_dim: int = 5                # "kernel": d, the dimension of the embeddings u, v
    lambda_s: float = 0.0              # "kernel": weight of sum ||K||^2 (the kernels' support)
    lambda_2: float = 0.0              # "kernel": weight of sum ||W||^2 (use it with
                                       # optim.weight_decay 0: both penalise W)
    glocal_pretrain_epochs: int = 30   # "glocal": epochs of the pre-training stage (the
                                       # kernel AutoRec alone); train.epochs: fine-tuning's
    glocal_kernel_size: int = 3        # "glocal": k of the k x k global kernel (odd)
    glocal_dot_scale: float = 1.0      # "glocal": scale of the global kernel
    glocal_rows: int = 0               # "glocal": the matrix's rows (the conv kernel map is
                                       # [rows, k*k]); 0: set from the data by the run

    def __post_init__(self):
        _check_choice(self.network, "model.network", NETWORKS)
        _check(_is_int(self.kernel_dim) and self.kernel_dim >= 1, "model.kernel_dim",
               "an integer >= 1", self.kernel_dim)
        for name in ("lambda_s", "lambda_2"):
            value = getattr(self, name)
            _check(_is_real(value) and value >= 0, f"model.{name}", ">= 0", value)
        _check(self.network != "autorec" or (self.lambda_s == 0 and self.lambda_2 == 0),
               "model.lambda_s and model.lambda_2", "0 unless model.network is kernel or "
               "glocal", (self.lambda_s, self.lambda_2))
        _check(_is_int(self.glocal_pretrain_epochs) and self.glocal_pretrain_epochs >= 1,
               "model.glocal_pretrain_epochs", "an integer >= 1", self.glocal_pretrain_epochs)
        _check(_is_int(self.glocal_kernel_size) and self.glocal_kernel_size >= 1
               and self.glocal_kernel_size % 2 == 1, "model.glocal_kernel_size",
               "an odd integer >= 1", self.glocal_kernel_size)
        _check(_is_real(self.glocal_dot_scale) and self.glocal_dot_scale > 0,
               "model.glocal_dot_scale", "> 0", self.glocal_dot_scale)
        _check(_is_int(self.glocal_rows) and self.glocal_rows >= 0, "model.glocal_rows",
               "an integer >= 0", self.glocal_rows)
        _check(isinstance(self.hidden, tuple) and len(self.hidden) > 0
               and all(_is_int(h) and h > 0 for h in self.hidden),
               "model.hidden", "a non-empty tuple of positive integers", self.hidden)
        _check_choice(self.activation, "model.activation", ACTIVATIONS)
        _check_choice(self.output_activation, "model.output_activation", ACTIVATIONS)
        _check(_is_real(self.dropout) and 0.0 <= self.dropout < 1.0, "model.dropout",
               "in [0, 1)", self.dropout)
        _check(_is_real(self.input_dropout) and 0.0 <= self.input_dropout < 1.0,
               "model.input_dropout", "in [0, 1)", self.input_dropout)
        _check(_is_real(self.init_std) and self.init_std > 0, "model.init_std", "> 0",
               self.init_std)
        _check_choice(self.dropout_rng, "model.dropout_rng", DROPOUT_RNGS)
        _check_choice(self.matmul_precision, "model.matmul_precision", MATMUL_PRECISIONS)
        _check_choice(self.compute_dtype, "model.compute_dtype", COMPUTE_DTYPES)


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    optimizer: str = "adam"          # "adam", "sgd", or "rprop" (sign-based, for full batches:
                                     # the AutoRec paper's; lr is its initial step size)
    lr: float = 0.002                # learning rate
    b1: float = 0.9                  # Adam first-moment decay
    b2: float = 0.999                # Adam second-moment decay
    eps: float = 1e-8                # Adam epsilon
    momentum: float = 0.0            # SGD momentum (0: plain SGD)
    weight_decay: float = 1e-5       # L2 coefficient (gluon's wd)
    decay_style: str = "coupled"     # "coupled": wd*w added to the gradient (MXNet, book);
                                     # "decoupled": AdamW-style, applied after the update
    decay_biases: bool = True        # decay biases too (MXNet's wd does; the paper does not)
    lbfgs_memory: int = 10           # "lbfgs": the curvature pairs kept (optax.lbfgs's
                                     # memory_size); its zoom line search picks the step,
                                     # so lr is unused; full batch only
    lbfgs_restart: int = 0           # "lbfgs": forget the pairs every this many steps (as
                                     # scipy's L-BFGS-B run k iterations per call); 0: never

    def __post_init__(self):
        _check_choice(self.optimizer, "optim.optimizer", OPTIMIZERS)
        _check(_is_real(self.lr) and self.lr > 0, "optim.lr", "> 0", self.lr)
        _check(_is_real(self.b1) and 0.0 <= self.b1 < 1.0, "optim.b1", "in [0, 1)", self.b1)
        _check(_is_real(self.b2) and 0.0 <= self.b2 < 1.0, "optim.b2", "in [0, 1)", self.b2)
        _check(_is_real(self.eps) and self.eps > 0, "optim.eps", "> 0", self.eps)
        _check(_is_real(self.momentum) and 0.0 <= self.momentum < 1.0, "optim.momentum",
               "in [0, 1)", self.momentum)
        _check(_is_real(self.weight_decay) and self.weight_decay >= 0, "optim.weight_decay",
               ">= 0", self.weight_decay)
        _check_choice(self.decay_style, "optim.decay_style", DECAY_STYLES)
        _check(isinstance(self.decay_biases, bool), "optim.decay_biases", "true or false",
               self.decay_biases)
        _check(_is_int(self.lbfgs_memory) and self.lbfgs_memory >= 1, "optim.lbfgs_memory",
               "an integer >= 1", self.lbfgs_memory)
        _check(_is_int(self.lbfgs_restart) and self.lbfgs_restart >= 0, "optim.lbfgs_restart",
               "an integer >= 0", self.lbfgs_restart)
        _check(self.optimizer != "lbfgs" or self.decay_style == "coupled",
               "optim.decay_style", "coupled with optim.optimizer lbfgs (its decay is part "
               "of the objective the line search reads)", self.decay_style)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 25                 # passes over the training rows
    batch_size: int = 256            # rows (items for I-AutoRec) per step, over all devices;
                                     # 0: full batch, every training row in one step
    shuffle: bool = True             # a new row order each epoch; false: rows in index
                                     # order (GLocal-K's convolution needs it)
    last_batch: str = "rollover"     # leftover rows at an epoch's end: "rollover" (gluon:
                                     # carried into the next epoch), "pad", or "drop"
    loss: str = "book"               # "book": 0.5 * mean over all entries of the batch;
                                     # "observed": mean over observed entries; "sum": plain SSE
    parallel: str = "auto"           # "jit" (one device), "pmap" (all local devices),
                                     # "sharded" (jit + shard_map over a data x model mesh
                                     # of all devices), "auto": sharded if >1 device, else jit
    eval_batch_size: int = 1024      # rows per evaluation block
    eval_every: int = 1              # evaluate every this many epochs (and after the last)
    clip_predictions: bool = False   # clip predictions to the rating scale when scoring
    cold_start: str = "network"      # prediction at held-out entries whose user or item has
                                     # no training rating: "network" (its output),
                                     # "global-mean", "user-mean", "item-mean" (the global
                                     # mean for a user/item with none), a number ("3"),
                                     # or "auto": after selection, the one of the four
                                     # named rules with the lowest RMSE on validation's
                                     # cold entries (needs data.valid_ratio > 0)
    rating_scaling: str = "none"     # "max": the network sees ratings divided by the
                                     # largest |training rating| (inputs, targets,
                                     # fallbacks, clip range); metrics and predictions are
                                     # multiplied back (data/scaling.py); "none": as read
    early_stopping: int = 0          # patience in epochs on validation RMSE (needs
                                     # data.valid_ratio > 0; keeps the best epoch); 0: off
    select: str = "last"             # params the run keeps: "last" epoch's, or "best":
                                     # the best validation RMSE's over all epochs (needs
                                     # data.valid_ratio > 0; early stopping implies it)
    retrain: bool = False            # after selection, train again from scratch on train +
                                     # validation for the chosen number of epochs; the test
                                     # set scores that model (needs a selection)
    checkpoint_every: int = 0        # epochs between checkpoints in --out; 0: automatic,
                                     # every max(30 s, 20x a save's time) (the last and an
                                     # interrupted epoch are always saved)
    keep_checkpoints: int = 2        # newest checkpoints kept (plus the best by valid RMSE)
    divergence_factor: float = 100.0  # stop when the epoch's train loss exceeds this times
                                     # the first epoch's, or held-out RMSE exceeds it times
                                     # the rating range; 0: never
    allow_cpu: bool = False          # train on the CPU even when a TPU or GPU is visible but
                                     # JAX did not start it (else the run stops naming the fix)
    model_parallel: int = 1          # "sharded": devices on the mesh's model axis, which
                                     # splits the row width N (V, W, b, optimiser state)
    ranking: str = "final"           # ranking metrics (autorec_jax/ranking.py) beside RMSE:
                                     # "off", "final" (the final scores only), "every" (also
                                     # at every evaluation while training, in metrics.jsonl)
    ranking_k: tuple[int, ...] = (10, 20)  # the cut-offs K of the @K metrics
    relevance_threshold: float | None = None  # full ranking: a held-out rating at or above
                                     # it is relevant; None: min + 0.75 (max - min) of the
                                     # training ratings (4 on a 1-5 scale, 75.25 on 1-100)
    select_metric: str = "valid_rmse"  # what early stopping and --select best watch:
                                     # "valid_rmse" (lower is better) or a validation ranking
                                     # metric, e.g. "valid_ndcg@10", "valid_recall@20",
                                     # "valid_heldout_ndcg" (higher is better)

    def __post_init__(self):
        _check(_is_int(self.epochs) and self.epochs >= 1, "train.epochs", "an integer >= 1",
               self.epochs)
        _check(_is_int(self.batch_size) and self.batch_size >= 0, "train.batch_size",
               "an integer >= 1, or 0 (full batch)", self.batch_size)
        _check_choice(self.last_batch, "train.last_batch", LAST_BATCH)
        _check_choice(self.loss, "train.loss", LOSS_NORMALIZATIONS)
        _check_choice(self.parallel, "train.parallel", PARALLEL_MODES)
        _check(_is_int(self.eval_batch_size) and self.eval_batch_size >= 1,
               "train.eval_batch_size", "an integer >= 1", self.eval_batch_size)
        _check(_is_int(self.eval_every) and self.eval_every >= 1, "train.eval_every",
               "an integer >= 1", self.eval_every)
        _check(isinstance(self.shuffle, bool), "train.shuffle", "true or false", self.shuffle)
        _check(isinstance(self.clip_predictions, bool), "train.clip_predictions",
               "true or false", self.clip_predictions)
        _check(_is_cold_start(self.cold_start), "train.cold_start",
               "one of " + ", ".join(COLD_START_RULES) + ' or a decimal number as text, e.g. "3", '
               f'or {COLD_START_AUTO} (chosen on validation)',
               self.cold_start)
        _check_choice(self.rating_scaling, "train.rating_scaling", RATING_SCALINGS)
        for name in ("early_stopping", "checkpoint_every"):
            value = getattr(self, name)
            _check(_is_int(value) and value >= 0, f"train.{name}", "an integer >= 0", value)
        _check_choice(self.select, "train.select", SELECTIONS)
        _check(isinstance(self.retrain, bool), "train.retrain", "true or false", self.retrain)
        _check(_is_int(self.keep_checkpoints) and self.keep_checkpoints >= 1,
               "train.keep_checkpoints", "an integer >= 1", self.keep_checkpoints)
        _check(_is_real(self.divergence_factor) and (self.divergence_factor == 0
                                                     or self.divergence_factor > 1),
               "train.divergence_factor", "0 (off) or > 1", self.divergence_factor)
        _check(isinstance(self.allow_cpu, bool), "train.allow_cpu", "true or false",
               self.allow_cpu)
        _check(_is_int(self.model_parallel) and self.model_parallel >= 1,
               "train.model_parallel", "an integer >= 1", self.model_parallel)
        _check_choice(self.ranking, "train.ranking", RANKING_MODES)
        _check(isinstance(self.ranking_k, tuple) and len(self.ranking_k) > 0
               and all(_is_int(k) and k >= 1 for k in self.ranking_k), "train.ranking_k",
               "a non-empty tuple of integers >= 1 (e.g. 10,20)", self.ranking_k)
        _check(self.relevance_threshold is None or _is_real(self.relevance_threshold),
               "train.relevance_threshold", "None or a number", self.relevance_threshold)
        _check(self.select_metric in select_metrics(self.ranking_k), "train.select_metric",
               "valid_rmse, valid_heldout_ndcg or valid_<metric>@<K> with <metric> one of "
               f"{', '.join(TOPK_METRICS)} and K in train.ranking_k {self.ranking_k}",
               self.select_metric)
        _check(self.select_metric == "valid_rmse" or self.ranking != "off",
               "train.select_metric", "valid_rmse while train.ranking is off (a ranking "
               "metric is computed only with --ranking final or every)", self.select_metric)


@dataclasses.dataclass(frozen=True)
class Config:
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    seed: int = 0                    # root seed: split draw (unless data.split_seed), init,
                                     # shuffling and dropout

    def __post_init__(self):
        _check(_is_seed(self.seed), "seed", "an integer in [0, 2**32)", self.seed)
        _check(self.optim.optimizer != "lbfgs" or self.train.batch_size == 0,
               "train.batch_size", "0 (full batch) with optim.optimizer lbfgs: its line "
               "search compares the objective at several points, which must be the same "
               "function", self.train.batch_size)
        _check(self.model.network != "glocal" or (
            self.train.batch_size == 0 and not self.train.shuffle and not self.data.parts),
            "train.batch_size, train.shuffle and data.parts", "0, false and none with "
            "model.network glocal (its convolution reads the whole matrix in row order: "
            "--batch-size 0 --shuffle false, or --preset glocal)",
            (self.train.batch_size, self.train.shuffle, self.data.parts))
        _check(self.train.early_stopping == 0 or self.data.valid_ratio > 0,
               "train.early_stopping", "0 unless data.valid_ratio > 0 (it watches "
               "validation RMSE; pass --valid-ratio 0.1)", self.train.early_stopping)
        _check(self.train.select == "last" or self.data.valid_ratio > 0, "train.select",
               "'last' unless data.valid_ratio > 0 (it picks by validation; pass "
               "--valid-ratio 0.1)", self.train.select)
        _check(self.train.cold_start != COLD_START_AUTO or (
            self.data.valid_ratio > 0 and not self.data.parts), "train.cold_start",
            "a rule other than 'auto' unless data.valid_ratio > 0 and no data.parts ('auto' "
            "chooses on validation: pass --valid-ratio 0.1)", self.train.cold_start)
        _check(self.train.rating_scaling == "none" or not self.data.parts,
               "train.rating_scaling", "'none' with data.parts (parts store unscaled "
               "ratings)", self.train.rating_scaling)
        _check(not self.train.retrain or self.selects_on_validation, "train.retrain",
               "false unless the run selects on validation (--select best or "
               "--early-stopping P, with --valid-ratio)", self.train.retrain)

    @property
    def selects_on_validation(self) -> bool:
        """Whether the run keeps the best validation epoch (early stopping or select best)."""
        return self.train.early_stopping > 0 or self.train.select == "best"

    @property
    def split_seed(self) -> int:
        return self.seed if self.data.split_seed is None else self.data.split_seed


GROUPS = ("data", "model", "optim", "train")


def replace(config: Config, **overrides) -> Config:
    """Returns `config` with fields replaced by name, e.g. replace(c, hidden=(64,), lr=0.01).

    Names are field names of any group (unique across groups) or "group.field".

    Raises:
      ConfigError: an unknown field name, or a value the field does not allow.
    """
    per_group: dict[str, dict] = {}
    top: dict = {}
    for name, value in overrides.items():
        group, field = locate_field(name)
        if group is None:
            top[field] = value
        else:
            per_group.setdefault(group, {})[field] = value
    groups = {g: dataclasses.replace(getattr(config, g), **f) for g, f in per_group.items()}
    return dataclasses.replace(config, **groups, **top)


def locate_field(name: str) -> tuple[str | None, str]:
    """Maps "hidden" or "model.hidden" to ("model", "hidden"); "seed" to (None, "seed")."""
    if "." in name:
        group, field = name.split(".", 1)
        if group in GROUPS and field in _field_names(group):
            return group, field
        raise ConfigError(f"unknown config field {name!r}")
    if name in {f.name for f in dataclasses.fields(Config)} - set(GROUPS):
        return None, name
    for group in GROUPS:
        if name in _field_names(group):
            return group, name
    raise ConfigError(f"unknown config field {name!r}")


def _field_names(group: str) -> set[str]:
    cls = {f.name: f for f in dataclasses.fields(Config)}[group].default_factory
    return {f.name for f in dataclasses.fields(cls)}


def to_dict(config: Config) -> dict:
    """The config as plain JSON-ready data (tuples become lists)."""
    return dataclasses.asdict(config)


def flatten(tree: dict, prefix: str = "") -> dict:
    """A nested dict (a config's `to_dict`, or JSON read back) keyed by dotted path:
    {"model": {"hidden": (500,)}} -> {"model.hidden": [500]}, tuples as lists, so that a
    config in memory and one read from JSON compare equal field by field."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = list(value) if isinstance(value, tuple) else value
    return flat


def config_from_dict(data: dict) -> Config:
    """The inverse of `to_dict`, also after a JSON round trip (lists become tuples again).

    Fields missing from `data` take their defaults.

    Raises:
      ConfigError: an unknown group or field, or a value the field does not allow.
    """
    groups, top = {}, {}
    for key, value in data.items():
        if key in GROUPS and isinstance(value, dict):
            for field in value:
                if field not in _field_names(key):
                    raise ConfigError(f"unknown config field {key + '.' + field!r}")
            cls = {f.name: f for f in dataclasses.fields(Config)}[key].default_factory
            groups[key] = cls(**{f: tuple(v) if isinstance(v, list) else v
                                 for f, v in value.items()})
        elif key in {f.name for f in dataclasses.fields(Config)} - set(GROUPS):
            top[key] = value
        else:
            raise ConfigError(f"unknown config field {key!r}")
    return Config(**groups, **top)


def d2l() -> Config:
    """The book's recipe: I-AutoRec, hidden 500, sigmoid, dropout 0.05, Adam 0.002, wd 1e-5."""
    return Config()


def tiny() -> Config:
    """A seconds-long run for tests: small hidden layer, few epochs, small batches, no
    ranking metrics (their compilation would double a tiny run's)."""
    return Config(model=ModelConfig(hidden=(16,), dropout=0.0),
                  train=TrainConfig(epochs=2, batch_size=32, eval_batch_size=64,
                                    ranking="off"))


def paper() -> Config:
    """The AutoRec paper's setup (Sedhain et al. 2015), on the book's data and split.

    I-AutoRec, sigmoid encoder, identity decoder, no dropout; the objective is the SSE over
    observed entries + lambda/2 (||W||^2 + ||V||^2), weights only (loss "sum", coupled decay
    on kernels); full-batch iRprop- (`optim.scale_by_rprop`); a cold-start rating is
    predicted as 3. lambda = 100 and hidden 300 were chosen on validation (`scripts/sweep.py
    --grid paper --preset paper --retrain false`, README "Honest protocol"); 10% of the
    training ratings are held out to pick the step count (early stopping), then the model
    is retrained on all of them.
    """
    return Config(model=ModelConfig(hidden=(300,), dropout=0.0),
                  optim=OptimConfig(optimizer="rprop", lr=0.001, weight_decay=100.0,
                                    decay_biases=False),
                  train=TrainConfig(loss="sum", batch_size=0, epochs=2000, early_stopping=50,
                                    retrain=True, cold_start="3"),
                  data=DataConfig(valid_ratio=0.1))


def honest() -> Config:
    """The best single I-AutoRec found, every choice made on validation (README "Honest
    protocol"): hidden 500 sigmoid, dropout 0.2, full-batch Adam lr 0.004, coupled weight
    decay 3e-5, predictions clipped to the rating range; early stopping on 10% of the
    training ratings (patience 30), then retraining on all of them for the chosen epochs;
    the test set is scored once."""
    return Config(model=ModelConfig(hidden=(500,), dropout=0.2),
                  optim=OptimConfig(lr=0.004, weight_decay=3e-5),
                  train=TrainConfig(batch_size=0, epochs=1500, early_stopping=30, retrain=True,
                                    clip_predictions=True),
                  data=DataConfig(valid_ratio=0.1))


def glocal() -> Config:
    """GLocal-K's setup for ML-100K (Han et al. 2021, usydnlp/Glocal_K): an I-AutoRec of kernel
    layers (2 x 500 sigmoid, identity output, d = 5, no dropout), lambda_2 20, lambda_s 0.006,
    the SSE (loss "sum"), full-batch L-BFGS (memory 10, restarted every 5 iterations as the
    reference's scipy calls are), predictions clipped; 150 pre-training and 300 fine-tuning
    L-BFGS iterations (the paper's 30 and 60 epochs of 5), a 3 x 3 global kernel of scale 1. Honest: 10% of the training ratings pick each stage's iteration count
    (early stopping, patience 25), then both stages are retrained on all of them.
    """
    return Config(model=ModelConfig(network="glocal", hidden=(500, 500), dropout=0.0,
                                    lambda_s=0.006, lambda_2=20.0,
                                    glocal_pretrain_epochs=150),
                  optim=OptimConfig(optimizer="lbfgs", weight_decay=0.0, lbfgs_restart=5),
                  train=TrainConfig(loss="sum", batch_size=0, shuffle=False, epochs=300,
                                    eval_batch_size=1 << 30, early_stopping=25,
                                    retrain=True, clip_predictions=True),
                  data=DataConfig(valid_ratio=0.1))


PRESETS = {"d2l": d2l, "tiny": tiny, "paper": paper, "honest": honest, "glocal": glocal}
