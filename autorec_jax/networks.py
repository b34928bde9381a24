"""The model seam: which Flax module a run trains, and the contract such a module honours.

`model=` (of `create_train_state`, `setup`, `train_and_evaluate`, `make_train_step`,
`train_ensemble`, `run_protocol`, `load_run`, ...) takes:
  - None: the network `config.model.network` names (`model.AutoRec` for "autorec", the
    kernelised AutoRec of `kernel.py` for "kernel", GLocal-K's fine-tuning network of
    `glocal_k.py` for "glocal"), built from `config.model`;
  - a Flax Linen module whose rows are N wide (its `num_outputs`, when it has one, must be N);
  - a function `(config.model, N) -> module`, called once per run with the row width.

The contract a module honours (`model.AutoRec` is the reference):
  - `module(ratings_BxN, *, train, row_ids=None) -> pred_BxN`: float32 [B, N] ratings in
    (0 = unobserved), the reconstruction out; evaluation, recommendation and prediction
    call it with `train=False`.
  - optionally `module.forward(ratings_BxN, *, train, row_ids=None) -> (pred_BxN, hidden)`,
    `hidden` a tuple of [B, H_i] activations that a loss reads (`ModelOutputs.hidden`);
    without it the training pass calls `module(...)` and `hidden` is ().
  - randomness (dropout) only from the "dropout" rng stream, which training provides;
    `row_ids` (int [B], each row's batch position) only where a row's randomness must be
    reproducible alone (`research.per_row_grads`); a module may leave it out of its
    signature.
  - params initialised by `module.init({"params": rng}, zeros [1, N], train=False)`.
  - a module that reads the whole rating matrix at once, rows in index order (its class
    sets `reads_whole_matrix = True`, as GLocal-K's convolution and pooling need), is
    given every row in one block by inference (`reads_whole_matrix`), which then picks
    the rows asked for; its training needs `train.batch_size` 0 and `train.shuffle` off.
  - sharded mode with a model axis (`train.model_parallel` > 1) splits every parameter
    axis whose size is N over that axis and replicates the rest; a module whose N-sized
    axes cannot be split so must run with `model_parallel` 1.
A run folder records the module's identity (`identity`), and `--resume` or `load_run` with
another module is refused.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from autorec_jax.errors import ConfigError

PyTree = Any


def builtin_model(model_config, num_outputs: int) -> nn.Module:
    """The module `model_config.network` names, for rows of width N = num_outputs."""
    network = getattr(model_config, "network", "autorec")
    if network == "kernel":
        from autorec_jax.kernel import create_kernel_model
        return create_kernel_model(model_config, num_outputs)
    if network == "glocal":
        from autorec_jax.glocal_k import create_glocal_model
        return create_glocal_model(model_config, num_outputs)
    from autorec_jax.model import create_model
    return create_model(model_config, num_outputs)


def resolve_model(config, num_outputs: int, model=None) -> nn.Module:
    """The module a run with `config` (a Config or its ModelConfig) trains on rows of width N.

    Raises:
      ConfigError: `model` is neither a Flax module nor a function returning one, or its
        `num_outputs` is not N.
    """
    model_config = getattr(config, "model", config)
    if model is None:
        return builtin_model(model_config, num_outputs)
    module = model
    if not isinstance(model, nn.Module):
        if not callable(model):
            raise ConfigError(f"model must be a flax.linen.Module or a function "
                              f"(config.model, N) -> Module, got {type(model).__name__}")
        module = model(model_config, num_outputs)
        if not isinstance(module, nn.Module):
            raise ConfigError(f"model function {_name(model)} returned "
                              f"{type(module).__name__}, not a flax.linen.Module")
    width = getattr(module, "num_outputs", num_outputs)
    if width != num_outputs:
        raise ConfigError(f"model {type(module).__name__} has num_outputs={width} but the "
                          f"data's rows are {num_outputs} wide")
    return module


def init_params(module: nn.Module, rng: jax.Array, num_outputs: int) -> PyTree:
    """Fresh params for rows of width N; the module's output must be [1, N] for a [1, N] row.

    Raises:
      ConfigError: the module maps a [1, N] row to another shape.
    """
    dummy = jnp.zeros((1, num_outputs), jnp.float32)
    out = jax.eval_shape(lambda: module.init_with_output({"params": rng}, dummy,
                                                         train=False)[0])
    if out.shape != (1, num_outputs):
        raise ConfigError(f"model {type(module).__name__} maps a [1, {num_outputs}] row to "
                          f"{list(out.shape)}; it must reconstruct the row ([1, "
                          f"{num_outputs}])")
    return module.init({"params": rng}, dummy, train=False)["params"]


def check_params_like(params: PyTree, reference: PyTree) -> PyTree:
    """`params` as float arrays, after checking that they have `reference`'s tree, shapes and
    dtypes (one line naming the first difference).

    Raises:
      ConfigError: another tree structure, or a leaf of another shape or dtype.
    """
    got, want = jax.tree.structure(params), jax.tree.structure(reference)
    if got != want:
        raise ConfigError(f"initial params have the tree {got}, the model's params {want}")
    for path, leaf, ref in zip(jax.tree_util.tree_leaves_with_path(params),
                               jax.tree.leaves(params), jax.tree.leaves(reference)):
        if jnp.shape(leaf) != ref.shape or jnp.result_type(leaf) != ref.dtype:
            raise ConfigError(f"initial params {jax.tree_util.keystr(path[0])} are "
                              f"{jnp.result_type(leaf)} {list(jnp.shape(leaf))}, the model's "
                              f"{ref.dtype} {list(ref.shape)}")
    return jax.tree.map(jnp.asarray, params)


def forward(module: nn.Module, ratings_BxN: jax.Array, *, train: bool,
            row_ids: jax.Array | None = None) -> tuple[jax.Array, tuple]:
    """The training pass as `apply(..., method=forward)`: (pred [B, N], hidden tuple)."""
    kwargs = {"train": train}
    if row_ids is not None and accepts_row_ids(module):
        kwargs["row_ids"] = row_ids
    if callable(getattr(type(module), "forward", None)):
        pred, hidden = module.forward(ratings_BxN, **kwargs)
        return pred, tuple(hidden)
    return module(ratings_BxN, **kwargs), ()


def reads_whole_matrix(module: nn.Module) -> bool:
    """Whether the module reads the whole rating matrix at once, rows in index order (its
    class attribute `reads_whole_matrix`): inference then reconstructs every row in one
    block and picks the rows asked for."""
    return bool(getattr(type(module), "reads_whole_matrix", False))


def accepts_row_ids(module: nn.Module) -> bool:
    """Whether the module's training pass takes `row_ids` (see the contract)."""
    method = getattr(type(module), "forward", None) or type(module).__call__
    parameters = inspect.signature(method).parameters
    return "row_ids" in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def identity(module: nn.Module) -> dict:
    """What a run folder records of the module: its class and its fields, as text."""
    cls = type(module)
    # dataclasses.fields leaves out class attributes (ClassVar, e.g. `reads_whole_matrix`).
    names = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
    fields = {name: repr(getattr(module, name)) for name in names
              if name not in ("parent", "name")}
    return {"class": f"{cls.__module__}.{cls.__qualname__}", "fields": fields}


def check_same(recorded: dict | None, module: nn.Module, where: str) -> None:
    """Refuses a module other than the one `recorded` (an `identity`) names.

    Raises:
      ConfigError: the class, or a field, differs; one line naming it and `where`.
    """
    if recorded is None:
        return
    now = identity(module)
    if recorded.get("class") != now["class"]:
        raise ConfigError(f"{where} was made with model {recorded.get('class')}, not "
                          f"{now['class']}; pass model= the module it was made with")
    old = recorded.get("fields", {})
    for field in dict.fromkeys([*old, *now["fields"]]):
        if old.get(field) != now["fields"].get(field):
            raise ConfigError(f"{where} was made with model {now['class']} with {field}="
                              f"{old.get(field, '<absent>')}, now "
                              f"{now['fields'].get(field, '<absent>')}")


def _name(fn) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)
