"""Checkpoints: bit-exact round trips (one device and a mesh), retention, integrity checks,
crash leftovers, run identity, and load_run."""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from orbax.checkpoint import v1 as ocp

from autorec_jax import config as config_lib
from autorec_jax.data.ratings import data_fingerprint
from autorec_jax.run import checkpoint
from autorec_jax.serve.load import load_run
from autorec_jax.errors import CheckpointError
from autorec_jax.train import TrainState, create_train_state

NUM_OUTPUTS = 40


def _trained_state(config=None, steps=3):
    """A TrainState after a few jitted optimiser steps, so step and opt_state are arrays."""
    config = config or config_lib.tiny()
    state = create_train_state(config, num_outputs=NUM_OUTPUTS, rng=jax.random.key(0))
    x_BxN = jax.random.uniform(jax.random.key(1), (8, NUM_OUTPUTS))

    @jax.jit
    def step(state):
        def loss(params):
            return jnp.sum((state.apply_fn({"params": params}, x_BxN, train=False) - x_BxN) ** 2)
        return state.apply_gradients(grads=jax.grad(loss)(state.params))

    for _ in range(steps):
        state = step(state)
    return state


def _loop(epoch, shuffle=None):
    shuffle = shuffle or np.random.default_rng(0)
    return {"epoch": epoch, "shuffle_state": shuffle.bit_generator.state, "carry": [3, 1],
            "best": {"epoch": 1, "valid_rmse": 0.9123456789012345}, "history_len": epoch}


def _abstract(state):
    return jax.tree.map(ocp.arrays.to_shape_dtype_struct, state)


def _assert_bit_identical(restored, state):
    # apply_fn and tx are static fields taken from the target, so compare the leaves by path.
    assert type(restored) is TrainState
    paths, leaves = zip(*jax.tree.leaves_with_path(restored))
    expected_paths, expected = zip(*jax.tree.leaves_with_path(state))
    assert paths == expected_paths
    chex.assert_trees_all_equal_dtypes(leaves, expected)
    chex.assert_trees_all_equal(leaves, expected)


def test_relative_folders_work(tmp_path, monkeypatch):
    # `--out runs/x` is relative; Orbax itself accepts only absolute paths.
    monkeypatch.chdir(tmp_path)
    state = _trained_state()
    checkpoint.save("run", 1, state, _loop(1))
    _assert_bit_identical(checkpoint.restore("run", 1, _abstract(state))[0], state)
    checkpoint.save_params("run/model", state.params)
    chex.assert_trees_all_equal(checkpoint.load_params("run/model"), state.params)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_restore_trained_state_is_bit_identical(tmp_path, optimizer):
    config = config_lib.replace(config_lib.tiny(), optimizer=optimizer, momentum=0.9)
    state = _trained_state(config)
    assert int(state.step) == 3
    checkpoint.save(tmp_path, 1, state, _loop(1))
    restored, loop = checkpoint.restore(tmp_path, 1, _abstract(_trained_state(config, 1)))
    _assert_bit_identical(restored, state)
    assert loop == _loop(1)
    # A fresh state's step is a Python int; the restored leaf follows the target's type.
    fresh = create_train_state(config, num_outputs=NUM_OUTPUTS, rng=jax.random.key(7))
    restored, _ = checkpoint.restore(tmp_path, 1, _abstract(fresh))
    assert restored.step == 3
    chex.assert_trees_all_equal((restored.params, restored.opt_state),
                                (state.params, state.opt_state))


def test_restore_onto_mesh_keeps_the_targets_replicated_sharding(tmp_path):
    if jax.device_count() < 2:
        pytest.skip("needs several devices")
    replicated = NamedSharding(Mesh(np.array(jax.devices()), ("devices",)), P())
    state = jax.device_put(_trained_state(), replicated)
    checkpoint.save(tmp_path, 2, state, _loop(2))
    restored, _ = checkpoint.restore(tmp_path, 2, _abstract(state))
    _assert_bit_identical(restored, state)
    for leaf in jax.tree.leaves(restored):
        assert leaf.sharding == replicated
    # The same checkpoint restores onto one device when the target says so.
    single = _trained_state(steps=1)
    restored, _ = checkpoint.restore(tmp_path, 2, _abstract(single))
    _assert_bit_identical(restored, state)
    assert restored.params["output"]["bias"].sharding == single.params["output"]["bias"].sharding


def test_shuffle_generator_state_round_trips_exactly(tmp_path):
    shuffle = np.random.default_rng(12345)
    shuffle.permutation(1000)
    saved_state = shuffle.bit_generator.state
    assert saved_state["state"]["state"] > 2 ** 64  # beyond float and int64 precision
    checkpoint.save(tmp_path, 1, _trained_state(steps=0), _loop(1, shuffle))
    _, loop = checkpoint.restore(tmp_path, 1, _abstract(_trained_state(steps=0)))
    assert loop["shuffle_state"] == saved_state
    resumed = np.random.default_rng()
    resumed.bit_generator.state = loop["shuffle_state"]
    np.testing.assert_array_equal(resumed.permutation(1000), shuffle.permutation(1000))


def test_save_keeps_last_k_and_best_and_drops_an_abandoned_future(tmp_path):
    state = _trained_state(steps=0)
    for epoch in range(1, 7):
        checkpoint.save(tmp_path, epoch, state, _loop(epoch), keep=2, best_epoch=2)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "5", "6"]
    assert checkpoint.latest(tmp_path) == 6
    # Resumed from epoch 5 and saved 4 again: 5 and 6 belong to an abandoned trajectory.
    checkpoint.save(tmp_path, 4, state, _loop(4), keep=3, best_epoch=2)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2", "4"]
    assert checkpoint.latest(tmp_path) == 4


def _largest_array_file(folder):
    return max((p for p in (folder / "state").rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)


def _truncate(path):
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


@pytest.mark.parametrize("damage, reason", [
    (lambda f: _truncate(_largest_array_file(f)), "does not match its checksum"),
    (lambda f: _largest_array_file(f).unlink(), "is missing"),
    (lambda f: (f / "loop.json").write_text("{not json"), "loop.json does not match"),
    (lambda f: (f / "manifest.json").unlink(), "manifest.json is missing"),
    (lambda f: (f / "manifest.json").write_text("garbage"), "manifest.json is unreadable"),
    (lambda f: (f / "state" / "extra").write_text("x"), "unexpected file state/extra"),
], ids=["truncated_array", "deleted_array", "garbage_loop_json", "no_manifest",
        "garbage_manifest", "extra_file"])
def test_damaged_checkpoint_is_refused_in_one_line(tmp_path, damage, reason):
    state = _trained_state()
    folder = checkpoint.save(tmp_path, 3, state, _loop(3))
    checkpoint.restore(tmp_path, 3, _abstract(state))  # intact: fine
    damage(folder)
    with pytest.raises(CheckpointError, match=reason) as info:
        checkpoint.restore(tmp_path, 3, _abstract(state))
    assert str(folder) in str(info.value) and "\n" not in str(info.value)


def test_restore_into_a_mismatched_target_is_refused_in_one_line(tmp_path):
    checkpoint.save(tmp_path, 1, _trained_state(), _loop(1))
    other = create_train_state(config_lib.tiny(), num_outputs=NUM_OUTPUTS + 1,
                               rng=jax.random.key(0))
    with pytest.raises(CheckpointError, match=r"opt_state.1.mu.hidden_0.kernel is float32"
                       r"\[40, 16\] in the checkpoint but float32\[41, 16\] in the target") as info:
        checkpoint.restore(tmp_path, 1, _abstract(other))
    assert "\n" not in str(info.value)
    # Orbax would cast a dtype silently.
    half = jax.tree.map(lambda a: a.astype(jnp.bfloat16), _trained_state().params)
    with pytest.raises(CheckpointError, match=r"params.hidden_0.bias is float32\[16\] in the "
                       r"checkpoint but bfloat16\[16\] in the target"):
        checkpoint.restore(tmp_path, 1, _abstract(_trained_state().replace(params=half)))
    with pytest.raises(CheckpointError, match="params.extra is absent in the checkpoint"):
        bigger = _trained_state()
        bigger = bigger.replace(params={**bigger.params, "extra": jnp.zeros(3)})
        checkpoint.restore(tmp_path, 1, _abstract(bigger))
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        checkpoint.restore(tmp_path, 9, _abstract(other))


def _crash_on_rename_to(monkeypatch, name):
    real_rename = os.rename

    def rename(src, dst):
        if os.path.basename(dst) == name:
            raise KeyboardInterrupt("simulated kill")
        real_rename(src, dst)
    monkeypatch.setattr(os, "rename", rename)


def test_crash_mid_save_leaves_the_old_set_and_latest_cleans_up(tmp_path, monkeypatch):
    state = _trained_state()
    checkpoint.save(tmp_path, 1, state, _loop(1))
    with monkeypatch.context() as patch:
        _crash_on_rename_to(patch, "2")
        with pytest.raises(KeyboardInterrupt):
            checkpoint.save(tmp_path, 2, state, _loop(2))
    assert any(n.startswith(".partial-2") for n in os.listdir(tmp_path / "checkpoints"))
    # A partial folder under the real name, without manifest, is not complete either.
    ocp.save(tmp_path / "checkpoints" / "3" / "state", state)
    assert checkpoint.latest(tmp_path) == 1
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "3"]


def test_crash_mid_replacement_brings_the_old_copy_back(tmp_path, monkeypatch):
    state = _trained_state()
    checkpoint.save(tmp_path, 1, state, _loop(1))
    with monkeypatch.context() as patch:
        _crash_on_rename_to(patch, "1")  # the old copy is moved aside, the new one never lands
        with pytest.raises(KeyboardInterrupt):
            checkpoint.save(tmp_path, 1, _trained_state(steps=5), _loop(1))
    assert "1" not in os.listdir(tmp_path / "checkpoints")
    assert checkpoint.latest(tmp_path) == 1
    assert os.listdir(tmp_path / "checkpoints") == ["1"]
    restored, _ = checkpoint.restore(tmp_path, 1, _abstract(state))
    _assert_bit_identical(restored, state)


def test_run_identity_refuses_another_config_or_other_data(tmp_path):
    config = config_lib.tiny()
    ratings = np.array([[1, 2, 4.0], [2, 3, 5.0]])
    fingerprint = data_fingerprint(ratings, np.arange(3))
    checkpoint.write_run_identity(tmp_path, config_lib.to_dict(config), fingerprint)
    checkpoint.check_run_identity(tmp_path, config_lib.to_dict(config), fingerprint)
    longer = config_lib.replace(config, epochs=config.train.epochs + 5, eval_every=2)
    checkpoint.check_run_identity(tmp_path, config_lib.to_dict(longer), fingerprint)
    wider = config_lib.replace(config, hidden=(32,))
    with pytest.raises(CheckpointError, match=r"model\.hidden was \[16\], now \[32\]"):
        checkpoint.check_run_identity(tmp_path, config_lib.to_dict(wider), fingerprint)
    with pytest.raises(CheckpointError, match="the data differ"):
        checkpoint.check_run_identity(tmp_path, config_lib.to_dict(config),
                                      data_fingerprint(ratings[:1], np.arange(3)))
    with pytest.raises(CheckpointError, match="run.json: missing"):
        checkpoint.check_run_identity(tmp_path / "elsewhere", config_lib.to_dict(config),
                                      fingerprint)


def test_a_run_recorded_before_a_field_existed_resumes_with_its_default(tmp_path):
    config = config_lib.tiny()
    recorded = config_lib.to_dict(config)
    del recorded["train"]["cold_start"], recorded["model"]["input_dropout"]
    checkpoint.write_run_identity(tmp_path, recorded, "f")
    checkpoint.check_run_identity(tmp_path, config_lib.to_dict(config), "f")
    with pytest.raises(CheckpointError, match="train.cold_start was 'network', now '3'"):
        checkpoint.check_run_identity(
            tmp_path, config_lib.to_dict(config_lib.replace(config, cold_start="3")), "f")
    recorded["train"]["retired_field"] = 1
    checkpoint.write_run_identity(tmp_path, recorded, "f")
    with pytest.raises(CheckpointError, match="train.retired_field was 1"):
        checkpoint.check_run_identity(tmp_path, config_lib.to_dict(config), "f")


def test_data_fingerprint_sees_values_shapes_and_dtypes():
    a = np.arange(6, dtype=np.int32)
    prints = {data_fingerprint(a), data_fingerprint(a.reshape(2, 3)),
              data_fingerprint(a.astype(np.int64)),
              data_fingerprint(a + (a == 5)), data_fingerprint(a[:3], a[3:])}
    assert len(prints) == 5
    assert data_fingerprint(a) == data_fingerprint(a.copy())


def test_config_from_dict_inverts_to_dict_after_json():
    config = config_lib.replace(config_lib.tiny(), hidden=(8, 4, 8), rating_scale=(1.0, 5.0))
    data = json.loads(json.dumps(config_lib.to_dict(config)))
    assert config_lib.config_from_dict(data) == config
    with pytest.raises(config_lib.ConfigError, match="model.width"):
        config_lib.config_from_dict({"model": {"width": 3}})


@pytest.mark.parametrize("orientation", ["item", "user"])
def test_load_run_round_trip(tmp_path, orientation):
    users, items = [f"u{i}" for i in range(NUM_OUTPUTS)], list(range(100, 140))
    if orientation == "user":
        users, items = users[:7], [*items, *range(7)][:NUM_OUTPUTS]
    config = config_lib.replace(config_lib.tiny(), orientation=orientation, hidden=(16,))
    params = _trained_state(config).params
    checkpoint.write_run_identity(tmp_path, config_lib.to_dict(config), "f")
    (tmp_path / "ids.json").write_text(json.dumps(
        {"orientation": orientation, "users": users, "items": items}))
    with pytest.raises(CheckpointError, match="model: no such"):
        load_run(tmp_path)
    checkpoint.save_params(tmp_path / "model", params)
    run = load_run(tmp_path)
    assert run.config == config and run.orientation == orientation and run.summary is None
    assert run.user_ids.tolist() == users and run.item_ids.tolist() == items
    chex.assert_trees_all_equal(run.params, params)
    (tmp_path / "summary.json").write_text(json.dumps({"test_rmse": 0.9}))
    assert load_run(tmp_path).summary == {"test_rmse": 0.9}
    chex.assert_trees_all_equal(checkpoint.load_params(tmp_path / "model"), params)
    (tmp_path / "run.json").unlink()
    with pytest.raises(CheckpointError, match="run.json: missing"):
        load_run(tmp_path)
