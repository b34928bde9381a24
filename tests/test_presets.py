"""The `paper` and `honest` presets: the paper's objective and optimiser checked against a
hand-written computation, and the protocol each run states in summary.json."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autorec_jax as ar
from autorec_jax import config as config_lib
from autorec_jax.data.ratings import row_matrix, to_dense
from autorec_jax.distributed.steps import make_train_step
from autorec_jax.train import create_train_state
from synthetic import random_ratings


def paper_objective(params, dense_RxN, lam):
    """SSE over observed entries + lam/2 (||W||^2 + ||V||^2), written out by hand."""
    hidden = jax.nn.sigmoid(dense_RxN @ params["hidden_0"]["kernel"]
                            + params["hidden_0"]["bias"][None, :])
    pred = hidden @ params["output"]["kernel"] + params["output"]["bias"][None, :]
    err = jnp.where(dense_RxN != 0, pred - dense_RxN, 0.0)
    weights = (jnp.sum(params["hidden_0"]["kernel"] ** 2)
               + jnp.sum(params["output"]["kernel"] ** 2))
    return jnp.sum(err ** 2) + lam / 2 * weights


@pytest.mark.parametrize("mode", ["jit", "pmap"])
def test_paper_preset_steps_rprop_on_the_papers_objective(mode):
    lam = 100.0
    config = config_lib.replace(ar.paper(), hidden=(5,), weight_decay=lam, parallel=mode)
    dense = to_dense(row_matrix(random_ratings(num_users=12, num_items=16, seed=3), "item"))
    state = create_train_state(config, dense.shape[1], jax.random.key(0))
    before = jax.tree.map(np.asarray, state.params)
    grads = jax.grad(paper_objective)(state.params, jnp.asarray(dense), lam)
    step = make_train_step(config, parallel=mode, donate=False)
    state = step.parallel.replicate(state, row_width=dense.shape[1])
    after, _ = step(state, {"ratings": jnp.asarray(dense)}, jax.random.key(1))
    # RProp's first step moves every weight by its initial step size against the sign of
    # the full-batch gradient: biases are not decayed, kernels are.
    moved = jax.tree.map(lambda new, old: np.asarray(new) - old,
                         jax.device_get(after.params), before)
    for (path, step_taken), g in zip(jax.tree_util.tree_leaves_with_path(moved),
                                     jax.tree.leaves(grads)):
        np.testing.assert_allclose(step_taken, -config.optim.lr * np.sign(g), atol=1e-7,
                                   err_msg=jax.tree_util.keystr(path))


def test_paper_preset_objective_is_sse_plus_l2_on_weights_only():
    config = ar.paper()
    assert (config.train.loss, config.optim.decay_biases, config.optim.decay_style) == (
        "sum", False, "coupled")
    assert config.optim.optimizer == "rprop" and config.train.batch_size == 0
    assert config.model.dropout == 0.0 and config.train.cold_start == "3"
    assert config.selects_on_validation and config.train.retrain


@pytest.mark.parametrize("preset", ["honest", "paper"])
def test_preset_runs_state_their_protocol(preset):
    config = config_lib.replace(config_lib.PRESETS[preset](), hidden=(8,), epochs=6,
                                early_stopping=2, parallel="jit")
    ratings = random_ratings(num_users=30, num_items=24, density=0.3, seed=5)
    summary = ar.train_and_evaluate(config, ratings=ratings).summary
    protocol = summary["protocol"]
    assert protocol["split"] == "random" and protocol["valid_ratio"] == 0.1
    assert protocol["selection"].startswith("best validation RMSE, early stopping")
    assert protocol["retrained_on_train_and_valid"] is True
    assert protocol["cold_start"] == config.train.cold_start
    assert protocol["test_scored"] == "once, after selection"
    assert summary["selection"]["retrain"]["epochs"] == summary["selection"]["best_epoch"]


def test_full_batch_takes_every_row_in_one_step():
    config = config_lib.replace(ar.tiny(), batch_size=0, epochs=3, parallel="jit")
    ratings = random_ratings(num_users=30, num_items=24, density=0.3, seed=5)
    result = ar.train_and_evaluate(config, ratings=ratings)
    assert result.experiment.batch_size == result.experiment.num_rows
    assert result.summary["steps"] == 3


def test_rprop_matches_a_hand_written_irprop_minus():
    """Steps, growth, a sign flip (skipped, step shrunk), clipping - as torch.optim.Rprop."""
    from autorec_jax.optim import scale_by_rprop
    tx = scale_by_rprop(0.1, eta_minus=0.5, eta_plus=1.2, max_step_size=0.15)
    params = jnp.zeros(2)
    state = tx.init(params)
    got = []
    for g in ([1.0, -2.0], [1.0, -1.0], [1.0, -3.0], [-1.0, 1.0], [1.0, 1.0]):
        update, state = tx.update(jnp.asarray(g), state)
        got.append(np.asarray(update))
    expected = [[-0.1, 0.1], [-0.12, 0.12], [-0.144, 0.144], [0.0, 0.0], [-0.072, -0.072]]
    np.testing.assert_allclose(np.stack(got), expected, atol=1e-7)
