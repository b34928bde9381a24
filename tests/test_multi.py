"""Several models in one compiled step: each member equals the same model trained alone."""

import json

import jax
import numpy as np
import pytest

import autorec_jax as ar
from autorec_jax.run import multi
from autorec_jax.run.experiment import train_and_evaluate
from synthetic import random_ratings

needs_devices = pytest.mark.skipif(jax.device_count() < 2, reason="needs several devices")


@pytest.fixture(scope="module")
def ratings():
    return random_ratings(num_users=30, num_items=40, density=0.25, seed=3)


def members(mode, **overrides):
    """Three members differing in seed, lr, weight decay and dropout (and loop policies)."""
    base = ar.replace(ar.tiny(), hidden=(8,), batch_size=8, epochs=4, parallel=mode,
                      eval_batch_size=16, valid_ratio=0.2, select="best", **overrides)
    return [ar.replace(base, seed=0, lr=0.002, weight_decay=1e-5, dropout=0.1),
            # Early stopping with patience 1 on an lr this high stops it before the others.
            ar.replace(base, seed=1, lr=0.05, weight_decay=0.0, dropout=0.0,
                       early_stopping=1),
            ar.replace(base, seed=2, lr=0.005, weight_decay=1e-3, dropout=0.3, epochs=3)]


def max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def assert_same_run(alone, member):
    assert [h["epoch"] for h in member.history] == [h["epoch"] for h in alone.history]
    assert max_diff(member.params, alone.params) <= 1e-6
    assert max_diff(member.selected_params, alone.selected_params) <= 1e-6
    for key in ("train_loss", "valid_rmse", "grad_norm"):
        np.testing.assert_allclose([h[key] for h in member.history],
                                   [h[key] for h in alone.history], rtol=1e-6, atol=1e-7)
    for name in ("test", "valid"):
        for score in ("rmse", "mae", "count"):
            np.testing.assert_allclose(member.scores[name][score], alone.scores[name][score],
                                       rtol=1e-6)
    assert member.summary["selection"] == alone.summary["selection"]
    assert member.summary["epochs_run"] == alone.summary["epochs_run"]


@pytest.mark.parametrize("mode", ["jit", pytest.param("pmap", marks=needs_devices),
                                  pytest.param("sharded", marks=needs_devices)])
def test_each_member_equals_the_same_model_trained_alone(ratings, mode):
    configs = members(mode)
    together = multi.train_many(configs, ratings=ratings)
    alone = [train_and_evaluate(c, ratings=ratings) for c in configs]
    for single, member in zip(alone, together):
        assert_same_run(single, member)
    # The members did differ: another seed, lr, decay and dropout train another model.
    assert max_diff(together[0].params, together[2].params) > 1e-3
    # Member 1 stopped early (and was frozen), member 2 ran its own 3 epochs, member 0 all 4.
    epochs = [r.summary["epochs_run"] for r in together]
    assert epochs[0] == 4 and epochs[1] < 4 and epochs[2] == 3
    assert together[1].summary["selection"]["stopped_early"]
    assert together[0].summary["members"] == {"count": 3, "index": 0, "parallel": mode}


def test_members_on_other_splits_and_a_run_folder_each(ratings, tmp_path):
    """Replicates of a protocol: each member draws its own split (seed = split seed) and
    writes its own run folder, readable as a single run's."""
    base = ar.replace(ar.tiny(), hidden=(8,), batch_size=8, epochs=2, parallel="jit",
                      eval_batch_size=16, dropout=0.2, ranking="final")
    configs = [ar.replace(base, seed=s, split_seed=s) for s in (0, 1, 2)]
    folders = [tmp_path / f"m{k}" for k in range(3)]
    together = multi.train_many(configs, folders, ratings=ratings)
    for k, (config, member) in enumerate(zip(configs, together)):
        alone = train_and_evaluate(config, ratings=ratings)
        assert member.experiment.test.ratings.tolist() == alone.experiment.test.ratings.tolist()
        assert max_diff(member.params, alone.params) <= 1e-6
        # The ranking too: each member's held-out order, padded to the longest split's.
        for key in ("test_rmse", "test_heldout_ndcg", "test_heldout_ndcg@10", "test_ndcg@10"):
            np.testing.assert_allclose(member.summary[key], alone.summary[key], rtol=1e-6,
                                       err_msg=key)
        summary = json.loads((folders[k] / "summary.json").read_text())
        assert summary["test_rmse"] == member.summary["test_rmse"]
        lines = (folders[k] / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
        run = ar.load_run(folders[k])
        assert max_diff(run.params, member.params) == 0.0
    assert len({m.experiment.test.ratings.sum() for m in together}) == 3  # three splits
    # A member's folder resumes as a finished single run: nothing is trained again.
    resumed = train_and_evaluate(configs[0], folders[0], ratings=ratings, resume=True)
    assert max_diff(resumed.params, together[0].params) == 0.0
    assert resumed.summary["test_rmse"] == together[0].summary["test_rmse"]
    assert len((folders[0] / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("overrides, field", [
    (dict(hidden=(4,)), "model.hidden"),
    (dict(batch_size=4), "train.batch_size"),
    (dict(optimizer="sgd"), "optim.optimizer"),
    (dict(loss="observed"), "train.loss"),
])
def test_members_that_differ_in_shape_or_structure_are_refused_naming_the_field(
        ratings, overrides, field):
    configs = members("jit")
    configs[2] = ar.replace(configs[2], **overrides)
    with pytest.raises(multi.MembersDiffer, match=f"member 2 differs .* in {field}"):
        multi.train_many(configs, ratings=ratings)


def test_traced_dropout_needs_hash_dropout_and_loaded_shapes_must_agree(ratings):
    configs = [ar.replace(c, dropout_rng="jax") for c in members("jit")]
    with pytest.raises(multi.MembersDiffer, match="model.dropout"):
        multi.check_members(configs)
    multi.check_members([ar.replace(c, dropout=0.1) for c in configs])  # one rate: static
    base = members("jit")[0]
    with pytest.raises(multi.MembersDiffer, match="data.orientation"):
        multi.check_members([base, ar.replace(base, orientation="user")])
    # Data settings may differ, but not what they load: here no validation set.
    other = ar.replace(base, valid_ratio=0.0, select="last", seed=5)
    with pytest.raises(multi.MembersDiffer, match="held-out sets"):
        multi.setup_many([base, other], ratings)


def test_group_members_batches_only_shareable_configs():
    a = ar.replace(ar.tiny(), seed=1, lr=0.1)
    b = ar.replace(ar.tiny(), seed=2, dropout=0.3, epochs=7)
    c = ar.replace(ar.tiny(), hidden=(3,))
    d = ar.replace(ar.tiny(), orientation="user")
    assert multi.group_members([a, c, b, c, d]) == [[0, 2], [1, 3], [4]]
