"""A compiled train step for a caller's own loop: `train.train_step` for any parallel mode."""

from __future__ import annotations

import functools
from typing import Callable

import jax

from autorec_jax.config import Config
from autorec_jax.distributed.parallel import Parallel
from autorec_jax.losses import LossFn
from autorec_jax.networks import resolve_model
from autorec_jax.train import GradTransform, TrainState, complete_batch, train_step


def make_train_step(config: Config, *, parallel: "str | Parallel" = "auto",
                    loss_fn: LossFn | None = None, grad_transform: GradTransform | None = None,
                    model=None, donate: bool = True) -> Callable:
    """A compiled `train_step` for the caller's own loop on the caller's own dense batches.

    Returns `step_fn(state, batch, rng) -> (state, metrics)`, a `jax.jit` function (it
    composes with vmap, scan and jit): `batch` holds "ratings" float32 [B, N] and optionally
    "mask", "row_mask", "weights" and other [B, ...] fields (see `compute_grads`), on the
    host or on a device; under pmap or sharded the compiled function fills in and splits
    its rows over the devices itself (padding with no-op rows), on the device, so the loop
    never branches on the mode. Place the state once with
    `step_fn.parallel.replicate(state, row_width=N)` (N: a row's width; with a model axis
    it splits the N-sized axes). With `donate`, the old state is deleted by each call: never
    reuse it. `model` (a Flax module or a function (config.model, N) -> module, see
    `autorec_jax.networks`) replaces the state's `apply_fn`; without it the step runs the
    module the state was created with (`create_train_state(..., model=)`).
    """
    parallel = Parallel.create(parallel, config.train.model_parallel)
    compiled = parallel.compile(
        functools.partial(train_step, config=config, loss_fn=loss_fn,
                          grad_transform=grad_transform),
        in_axes=(None, 0, None), donate_argnums=(0,) if donate else ())

    def step(state: TrainState, batch: dict, rng: jax.Array) -> tuple[TrainState, dict]:
        if model is not None:
            width = jax.numpy.shape(batch["ratings"])[1]
            state = state.replace(apply_fn=resolve_model(config, width, model).apply)
        return compiled(state, parallel.split_rows(complete_batch(batch)), rng)

    step_fn = jax.jit(step, donate_argnums=(0,) if donate else ())
    step_fn.parallel = parallel
    return step_fn
