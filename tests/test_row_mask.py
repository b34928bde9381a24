"""row_mask is authoritative: a row marked False counts nowhere (loss, grads, counts)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from autorec_jax import config as config_lib
from autorec_jax.data.ratings import row_matrix, to_dense
from autorec_jax.errors import ConfigError
from autorec_jax.train import complete_batch, compute_grads, create_train_state, step_keys
from autorec_jax.distributed.steps import make_train_step
from synthetic import random_ratings

needs_devices = pytest.mark.skipif(jax.device_count() < 2, reason="needs several devices")
LOSSES = ["book", "observed", "sum", "observed_weighted"]


def toy_config(loss):
    return config_lib.replace(config_lib.tiny(), hidden=(6,), dropout=0.0, optimizer="sgd",
                              lr=0.3 if loss != "sum" else 0.01, weight_decay=1e-3,
                              batch_size=12, loss=loss.removesuffix("_weighted"))


def batches(loss):
    """(batch of 12 rows, 4 of them row_mask=False but rated; the same batch without them)."""
    dense = to_dense(row_matrix(random_ratings(num_users=21, num_items=40, density=0.3,
                                               seed=4), "item"))[:12]
    keep = np.array([1, 1, 0, 1, 1, 0, 1, 1, 1, 0, 0, 1], bool)
    assert (dense[~keep] != 0).sum() > 10  # the dropped rows hold ratings
    full = {"ratings": dense, "row_mask": keep}
    if loss.endswith("_weighted"):
        full["weights"] = np.random.default_rng(0).uniform(0.5, 2.0, dense.shape
                                                           ).astype(np.float32)
    removed = {k: v[keep] for k, v in full.items() if k != "row_mask"}
    return full, removed


@pytest.mark.parametrize("loss", LOSSES)
def test_masked_rows_give_the_gradients_of_the_batch_without_them(loss):
    config = toy_config(loss)
    full, removed = batches(loss)
    state = create_train_state(config, full["ratings"].shape[1], jax.random.key(0))
    keys = step_keys(jax.random.key(1), state.step)
    grads_of = jax.jit(lambda b: compute_grads(state, b, keys, config=config))
    full_grads, full_metrics = grads_of(full)
    removed_grads, removed_metrics = grads_of(removed)
    chex.assert_trees_all_close(full_grads, removed_grads, atol=1e-7, rtol=1e-6)
    chex.assert_trees_all_close(full_metrics, removed_metrics, atol=1e-7, rtol=1e-6)
    assert float(full_metrics["rows"]) == 8
    assert float(full_metrics["observed"]) == (removed["ratings"] != 0).sum()
    # Not vacuous: the rows it drops would change the gradients if they counted.
    all_rows, _ = grads_of({k: v for k, v in full.items() if k != "row_mask"})
    assert max(jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()),
                                            all_rows, full_grads))) > 1e-4


@pytest.mark.parametrize("mode", ["jit", pytest.param("pmap", marks=needs_devices)])
@pytest.mark.parametrize("loss", LOSSES)
def test_make_train_step_with_masked_rows_equals_the_batch_without_them(mode, loss):
    config = toy_config(loss)
    full, removed = batches(loss)
    step = make_train_step(config, parallel=mode, donate=False)
    state = create_train_state(config, full["ratings"].shape[1], jax.random.key(0))
    state = step.parallel.replicate(state, row_width=full["ratings"].shape[1])
    full_state, full_metrics = step(state, full, jax.random.key(1))
    removed_state, removed_metrics = step(state, removed, jax.random.key(1))
    chex.assert_trees_all_close(jax.device_get(full_state.params),
                                jax.device_get(removed_state.params), atol=1e-6, rtol=1e-6)
    chex.assert_trees_all_close(jax.device_get(full_metrics), jax.device_get(removed_metrics),
                                atol=1e-6, rtol=1e-5)
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                         jax.device_get(full_state.params), jax.device_get(state.params))
    assert max(jax.tree.leaves(moved)) > 1e-3  # the step did something


def test_complete_batch_refuses_malformed_masks_naming_the_field():
    ratings = np.ones((3, 4), np.float32)
    with pytest.raises(ConfigError, match="row_mask"):
        complete_batch({"ratings": ratings, "row_mask": np.ones(4, bool)})
    with pytest.raises(ConfigError, match="row_mask"):
        complete_batch({"ratings": ratings, "row_mask": np.ones(3, np.float32)})
    with pytest.raises(ConfigError, match="mask"):
        complete_batch({"ratings": ratings, "mask": np.ones((3, 4), np.float32)})
    given = complete_batch({"ratings": ratings, "mask": np.eye(3, 4, dtype=bool),
                            "row_mask": np.array([True, False, True])})
    np.testing.assert_array_equal(given["mask"], np.eye(3, 4, dtype=bool) & [[1], [0], [1]])
