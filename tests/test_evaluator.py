"""The evaluator equals a NumPy computation of the book's RMSE formula, blocked or whole."""

import functools

import jax
import numpy as np
import pytest

from autorec_jax.data import batching, splits
from autorec_jax.data.ratings import row_matrix, to_dense
from autorec_jax.evaluator import EvalData, eval_blocks, summarize
from autorec_jax.model import AutoRec, init_params
from autorec_jax.rows import to_device_rows
from synthetic import random_ratings


def numpy_forward(params, x):
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    hidden = 1 / (1 + np.exp(-(x @ p["hidden_0"]["kernel"] + p["hidden_0"]["bias"])))
    return hidden @ p["output"]["kernel"] + p["output"]["bias"]


def book_rmse(test, recons):
    """d2l's evaluator: sqrt(sum((test - sign(test) * recons)^2) / sum(sign(test)))."""
    return np.sqrt(np.sum(np.square(test - np.sign(test) * recons)) / np.sum(np.sign(test)))


@pytest.fixture(scope="module")
def setting():
    ratings = random_ratings(num_users=50, num_items=37, density=0.25, seed=5)
    train, test = splits.split(ratings, "random", test_ratio=0.2, seed=5)
    train_rows, test_rows = row_matrix(train, "item"), row_matrix(test, "item")
    model = AutoRec(num_outputs=train_rows.num_cols, hidden=(6,), init_std=0.3)
    params = init_params(model, jax.random.key(0))
    data = jax.device_put(EvalData(to_device_rows(train_rows), to_device_rows(test_rows)))
    return model, params, train_rows, test_rows, data


def run_eval(setting, block_size, clip_range=None):
    model, params, train_rows, test_rows, data = setting
    index = batching.blocks(train_rows.num_rows, block_size)
    fn = jax.jit(functools.partial(
        eval_blocks, apply_fn=model.apply, clip_range=clip_range,
        max_nnz_inputs=batching.max_nnz(train_rows.row_lengths, index.shape[1]),
        max_nnz_targets=batching.max_nnz(test_rows.row_lengths, index.shape[1])))
    return fn(params, data, index)


def test_rmse_and_mae_equal_numpy_book_formula(setting):
    _, params, train_rows, test_rows, _ = setting
    recons = numpy_forward(params, to_dense(train_rows).astype(np.float64))
    test = to_dense(test_rows).astype(np.float64)
    result = summarize(run_eval(setting, block_size=8))
    assert result["rmse"] == pytest.approx(book_rmse(test, recons), rel=1e-6)
    observed = test != 0
    assert result["mae"] == pytest.approx(np.abs(test - recons)[observed].mean(), rel=1e-6)
    assert result["count"] == observed.sum()


def test_blocked_accumulation_equals_whole_set(setting):
    whole = summarize(run_eval(setting, block_size=setting[2].num_rows))
    for block_size in (1, 5, 16):
        blocked = summarize(run_eval(setting, block_size))
        assert blocked["count"] == whole["count"]
        assert blocked["rmse"] == pytest.approx(whole["rmse"], rel=1e-6)
        assert blocked["mae"] == pytest.approx(whole["mae"], rel=1e-6)


def test_clipping_applies_only_when_asked(setting):
    model, params, train_rows, test_rows, data = setting
    # Spread the predictions over [1, 5] so that the clip range (2, 4) cuts some on each
    # side and leaves others: a constant or an unclipped prediction would then fail.
    spread = np.random.default_rng(0).uniform(1.0, 5.0, train_rows.num_cols)
    params = {**params, "output": {**params["output"], "bias": spread.astype(np.float32)}}
    recons = numpy_forward(params, to_dense(train_rows).astype(np.float64))
    test = to_dense(test_rows).astype(np.float64)
    at_test = recons[test != 0]
    assert (at_test < 2).any() and (at_test > 4).any() and ((at_test > 2) & (at_test < 4)).any()
    setting = (model, params, train_rows, test_rows, data)
    clipped = summarize(run_eval(setting, 8, clip_range=(2.0, 4.0)))
    assert clipped["rmse"] == pytest.approx(book_rmse(test, np.clip(recons, 2, 4)), rel=1e-6)
    plain = summarize(run_eval(setting, 8))
    assert plain["rmse"] == pytest.approx(book_rmse(test, recons), rel=1e-6)
    assert abs(plain["rmse"] - clipped["rmse"]) > 1e-3


def test_scores_depend_on_test_ratings_only_as_targets(setting):
    """Shifting every test rating by +1 moves each error by exactly 1 (inputs unchanged)."""
    model, params, train_rows, test_rows, data = setting
    shifted = test_rows.__class__(test_rows.indptr, test_rows.cols, test_rows.values + 1,
                                  test_rows.num_cols)
    moved = (model, params, train_rows, shifted,
             jax.device_put(EvalData(to_device_rows(train_rows), to_device_rows(shifted))))
    recons = numpy_forward(params, to_dense(train_rows).astype(np.float64))
    test = to_dense(shifted).astype(np.float64)
    expected = book_rmse(test, recons)
    assert summarize(run_eval(moved, 8))["rmse"] == pytest.approx(expected, rel=1e-6)


def test_cold_sums_accumulate_over_blocks_like_the_whole_set(setting):
    """Per-entry "cold" and "fallback" fields (any values: the evaluator takes them as
    given) give the same cold and warm scores blocked or whole."""
    model, params, train_rows, test_rows, _ = setting
    rng = np.random.default_rng(1)
    fields = {"cold": (rng.uniform(size=test_rows.nnz) < 0.3).astype(np.float32),
              "fallback": rng.uniform(1, 5, test_rows.nnz).astype(np.float32)}
    data = jax.device_put(EvalData(to_device_rows(train_rows),
                                   to_device_rows(test_rows, fields=fields)))
    with_fields = (model, params, train_rows, test_rows, data)
    whole = summarize(run_eval(with_fields, block_size=train_rows.num_rows))
    assert whole["cold_count"] == fields["cold"].sum() > 0
    recons = numpy_forward(params, to_dense(train_rows).astype(np.float64))
    dense = {name: to_dense(type(test_rows)(test_rows.indptr, test_rows.cols, values,
                                            test_rows.num_cols))
             for name, values in (("test", test_rows.values), *fields.items())}
    observed, cold = dense["test"] != 0, dense["cold"] != 0
    pred = np.where(cold, dense["fallback"], recons)
    err = (pred - dense["test"])[observed]
    assert whole["rmse"] == pytest.approx(np.sqrt(np.mean(err ** 2)), rel=1e-6)
    assert whole["cold_rmse"] == pytest.approx(
        np.sqrt(np.mean((pred - dense["test"])[cold] ** 2)), rel=1e-6)
    for block_size in (1, 5, 16):
        blocked = summarize(run_eval(with_fields, block_size))
        for key in ("count", "cold_count"):
            assert blocked[key] == whole[key]
        for key in ("rmse", "mae", "cold_rmse", "warm_rmse"):
            assert blocked[key] == pytest.approx(whole[key], rel=1e-6), key
