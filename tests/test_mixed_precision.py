"""Mixed-precision matmul: bf16 operands and float32 products in both passes."""

import functools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autorec_jax import config as config_lib
from autorec_jax.mixed_precision import low_precision_matmul
from autorec_jax.distributed.parallel import Parallel
from autorec_jax.train import complete_batch, create_train_state, train_step


def _bf16(a) -> np.ndarray:
    """NumPy rounding to bfloat16 (round to nearest even), back in float64."""
    return np.asarray(a, np.float32).astype(jnp.bfloat16).astype(np.float64)


def _data(b=6, k=40, n=9):
    rng = np.random.default_rng(0)
    return (rng.normal(size=(b, k)).astype(np.float32),
            rng.normal(size=(k, n)).astype(np.float32),
            rng.normal(size=(b, n)).astype(np.float32))


@pytest.mark.parametrize("compile_", [False, True])
def test_forward_and_gradients_equal_numpy_on_bf16_rounded_operands(compile_):
    x, k, dy = _data()
    fn = jax.jit(low_precision_matmul) if compile_ else low_precision_matmul
    y, vjp = jax.vjp(fn, jnp.asarray(x), jnp.asarray(k))
    dx, dk = vjp(jnp.asarray(dy))
    assert y.dtype == dx.dtype == dk.dtype == jnp.float32
    np.testing.assert_allclose(y, _bf16(x) @ _bf16(k), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, _bf16(dy) @ _bf16(k).T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dk, _bf16(x).T @ _bf16(dy), rtol=1e-5, atol=1e-5)
    # ... and these differ from float32's products: the operands really were rounded.
    assert np.abs(np.asarray(dk) - x.astype(np.float64).T @ dy).max() > 1e-4


def test_gradients_are_not_rounded_to_bf16():
    """float32 accumulation: the kernel gradient keeps more than bf16's 8 mantissa bits."""
    x, k, dy = _data(b=64)
    _, vjp = jax.vjp(low_precision_matmul, jnp.asarray(x), jnp.asarray(k))
    _, dk = vjp(jnp.asarray(dy))
    dk = np.asarray(dk)
    assert np.any(dk != _bf16(dk))


def _dot_operand_types(hlo: str) -> list[tuple[str, ...]]:
    """The element types of each dot's operands in compiled HLO text: a dot XLA:CPU cannot
    run in bf16 gets float32 operands (converted from bf16 next to it)."""
    types = dict(re.findall(r"(%[\w.-]+) = (\w+)\[", hlo))
    return [tuple(types[name] for name in re.findall(r"%[\w.-]+", operands))
            for operands in re.findall(r"= \w+\[[^\]]*\]\S* dot\(([^)]*)\)", hlo)]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's lowering")
def test_every_matmul_of_a_train_step_runs_in_bf16_on_cpu():
    """Guards the point of the module: JAX's own derivative of a bf16 dot leaves XLA:CPU
    its backward dots in float32; ours none."""
    config = config_lib.replace(config_lib.tiny(), compute_dtype="bfloat16", hidden=(16,),
                                parallel="jit")
    state = create_train_state(config, 24, jax.random.key(0))
    ratings = jnp.asarray(np.random.default_rng(0).integers(0, 6, (8, 24)), jnp.float32)
    step = jax.jit(functools.partial(train_step, config=config))
    hlo = step.lower(state, complete_batch({"ratings": ratings}),
                     jax.random.key(1)).compile().as_text()
    dots = _dot_operand_types(hlo)
    assert len(dots) >= 5  # 2 forward, 3 backward (the input's gradient is not needed)
    assert all(types == ("bf16", "bf16") for types in dots), dots


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU's lowering")
def test_naive_bf16_derivative_does_upcast_on_cpu():
    """The parser finds the float32 dots it guards against (JAX's derivative of a bf16 dot)."""
    x, k, dy = _data(b=64, k=96, n=48)

    def naive(x, k):
        return jax.lax.dot_general(x.astype(jnp.bfloat16), k.astype(jnp.bfloat16),
                                   (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)

    def loss(fn):
        return jax.jit(jax.grad(lambda x, k: jnp.sum(fn(x, k) * dy), argnums=(0, 1)))

    def types(fn):
        return set(_dot_operand_types(loss(fn).lower(x, k).compile().as_text()))

    assert ("f32", "f32") in types(naive)
    assert types(low_precision_matmul) == {("bf16", "bf16")}


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices")
@pytest.mark.parametrize("parallel, model", [("pmap", 1), ("sharded", 1), ("sharded", 2)])
def test_bf16_steps_agree_across_parallel_modes(parallel, model):
    """bf16 rounds each operand elementwise, so splitting rows (or N) over devices changes
    only the float32 summation order: the params agree with jit's to float32 round-off
    while they differ from float32 training's by far more."""
    from test_sharded import rows_24, run_steps
    from test_train import toy_config
    config = config_lib.replace(toy_config(lr=0.3, hidden=(6,)), compute_dtype="bfloat16",
                                model_parallel=model)
    rows = rows_24()
    jit_params = jax.device_get(run_steps(config, Parallel.create("jit"), rows)[0].params)
    params = jax.device_get(run_steps(config, Parallel.create(parallel, model), rows)[0].params)
    f32_params = jax.device_get(run_steps(config_lib.replace(config, compute_dtype="float32",
                                                             model_parallel=1),
                                          Parallel.create("jit"), rows)[0].params)
    chex.assert_trees_all_close(params, jit_params, atol=2e-6, rtol=0)
    gap = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()),
                                           jit_params, f32_params)))
    assert gap > 1e-5  # 5x the tolerance above
