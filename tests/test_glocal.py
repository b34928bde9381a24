"""GLocal-K (`glocal_k.py`, `run/stages.py`): the global kernel, its convolution and the
fine-tuning network against NumPy by hand; the two stages against their composition by hand;
resume of an interrupted stage; warm starts (`initial_params`); the refusals."""

import json
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import autorec_jax as ar
from autorec_jax import config as config_lib
from autorec_jax import networks
from autorec_jax.distributed import placement
from autorec_jax.errors import ConfigError, TrainingInterrupted
from autorec_jax.glocal_k import GLocalK, global_conv
from autorec_jax.run import stages
from autorec_jax.data.ratings import row_matrix
from autorec_jax.run.experiment import TrainResult, setup
from autorec_jax.serve.recommend import dense_rows, predict_entries
from autorec_jax.train import create_train_state
from synthetic import random_ratings


def numpy_correlate_same(x, g):
    """Zero-padded "same" cross-correlation, one output entry at a time."""
    k, (m, n) = g.shape[0], x.shape
    padded = np.zeros((m + k - 1, n + k - 1))
    padded[k // 2:k // 2 + m, k // 2:k // 2 + n] = x
    return np.array([[np.sum(padded[i:i + k, j:j + k] * g) for j in range(n)]
                     for i in range(m)])


def numpy_kernel_autorec(params, x):
    """The kernel AutoRec's forward pass (sigmoid hidden layers, identity output)."""
    names = sorted(n for n in params if n.startswith("hidden_")) + ["output"]
    for name in names:
        p = {key: np.asarray(v, np.float64) for key, v in params[name].items()}
        diff = p["u"][:, None, :] - p["v"][None, :, :]
        k = np.maximum(0.0, 1.0 - (diff ** 2).sum(-1))
        x = x @ (p["W"] * k) + p["b"]
        if name != "output":
            x = 1.0 / (1.0 + np.exp(-x))
    return x


def test_global_conv_is_relu_of_zero_padded_cross_correlation():
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 5, size=(7, 9)).astype(np.float32)
    g = rng.normal(size=(3, 3)).astype(np.float32)       # asymmetric: a flip would show
    np.testing.assert_allclose(np.asarray(global_conv(jnp.asarray(x), jnp.asarray(g))),
                               np.maximum(numpy_correlate_same(x, g), 0.0), atol=1e-5)


@pytest.mark.parametrize("rows, cols", [(6, 6), (5, 8)])
def test_glocal_forward_equals_numpy_by_hand(rows, cols):
    """Pooled rows -> k x k kernel -> relu(conv(R)) -> the same kernel AutoRec; square too,
    where pooling over the wrong axis would still run."""
    module = GLocalK(num_outputs=cols, num_rows=rows, hidden=(4, 3), dot_scale=0.7)
    params = networks.init_params(module, jax.random.key(1), cols)
    rng = np.random.default_rng(2)
    x = np.where(rng.uniform(size=(rows, cols)) < 0.5, rng.integers(1, 6, (rows, cols)), 0)
    # Spread the embeddings so the kernels' support (distance < 1) cuts some links.
    params = jax.tree.map(lambda a: a * 300.0 if a.ndim == 2 and a.shape[1] == 5 else a,
                          params)
    got = jax.jit(module.apply, static_argnames="train")(
        {"params": params}, jnp.asarray(x, jnp.float32), train=False)
    local = params["local"]
    pooled = numpy_kernel_autorec(local, x.astype(np.float64)).mean(axis=1)   # [M]
    g = (pooled @ np.asarray(params["conv_kernel"], np.float64) * 0.7).reshape(3, 3)
    expected = numpy_kernel_autorec(local, np.maximum(numpy_correlate_same(x, g), 0.0))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=2e-4, atol=2e-4)
    assert 0 < np.mean(np.asarray(ar.local_kernel(local["hidden_0"]["u"],
                                                  local["hidden_0"]["v"])) == 0) < 1


def test_glocal_pads_past_the_matrix_and_refuses_a_partial_one():
    module = GLocalK(num_outputs=5, num_rows=4, hidden=(3,))
    params = networks.init_params(module, jax.random.key(0), 5)
    x = jnp.asarray(np.random.default_rng(0).integers(0, 6, (4, 5)), jnp.float32)
    apply = jax.jit(module.apply, static_argnames="train")
    whole = apply({"params": params}, x, train=False)
    padded = apply({"params": params}, jnp.pad(x, ((0, 3), (0, 0))), train=False)
    np.testing.assert_array_equal(np.asarray(padded[:4]), np.asarray(whole))
    np.testing.assert_array_equal(np.asarray(padded[4:]), 0.0)
    with pytest.raises(ConfigError, match="whole rating matrix at once.*block of 3"):
        module.apply({"params": params}, x[:3], train=False)


def test_predictions_of_some_rows_read_the_whole_matrix():
    """Predicting a few entries (serve.predict_entries, as ensembles, predict.py and
    recommend.py do) equals the whole matrix's forward pass at those entries: the network
    is given every row in index order, not only the rows asked for."""
    ratings = random_ratings(num_users=7, num_items=16, density=0.4)
    config = config_lib.replace(tiny_glocal(), glocal_rows=16, clip_predictions=False)
    train_rows = row_matrix(ratings, "item")
    module = networks.resolve_model(config, train_rows.num_cols)
    params = networks.init_params(module, jax.random.key(3), train_rows.num_cols)
    params = {**params, "conv_kernel": params["conv_kernel"] + 0.3}  # a kernel far from 0
    whole = np.asarray(module.apply({"params": params}, jnp.asarray(
        dense_rows(train_rows, np.arange(16))), train=False))
    rows = np.array([13, 2, 2, 9, 5, 11, 0, 7, 3, 14])  # 9 distinct: a block of 16
    cols = np.arange(len(rows)) % 7
    got = predict_entries(config, params, train_rows, rows, cols, model=module)
    np.testing.assert_allclose(got, whole[rows, cols], rtol=1e-6)
    assert np.ptp(whole[:, 0]) > 0.01  # the rows' outputs differ: the check can fail


def test_glocal_settings_are_validated():
    base = config_lib.glocal()
    with pytest.raises(ConfigError, match="train.batch_size, train.shuffle"):
        config_lib.replace(base, shuffle=True)
    with pytest.raises(ConfigError, match="train.batch_size, train.shuffle"):
        config_lib.replace(base, batch_size=32, optimizer="adam")
    with pytest.raises(ConfigError, match="glocal_kernel_size"):
        config_lib.replace(base, glocal_kernel_size=4)
    with pytest.raises(ConfigError, match="glocal_rows is 0"):
        networks.resolve_model(base, 10)


@pytest.mark.skipif(jax.device_count() < 2, reason="needs several devices")
def test_glocal_refuses_several_devices():
    config = config_lib.replace(tiny_glocal(), parallel="pmap")
    with pytest.raises(ConfigError, match="GLocal-K runs on one device"):
        setup(config, random_ratings(num_users=12, num_items=10, density=0.4))


def test_unshuffled_epochs_keep_rows_in_index_order():
    ratings = random_ratings(num_users=12, num_items=10, density=0.4)
    config = config_lib.replace(config_lib.tiny(), shuffle=False, batch_size=0)
    experiment, _ = setup(config, ratings)
    batches, _ = placement.plan_epoch(config, experiment.data, experiment.batch_size,
                                      np.random.default_rng(0), np.zeros(0, np.int32),
                                      experiment.shuffle_seed, 1)
    np.testing.assert_array_equal(batches, np.arange(experiment.num_rows)[None])


def test_initial_params_start_the_state_and_must_match_the_model():
    config = config_lib.replace(config_lib.tiny(), hidden=(4,))
    fresh = create_train_state(config, 6, jax.random.key(0)).params
    warm = jax.tree.map(lambda a: a + 1.0, fresh)
    state = create_train_state(config, 6, jax.random.key(0), initial_params=warm)
    jax.tree.map(np.testing.assert_array_equal, state.params, warm)
    bad = {**warm, "output": {**warm["output"], "kernel": jnp.zeros((4, 7))}}
    with pytest.raises(ConfigError, match=r"\['output'\]\['kernel'\] are float32 \[4, 7\]"):
        create_train_state(config, 6, jax.random.key(0), initial_params=bad)


def tiny_glocal(**overrides):
    """GLocal-K at toy size with Adam (the stages do not depend on the optimiser; L-BFGS's
    compile would dominate the test)."""
    base = dict(hidden=(6, 5), optimizer="adam", lr=0.01, epochs=2, glocal_pretrain_epochs=2,
                early_stopping=0, retrain=False, valid_ratio=0.0, ranking="off",
                lambda_2=0.1, lambda_s=0.01)
    base.update(overrides)
    return config_lib.replace(config_lib.glocal(), **base)


def test_stages_equal_their_composition_by_hand(tmp_path):
    """The run's final params equal pre-training, then fine-tuning from its params (a fresh
    conv kernel map), run by hand."""
    ratings = random_ratings(num_users=20, num_items=16, density=0.35)
    config = tiny_glocal()
    result = ar.train_and_evaluate(config, tmp_path / "run", ratings=ratings)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["final_stage"] == "finetune"
    assert summary["stages"]["pretrain"]["model"].endswith("KernelAutoRec")
    assert summary["stages"]["finetune"]["model"].endswith("GLocalK")
    assert summary["test_rmse"] == result.summary["test_rmse"]

    by_hand = stages.stage_configs(config)
    pre = ar.train_and_evaluate(by_hand["pretrain"], ratings=ratings)
    start = stages.finetune_start(config, pre.params, pre.experiment.num_rows,
                                  pre.experiment.row_width)
    jax.tree.map(np.testing.assert_array_equal, start["local"], pre.params)
    fine = ar.train_and_evaluate(by_hand["finetune"], ratings=ratings, initial_params=start)
    jax.tree.map(np.testing.assert_array_equal, result.params, fine.params)
    assert result.summary["test_rmse"] == fine.summary["test_rmse"]


def test_selection_then_retrain_repeats_both_stages_with_the_selected_epochs(tmp_path):
    """The orchestration with a stand-in for `train_and_evaluate`: which stage runs where,
    for how many epochs, from which params, and which scores the summary keeps."""
    calls = []
    rules = {"pretrain": "item-mean", "finetune": "user-mean"}

    def fake_stage(config, folder, *, initial_params=None, **kwargs):
        name = "/".join(folder.relative_to(tmp_path).parts)
        calls.append((name, config, initial_params))
        best = {"pretrain": 4, "finetune": 2}.get(name)
        params = {"tag": name, **({"conv_kernel": None} if "finetune" in name else {})}
        return TrainResult(
            state=None, history=[], params=params, selected_params=params,
            scores={"test": {"rmse": len(calls)}, **({"valid": {"rmse": 0.5}} if best else {})},
            experiment=SimpleNamespace(num_rows=16, row_width=20, name=name),
            summary={"selection": {"best_epoch": best} if best else {"rule": "last epoch"},
                     **({"cold_start_choice": {"rule": rules[name]}} if best else {}),
                     "epochs_run": config.train.epochs,
                     "train_seconds": 0.0, "model": name, "test_rmse": len(calls),
                     **({"valid_rmse": 0.5} if best else {})})

    config = tiny_glocal(valid_ratio=0.2, early_stopping=2, epochs=6, retrain=True,
                         glocal_pretrain_epochs=7, cold_start="auto")
    result = stages.train_glocal(config, tmp_path, train_stage=fake_stage)
    assert [c[0] for c in calls] == ["pretrain", "finetune", "retrain/pretrain",
                                     "retrain/finetune"]
    epochs = [c[1].train.epochs for c in calls]
    assert epochs == [7, 6, 4, 2]
    assert [c[1].data.valid_ratio for c in calls] == [0.2, 0.2, 0.0, 0.0]
    assert [c[1].model.network for c in calls] == ["kernel", "glocal"] * 2
    assert not any(c[1].train.retrain for c in calls)
    # The retrain has no validation to choose on: each stage's chosen cold-start rule.
    assert [c[1].train.cold_start for c in calls] == ["auto", "auto", "item-mean",
                                                      "user-mean"]
    assert calls[0][2] is None and calls[2][2] is None
    assert calls[1][2]["local"] == {"tag": "pretrain"}
    assert calls[3][2]["local"] == {"tag": "retrain/pretrain"}
    assert calls[3][2]["conv_kernel"].shape == (16, 9)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["test_rmse"] == 4 and summary["valid_rmse"] == 0.5
    assert summary["final_stage"] == "retrain/finetune"
    assert result.summary["stages"]["retrain/finetune"]["epochs_run"] == 2
    assert summary["selection"]["retrain"]["epochs"] == {"pretrain": 4, "finetune": 2}
    assert summary["protocol"]["retrained_on_train_and_valid"] is True
    assert summary["protocol"]["test_scored"] == "once, after selection"
    # Shaped as train.retrain's result (what ensembles read): the selection run's
    # experiment and selected params, the retrained params and test scores.
    assert result.experiment.name == "finetune"
    assert result.selected_params["tag"] == "finetune"
    assert result.params["tag"] == result.retrained.params["tag"] == "retrain/finetune"
    assert result.retrained.experiment.name == "retrain/finetune"
    assert result.scores == {"test": {"rmse": 4}, "valid": {"rmse": 0.5}}


def test_an_interrupted_stage_resumes_and_no_stage_restarts(tmp_path):
    """Interrupted in fine-tuning: the resumed run trains only fine-tuning's remaining
    epochs (the stop hook counts the epochs trained) and ends where an uninterrupted run
    does."""
    ratings = random_ratings(num_users=20, num_items=16, density=0.35)
    config = tiny_glocal(glocal_pretrain_epochs=1, epochs=3)
    whole = ar.train_and_evaluate(config, tmp_path / "whole", ratings=ratings)
    polls = []

    def stop_after(n):
        def stop():
            polls.append(1)
            return len(polls) == n
        return stop

    pretrain_epochs, finetune_epochs = config.model.glocal_pretrain_epochs, config.train.epochs
    with pytest.raises(TrainingInterrupted, match="finetune stage.*--resume"):
        ar.train_and_evaluate(config, tmp_path / "run", ratings=ratings,
                              stop_requested=stop_after(pretrain_epochs + 1))
    polls.clear()
    resumed = ar.train_and_evaluate(config, tmp_path / "run", ratings=ratings, resume=True,
                                    stop_requested=stop_after(-1))
    assert len(polls) == finetune_epochs - 1
    jax.tree.map(np.testing.assert_array_equal, resumed.params, whole.params)
    assert resumed.summary["test_rmse"] == whole.summary["test_rmse"]


def test_lbfgs_restarts_equal_fresh_lbfgs_every_k_steps():
    """`optim.with_restarts(optax.lbfgs(), 2)` against optax.lbfgs re-initialised by hand
    before steps 0, 2, 4 (scipy's L-BFGS-B called 2 iterations at a time)."""
    import optax
    from autorec_jax.optim import with_restarts

    scale = jnp.asarray([1.0, 3.0, 10.0, 0.3])

    def objective(p):
        return jnp.sum(scale * (p["x"] - 1.0) ** 2) + jnp.sum(jnp.cos(p["x"]))

    def run(tx, steps, reinit_every=None):
        params = {"x": jnp.asarray([2.0, -1.0, 0.5, 3.0])}
        state = tx.init(params)
        for step in range(steps):
            if reinit_every and step % reinit_every == 0:
                state = tx.init(params)
            value, grads = jax.value_and_grad(objective)(params)
            updates, state = tx.update(grads, state, params, value=value, grad=grads,
                                       value_fn=objective)
            params = optax.apply_updates(params, updates)
        return params["x"]

    lbfgs = optax.lbfgs(memory_size=5)
    restarted = run(with_restarts(lbfgs, 2), 5)
    np.testing.assert_allclose(restarted, run(lbfgs, 5, reinit_every=2), rtol=1e-6)
    assert np.max(np.abs(np.asarray(restarted) - np.asarray(run(lbfgs, 5)))) > 1e-4


def test_glocal_as_an_ensemble_member_scores_as_its_own_run():
    """An ensemble's GLocal-K member (selected, then both stages retrained) predicts, through
    `predict_heldout`, the validation and test RMSE its run's evaluator reported."""
    from autorec_jax.studies import ensemble
    ratings = random_ratings(num_users=20, num_items=16, density=0.35)
    glocal = tiny_glocal(valid_ratio=0.2, early_stopping=2, epochs=3, retrain=True,
                         cold_start="item-mean")
    plain = config_lib.replace(config_lib.tiny(), valid_ratio=0.2, early_stopping=2,
                               retrain=True, cold_start="item-mean", epochs=3, batch_size=8)
    result = ensemble.train_ensemble([glocal, plain], ratings=ratings, batch_members=False)
    run, member = result.runs[0], result.summary["members"][0]
    assert run.retrained is not None and run.experiment.valid is not None
    assert member["valid_rmse"] == pytest.approx(run.summary["valid_rmse"], rel=1e-5)
    assert member["test_rmse"] == pytest.approx(run.summary["test_rmse"], rel=1e-5)
    assert member["label"] == "GLocal-K (I) seed 0"


def test_ensemble_labels_name_the_network():
    from autorec_jax.studies.ensemble import member_label
    assert member_label(config_lib.glocal()) == "GLocal-K (I) seed 0"
    assert member_label(config_lib.replace(config_lib.honest(), network="kernel", seed=3,
                                           orientation="user")) == "kernel AutoRec (U) seed 3"
    assert member_label(config_lib.honest()) == "I-AutoRec seed 0"


def test_a_run_folders_model_identity_leaves_out_class_attributes():
    """`reads_whole_matrix` is a class attribute, not a field: run folders recorded before it
    existed still resume (their identity has no such field)."""
    module = GLocalK(num_outputs=5, num_rows=4, hidden=(3,))
    recorded = networks.identity(module)
    assert "reads_whole_matrix" not in recorded["fields"]
    assert recorded["fields"]["num_rows"] == "4"
    networks.check_same(recorded, module, "runs/x")
    with pytest.raises(ConfigError, match="num_rows=4, now 5"):
        networks.check_same(recorded, GLocalK(num_outputs=5, num_rows=5, hidden=(3,)), "x")
