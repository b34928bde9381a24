"""Tuned baselines (studies/baselines.py): ALS against closed forms, and on low-rank data."""

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from autorec_jax.data.ratings import Ratings
from autorec_jax.studies import baselines
from synthetic import random_ratings, udata_text

REPO = Path(__file__).resolve().parent.parent


def low_rank(num_users=60, num_items=50, density=0.35, seed=0, noise=0.1):
    rng = np.random.default_rng(seed)
    p, q = rng.normal(size=(num_users, 2)), rng.normal(size=(num_items, 2))
    full = 3.0 + 0.8 * (p @ q.T) + rng.normal(0, noise, (num_users, num_items))
    users, items = np.nonzero(rng.uniform(size=full.shape) < density)
    values = np.clip(full[users, items], 0.5, 6.0).astype(np.float32)
    return Ratings.from_raw(users + 1, items + 1, values)


def test_one_als_half_step_is_each_entitys_ridge_solution():
    rng = np.random.default_rng(1)
    index, other = rng.integers(0, 6, 80), rng.integers(0, 9, 80)
    index[index == 5] = 4  # entity 5 has no entry: zero solution
    residual, feats, reg = rng.normal(size=80), rng.normal(size=(9, 3)), 0.7
    got = baselines.ridge_side(index, other, residual, 6, feats, reg)
    for e in range(6):
        rows = np.flatnonzero(index == e)
        x = np.c_[np.ones(len(rows)), feats[other[rows]]]
        # lstsq on the augmented system [X; sqrt(reg) I] w = [y; 0]: the ridge solution
        aug_x = np.r_[x, np.sqrt(reg) * np.eye(4)]
        aug_y = np.r_[residual[rows], np.zeros(4)]
        np.testing.assert_allclose(got[e], np.linalg.lstsq(aug_x, aug_y, rcond=None)[0],
                                   atol=1e-10)


def test_mf_with_no_factors_is_the_joint_ridge_of_user_and_item_biases():
    r = random_ratings(num_users=15, num_items=12, density=0.3, seed=2)
    reg = 2.0
    model = baselines.fit_biased_mf(r, 0, reg, iterations=300)
    y = np.asarray(r.ratings, np.float64)
    mu, unit = y.mean(), y.std()
    design = np.zeros((len(y), r.num_users + r.num_items))
    design[np.arange(len(y)), r.users] = 1.0
    design[np.arange(len(y)), r.num_users + r.items] = 1.0
    k = design.shape[1]
    w = np.linalg.lstsq(np.r_[design, np.sqrt(reg) * np.eye(k)],
                        np.r_[(y - mu) / unit, np.zeros(k)], rcond=None)[0] * unit
    np.testing.assert_allclose(model.user_bias, w[:r.num_users], atol=1e-6)
    np.testing.assert_allclose(model.item_bias, w[r.num_users:], atol=1e-6)


def test_mf_on_ratings_times_20_predicts_20_times_as_much():
    r = low_rank(seed=3)
    scaled = dataclasses.replace(r, ratings=r.ratings * np.float32(20))
    a = baselines.fit_biased_mf(r, 2, 3.0, iterations=5)
    b = baselines.fit_biased_mf(scaled, 2, 3.0, iterations=5)
    np.testing.assert_allclose(b.predict(r.users, r.items), 20 * a.predict(r.users, r.items),
                               rtol=1e-5)


def split3(r, seed=0):
    order = np.random.default_rng(seed).permutation(len(r))
    n = len(r)
    cut = [0, int(0.7 * n), int(0.8 * n), n]
    return tuple(r.take(np.sort(order[a:b])) for a, b in zip(cut[:-1], cut[1:]))


def test_tuned_mf_beats_the_tuned_item_mean_on_low_rank_data():
    train, valid, test = split3(low_rank(seed=4))
    out = baselines.run_baselines(train, valid, test, dims=(2, 4), regs=(1.0, 10.0),
                                  iterations=8)
    assert out["biased_mf"]["test_rmse"] < 0.8 * out["item_mean"]["test_rmse"]
    grid = out["biased_mf"]["grid"]
    assert out["biased_mf"]["valid_rmse"] == min(g["valid_rmse"] for g in grid)
    # the item-mean choice matches NumPy's shrunk means on validation
    mu = train.ratings.mean(dtype=np.float64)
    best = None
    for k in baselines.SHRINKAGES:
        n = np.bincount(train.items, minlength=train.num_items)
        s = np.bincount(train.items, weights=train.ratings.astype(np.float64),
                        minlength=train.num_items)
        pred = np.clip(np.where(n + k > 0, (s + k * mu) / np.maximum(n + k, 1e-300), mu),
                       train.ratings.min(), train.ratings.max())[valid.items]
        score = np.sqrt(np.mean((pred - valid.ratings) ** 2))
        best = (score, k) if best is None or score < best[0] else best
    assert out["item_mean"]["shrinkage"] == best[1]
    with pytest.raises(ValueError, match="--valid-ratio"):
        baselines.run_baselines(train, valid.take(np.zeros(0, int)), test)


def test_baselines_script_writes_a_summary(tmp_path, capsys):
    source = tmp_path / "ratings.tsv"
    source.write_text(udata_text(random_ratings(num_users=30, num_items=20, seed=5)))
    spec = importlib.util.spec_from_file_location("bl", REPO / "scripts" / "baselines.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(source), "--dims", "2", "--regs", "3", "--iterations", "3",
                        "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["data"]["valid_ratings"] > 0
    assert {summary["biased_mf"]["dim"], summary["biased_mf"]["reg"]} == {2, 3.0}
    assert np.isfinite(summary["item_mean"]["test_rmse"])
    with pytest.raises(SystemExit):
        script.main([str(source), "--valid-ratio", "0", "--out", str(tmp_path / "x")])
    assert "--valid-ratio > 0" in capsys.readouterr().err
