"""The compiled calls are plain jax.jit functions (they compose with vmap, scan and a caller's
jit), compile time comes from JAX's monitoring events, and the device layout holds: model-
sharded params stay sharded through evaluation and setup, batches split on the device."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autorec_jax.run import experiment as experiment_lib
from autorec_jax import config as config_lib
from autorec_jax.distributed import placement
from autorec_jax.data.ratings import to_dense
from autorec_jax.run.experiment import evaluate, run_epoch, setup
from autorec_jax.distributed.parallel import MODEL_AXIS, Parallel
from autorec_jax.train import create_train_state
from autorec_jax.distributed.steps import make_train_step
from synthetic import random_ratings
from test_sharded import rows_24
from test_train import toy_config

needs_8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices")
MODES = ["jit", pytest.param("sharded", marks=needs_8)]


def ratings_24():
    """24 users (the row width N of item rows: divisible by 2 and 4), 40 items."""
    return random_ratings(num_users=24, num_items=40, density=0.3, seed=2)


def like(template, state):
    """`state` with the static fields of `template`: one pytree structure, one compile."""
    return state.replace(apply_fn=template.apply_fn, tx=template.tx)


def stack(trees):
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def member(tree, k):
    return jax.tree.map(lambda x: x[k], tree)


def close(a, b):
    """Leaf by leaf (train states' static fields aside), to float32 rounding."""
    chex.assert_trees_all_close(jax.device_get(jax.tree.leaves(a)),
                                jax.device_get(jax.tree.leaves(b)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_step_epoch_and_evaluator_compose_with_vmap_scan_and_jit(mode):
    config = toy_config(lr=0.3, batch_size=12, parallel=mode)
    rows = rows_24()
    dense = to_dense(rows)
    step = make_train_step(config, parallel=mode)
    rng = jax.random.key(5)
    template = create_train_state(config, rows.num_cols, rng)

    def fresh(seed):  # a new state per call (each call donates its state), one structure
        return step.parallel.replicate(like(template, create_train_state(
            config, rows.num_cols, jax.random.key(seed))), rows.num_cols)

    batches = jnp.asarray(np.stack([dense[np.random.default_rng(i).permutation(
        rows.num_rows)[:12]] for i in range(2)]))
    alone = [step(fresh(seed), {"ratings": batches[0]}, rng) for seed in (0, 1)]
    # vmap: two models (two seeds) in one call; each member equals the model alone.
    both = jax.vmap(step, in_axes=(0, None, None))(stack([fresh(0), fresh(1)]),
                                                   {"ratings": batches[0]}, rng)
    for k in (0, 1):
        close(member(both, k), alone[k])
    # scan over two batches equals two calls; a caller's jit equals the call.
    looped, _ = step(alone[0][0], {"ratings": batches[1]}, rng)
    scanned, _ = jax.lax.scan(lambda s, b: step(s, {"ratings": b}, rng), fresh(0), batches)
    close(scanned.params, looped.params)
    close(jax.jit(step)(fresh(1), {"ratings": batches[0]}, rng), alone[1])

    # The epoch and the evaluator of a run, the same way.
    experiment, template = setup(config, ratings_24())
    parallel = experiment.parallel
    plan = np.arange(24, dtype=np.int32).reshape(2, 12) % experiment.num_rows
    data, index = placement.epoch_data(experiment.placed, experiment.data, parallel,
                                       parallel.shard(plan))
    epoch, srng = experiment.train_epoch_fn, experiment.step_rng

    def state_of(seed):
        return parallel.replicate(like(template, create_train_state(
            config, experiment.row_width, jax.random.key(seed))), experiment.row_width)

    epoch_alone = [epoch(state_of(seed), data, index, srng) for seed in (0, 1)]
    epoch_both = jax.vmap(epoch, in_axes=(0, None, None, None))(
        stack([state_of(0), state_of(1)]), data, index, srng)
    for k in (0, 1):
        close(member(epoch_both, k), epoch_alone[k])
    close(jax.jit(epoch)(state_of(1), data, index, srng), epoch_alone[1])
    twice, _ = epoch(epoch_alone[0][0], data, index, srng)
    scanned, _ = jax.lax.scan(lambda s, _: (epoch(s, data, index, srng)[0], None),
                              state_of(0), None, length=2)
    close(scanned.params, twice.params)

    heldout, eval_index = experiment.placed.heldout["test"], experiment.placed.eval_index
    params = [twice.params, epoch_alone[1][0].params]  # (epoch_alone[0] was donated)
    sums = [experiment.eval_fn(p, heldout, eval_index) for p in params]
    vmapped = jax.vmap(experiment.eval_fn, in_axes=(0, None, None))
    close(vmapped(stack(params), heldout, eval_index), stack(sums))
    close(jax.lax.scan(lambda c, p: (c, experiment.eval_fn(p, heldout, eval_index)), None,
                       stack(params))[1], stack(sums))
    close(jax.jit(experiment.eval_fn)(params[1], heldout, eval_index), sums[1])
    assert float(jnp.sum(sums[0]["count"])) > 0  # the comparison is not vacuous


def test_compile_seconds_count_a_first_epoch_and_nothing_for_a_repeat():
    ratings = random_ratings(num_users=30, num_items=50, seed=3)
    experiment, state = setup(toy_config(), ratings)
    assert experiment.compile_seconds == 0.0
    index = np.arange(16, dtype=np.int32).reshape(2, 8)
    state, _ = run_epoch(experiment, state, index)
    first = experiment.compile_seconds
    assert first > 0
    state, metrics = run_epoch(experiment, state, index[::-1].copy())  # same shapes
    assert experiment.compile_seconds == first
    evaluate(experiment, state.params)
    assert experiment.compile_seconds > first  # the evaluator's compile counts too
    from jax._src import monitoring  # the clock's listener is gone after each call
    assert experiment.compile_clock._listen not in monitoring.get_event_time_span_listeners()
    assert metrics["loss"].shape == (2,)


@needs_8
def test_evaluate_keeps_model_sharded_params_on_the_model_axis():
    config = toy_config(optimizer="adam", lr=0.01, parallel="sharded", model_parallel=2)
    experiment, state = setup(config, ratings_24())
    assert (experiment.parallel.data_size, experiment.parallel.model) == (4, 2)
    seen = []

    def spy(params, data, index):
        seen.append(params)
        return experiment.eval_fn(params, data, index)

    spied = dataclasses.replace(experiment, eval_fn=spy)
    scores = evaluate(spied, state.params, ("test",))
    # As load_run gives them: on one device.
    one_device = jax.device_put(jax.device_get(state.params), jax.devices()[0])
    scores_moved = evaluate(spied, one_device, ("test",))
    n = experiment.row_width
    for params in seen:
        kernel = params["hidden_0"]["kernel"]
        assert tuple(kernel.sharding.spec)[:1] == (MODEL_AXIS,)
        assert kernel.addressable_shards[0].data.shape == (n // 2, 6)
        assert params["output"]["bias"].addressable_shards[0].data.shape == (n // 2,)
    assert seen[0]["hidden_0"]["kernel"] is state.params["hidden_0"]["kernel"]  # went in
    # Placed device to device: a host round trip would upload the host copy again. (The
    # CPU's device-to-host guard does not fire: its buffers are host memory already.)
    with jax.transfer_guard_host_to_device("disallow"):
        placed = experiment.parallel.replicate(one_device, row_width=n)
    assert tuple(placed["output"]["kernel"].sharding.spec) == (None, MODEL_AXIS)
    jit_experiment, _ = setup(config_lib.replace(config, parallel="jit", model_parallel=1),
                              ratings_24())
    expected = evaluate(jit_experiment, jax.device_get(state.params), ("test",))
    for got in (scores, scores_moved):
        assert got["test"]["rmse"] == pytest.approx(expected["test"]["rmse"], rel=1e-6)
        assert got["test"]["count"] == expected["test"]["count"] > 0


@needs_8
def test_setup_builds_the_state_under_jit_in_its_sharded_layout(monkeypatch):
    traced = []

    def create(config, num_outputs, rng, **kwargs):
        traced.append(isinstance(rng, jax.core.Tracer))
        return create_train_state(config, num_outputs, rng, **kwargs)

    monkeypatch.setattr(experiment_lib, "create_train_state", create)
    config = toy_config(optimizer="adam", lr=0.01, parallel="sharded", model_parallel=2)
    experiment, state = setup(config, ratings_24())
    assert traced and all(traced)  # never built eagerly on one device
    n = experiment.row_width
    expected = create_train_state(config, n, jax.random.split(jax.random.key(config.seed),
                                                              3)[0])
    close(state.params, expected.params)
    kernel = state.params["hidden_0"]["kernel"]
    assert tuple(kernel.sharding.spec)[:1] == (MODEL_AXIS,)
    assert kernel.addressable_shards[0].data.shape == (n // 2, 6)
    assert tuple(state.params["output"]["kernel"].sharding.spec) == (None, MODEL_AXIS)
    moments = [x for x in jax.tree.leaves(state.opt_state) if x.shape == (n, 6)]
    assert len(moments) == 2  # Adam's mu and nu of V, split the same way
    assert all(x.addressable_shards[0].data.shape == (n // 2, 6) for x in moments)
    # H-sized: replicated.
    assert tuple(state.params["hidden_0"]["bias"].sharding.spec) in ((), (None,))


@needs_8
def test_sharded_step_splits_a_device_batch_without_pulling_it_to_the_host():
    config = toy_config(lr=0.3, hidden=(6,))
    rows = rows_24()
    dense = to_dense(rows)
    index = [np.random.default_rng(i).permutation(rows.num_rows)[:30] for i in range(3)]
    results = []
    for parallel in (Parallel.create("jit"), Parallel.create("sharded", model=2)):
        step = make_train_step(config, parallel=parallel)
        state = parallel.replicate(create_train_state(config, rows.num_cols,
                                                      jax.random.key(0)), rows.num_cols)
        rng = jax.random.key(5)
        for k, i in enumerate(index):
            batch = {"ratings": jnp.asarray(dense[i]), "row_mask": jnp.arange(30) < 28}
            # After a warm-up, nothing goes up from the host: the batch is on a device and
            # is completed and split there (a host round trip would upload it again).
            with jax.transfer_guard_host_to_device("disallow" if k else "allow"):
                state, metrics = step(state, batch, rng)
        results.append((jax.device_get(state.params), jax.device_get(metrics)))
    close(results[1][0], results[0][0])
    assert results[1][1]["rows"] == results[0][1]["rows"] == 28
    assert results[1][1]["loss"] == pytest.approx(results[0][1]["loss"], rel=1e-5)
