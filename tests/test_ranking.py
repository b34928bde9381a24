"""Ranking metrics: the blocked device computation against NumPy by hand (ties, users without
relevant items, cold rows), against scikit-learn's NDCG, and equal on every parallel mode."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import ndcg_score

from autorec_jax import config as config_lib
from autorec_jax import heldout_ranking, ranking
from autorec_jax.data.ratings import row_matrix, to_dense
from autorec_jax.model import create_model
from autorec_jax.errors import ConfigError
from autorec_jax.run.experiment import evaluate, setup, train_and_evaluate
from autorec_jax.run.multi import train_many
from autorec_jax.studies.protocol import compare, format_comparison
from synthetic import random_ratings

KS = (3, 5)
THRESHOLD = 4.0


def reference(train_UxI, heldout_UxI, scores_UxI, ks=KS, threshold=THRESHOLD):
    """Both protocols by hand, per user, in float64; ties to the lower item index."""
    sums = {"heldout_users": 0, "rank_users": 0}
    add = lambda key, value: sums.__setitem__(key, sums.get(key, 0.0) + value)  # noqa: E731
    for u in range(train_UxI.shape[0]):
        held = np.flatnonzero(heldout_UxI[u])
        gains = 2.0 ** heldout_UxI[u, held] - 1.0
        if len(held) >= 2:
            by_pred = sorted(range(len(held)), key=lambda j: (-scores_UxI[u, held[j]], held[j]))
            ideal = np.sort(gains)[::-1]
            sums["heldout_users"] += 1
            for cut, key in [(len(held), "heldout_ndcg")] + [(k, f"heldout_ndcg@{k}")
                                                             for k in ks]:
                dcg = sum(gains[j] / np.log2(i + 2) for i, j in enumerate(by_pred[:cut]))
                add(key, dcg / sum(g / np.log2(i + 2) for i, g in enumerate(ideal[:cut])))
        candidates = [i for i in range(train_UxI.shape[1]) if train_UxI[u, i] == 0]
        relevant = {i for i in held if heldout_UxI[u, i] >= threshold}
        if not relevant:
            continue
        sums["rank_users"] += 1
        ranked = sorted(candidates, key=lambda i: (-scores_UxI[u, i], i))
        for k in ks:
            hits = [i in relevant for i in ranked[:k]]
            add(f"recall@{k}", sum(hits) / len(relevant))
            add(f"precision@{k}", sum(hits) / k)
            add(f"hr@{k}", float(any(hits)))
            add(f"mrr@{k}", 1.0 / (hits.index(True) + 1) if any(hits) else 0.0)
            dcg = sum(1 / np.log2(i + 2) for i, h in enumerate(hits) if h)
            add(f"ndcg@{k}", dcg / sum(1 / np.log2(i + 2) for i in range(min(k, len(relevant)))))
    users = {key: sums["heldout_users" if key.startswith("heldout") else "rank_users"]
             for key in sums}
    return {key: (value / users[key] if key not in ("heldout_users", "rank_users") else value)
            for key, value in sums.items()}


def _config(**overrides):
    return config_lib.replace(config_lib.tiny(), ranking_k=KS, relevance_threshold=THRESHOLD,
                              **{"batch_size": 8, "eval_batch_size": 8, "ranking": "final",
                                 **overrides})


def _dense_scores(experiment, params, orientation):
    """A second code path: the network on the whole dense training matrix at once."""
    dense_RxN = to_dense(row_matrix(experiment.train, orientation))
    model = create_model(experiment.config.model, experiment.row_width)
    recon = np.asarray(model.apply({"params": jax.device_get(params)}, jnp.asarray(dense_RxN),
                                   train=False), np.float64)
    return recon if orientation == "user" else recon.T


def _user_item(ratings, orientation):
    dense = to_dense(row_matrix(ratings, orientation))
    return dense if orientation == "user" else dense.T


@pytest.mark.parametrize("orientation", ["item", "user"])
def test_matches_numpy_by_hand(orientation):
    ratings = random_ratings(num_users=40, num_items=30, density=0.3, seed=1)
    experiment, state = setup(_config(orientation=orientation, parallel="jit"), ratings)
    params = state.params
    got = evaluate(experiment, params, ranking=True)["test"]
    scores = _dense_scores(experiment, params, orientation)
    want = reference(_user_item(experiment.train, orientation),
                     _user_item(experiment.test, orientation), scores)
    assert want["rank_users"] > 5 and want["heldout_users"] > 5
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=2e-5, atol=1e-6, err_msg=key)


def test_ties_and_users_without_relevant_items():
    """Every score tied (a constant network): ranks follow the item index; users whose
    held-out ratings are all below the threshold are skipped."""
    users = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    items = np.array([0, 1, 2, 0, 3, 4, 1, 2, 3, 4])
    values = np.array([5, 3, 1, 2, 4, 5, 5, 2, 3, 5], np.float32)
    train = np.array([1, 0, 0, 1, 0, 0, 0, 0, 1, 0], bool)
    scores_UxI = np.full((3, 5), 2.5)
    train_UxI, held_UxI = np.zeros((3, 5)), np.zeros((3, 5))
    train_UxI[users[train], items[train]] = values[train]
    held_UxI[users[~train], items[~train]] = values[~train]
    held_UxI[0] = [0, 3, 1, 0, 0]          # user 0: nothing relevant (all < 4)
    want = reference(train_UxI, held_UxI, scores_UxI, ks=(2,))
    # By hand (ties: lower index first): user 1's top 2 of items 1-4 are 1, 2, relevant
    # {3, 4}: no hit; user 2's of items 0, 1, 2, 4 are 0, 1, relevant {1, 4}: a hit at 2.
    assert want["rank_users"] == 2 and want["recall@2"] == pytest.approx((0 + 0.5) / 2)
    assert want["mrr@2"] == pytest.approx((0 + 0.5) / 2)
    held = np.nonzero(held_UxI)
    flat = {"user_E": held[0], "item_E": held[1], "rating_E": held_UxI[held],
            "pred_E": scores_UxI[held], "valid_E": np.ones(len(held[0]), bool)}
    # Shuffled entries with padding slots: the result depends on neither.
    order = np.random.default_rng(0).permutation(len(held[0]))
    shuffled = {k: np.concatenate([v[order], v[:2]]) for k, v in flat.items()}
    shuffled["valid_E"][-2:] = False
    got = heldout_ranking.heldout_ndcg_sums(**{k: jnp.asarray(v) for k, v in shuffled.items()},
                                    num_users=3, ks=(2,))
    assert float(got["heldout_users"]) == want["heldout_users"] == 3
    np.testing.assert_allclose(float(got["heldout_ndcg"]) / 3, want["heldout_ndcg"], rtol=1e-6)
    np.testing.assert_allclose(float(got["heldout_ndcg@2"]) / 3, want["heldout_ndcg@2"],
                               rtol=1e-6)
    # Full ranking over the tied scores, through the running top-K in two blocks.
    ranked = np.where(train_UxI == 0, scores_UxI, -np.inf)
    relevant = (held_UxI >= 4)
    carry = ranking.empty_topk(3, 2)
    for block in (slice(0, 3), slice(3, 5)):
        carry = ranking.running_topk(carry, jnp.asarray(ranked[:, block]),
                                     jnp.arange(5)[block], jnp.asarray(relevant[:, block].T))
    sums = ranking.topk_sums(carry[2], jnp.asarray(relevant.sum(1)), (2,))
    assert np.asarray(carry[1]).tolist() == [[1, 2], [1, 2], [0, 1]]
    assert float(sums["rank_users"]) == want["rank_users"]
    for key in ("recall@2", "precision@2", "ndcg@2", "hr@2", "mrr@2"):
        np.testing.assert_allclose(float(sums[key]) / 2, want[key], rtol=1e-6, err_msg=key)


def test_merge_breaks_ties_by_item_across_devices():
    # Two devices' lists of user 0: equal scores; the lower item wins wherever it came from.
    scores = jnp.array([[1.0, 0.5, 1.0, 0.7]])
    items = jnp.array([[7, 2, 3, 9]])
    relevant = jnp.array([[False, False, True, False]])
    best_scores, best_items, best_relevant = ranking.merge_topk(scores, items, relevant, k=3)
    assert best_items.tolist() == [[3, 7, 9]] and best_relevant.tolist() == [[True, False, False]]


def test_agrees_with_scikit_learn_ndcg():
    """scikit-learn's ndcg_score (gain = y_true; so y_true = 2^r - 1 for the held-out NDCG,
    binary relevance over the candidates for NDCG@K). Continuous scores: no ties, where the
    two differ by definition (scikit-learn averages tied gains)."""
    ratings = random_ratings(num_users=40, num_items=30, density=0.3, seed=2)
    experiment, state = setup(_config(orientation="item", parallel="jit"), ratings)
    got = evaluate(experiment, state.params, ranking=True)["test"]
    scores = _dense_scores(experiment, state.params, "item")
    train_UxI, held_UxI = (_user_item(experiment.train, "item"),
                           _user_item(experiment.test, "item"))
    heldout, at5 = [], []
    for u in range(train_UxI.shape[0]):
        held = np.flatnonzero(held_UxI[u])
        if len(held) >= 2:
            heldout.append(ndcg_score([2.0 ** held_UxI[u, held] - 1], [scores[u, held]]))
        candidates = np.flatnonzero(train_UxI[u] == 0)
        relevant = held_UxI[u, candidates] >= THRESHOLD
        if relevant.any():
            at5.append(ndcg_score([relevant.astype(float)], [scores[u, candidates]], k=5))
    np.testing.assert_allclose(got["heldout_ndcg"], np.mean(heldout), rtol=1e-5)
    np.testing.assert_allclose(got["ndcg@5"], np.mean(at5), rtol=1e-5)


@pytest.mark.parametrize("orientation", ["item", "user"])
def test_candidates_of_one_block_and_running_lists_match_numpy_with_ties(orientation):
    """200 items, so a user's candidates come from `topk_candidates`' groups (25 groups of 8
    against the 4 k = 20 of K = 5): one block on one device (entries ranked against the
    groups' rows), blocks of 8 (running lists) and pmap (merged lists), by hand. The
    predictions are clipped to 1..5 with the network's spread blown up, so many of them tie
    at 1 and 5 within and across groups (ties: the lower item)."""
    ratings = random_ratings(num_users=40, num_items=200, density=0.1, seed=8)
    width = 40 if orientation == "item" else 200
    got = {}
    for mode, batch in (("jit", 256), ("jit", 8), ("pmap", 8)):
        experiment, state = setup(_config(orientation=orientation, parallel=mode,
                                          eval_batch_size=batch, clip_predictions=True),
                                  ratings)
        params = jax.device_get(state.params)
        params["output"] = {"kernel": params["output"]["kernel"] * 3000.0,
                            "bias": np.full(width, 3.0, np.float32)}
        got[mode, batch] = evaluate(experiment, params, ranking=True)["test"]
        if batch == 256:
            assert experiment.placed.eval_index.shape[0] == 1     # one block
            scores = np.clip(_dense_scores(experiment, params, orientation), 1, 5)
            train_UxI, held_UxI = (_user_item(experiment.train, orientation),
                                   _user_item(experiment.test, orientation))
    candidates = scores[train_UxI == 0]
    assert np.mean(candidates == 5) > 0.1 and np.mean(candidates == 1) > 0.1   # ties
    want = reference(train_UxI, held_UxI, scores)
    assert want["rank_users"] > 20 and 0 < want["recall@5"] < 1
    for run, values in got.items():
        for key, value in want.items():
            np.testing.assert_allclose(values[key], value, rtol=2e-5, atol=1e-6,
                                       err_msg=f"{run} {key}")


class ColumnScores(nn.Module):
    """Every row's reconstruction is `scores_N` as given (no arithmetic, so -0.0 stays)."""

    scores_N: tuple

    @nn.compact
    def __call__(self, ratings_BxN, *, train):
        self.param("unused", nn.initializers.zeros, (1,))
        return jnp.where(ratings_BxN == ratings_BxN, jnp.asarray(self.scores_N, jnp.float32),
                         0.0)


def test_signed_zero_scores_tie_as_equal():
    """Scores of exactly 0.0 and -0.0 (a network that outputs them, U-AutoRec rows): equal,
    so ties by item as NumPy's comparisons say, on every path; `lax.top_k` alone puts 0.0
    before -0.0 and, against `entry_ranks`' comparisons, counts an entry twice."""
    # 30 items: 4 groups of 8 < 4 K, so the candidates are `lax.top_k`'s own K.
    ratings = random_ratings(num_users=40, num_items=30, density=0.3, seed=9)
    kind = np.random.default_rng(0).integers(0, 2, 30)    # K = 5 reaches into the zeros
    kind[[3, 20]] = 2
    scores_N = tuple(np.where(kind == 0, -0.0, np.where(kind == 1, 0.0, 1.0)).tolist())
    for mode, batch in (("jit", 256), ("jit", 8), ("pmap", 8)):
        experiment, state = setup(_config(orientation="user", parallel=mode,
                                          eval_batch_size=batch), ratings,
                                  model=ColumnScores(scores_N))
        got = evaluate(experiment, state.params, ranking=True)["test"]
        scores = np.broadcast_to(np.asarray(scores_N), (40, 30))
        want = reference(_user_item(experiment.train, "user"),
                         _user_item(experiment.test, "user"), scores)
        assert want["rank_users"] >= 10 and 0 < want["recall@5"] < 1
        for key, value in want.items():
            np.testing.assert_allclose(got[key], value, rtol=2e-5, atol=1e-6,
                                       err_msg=f"{mode} {batch} {key}")


@pytest.mark.parametrize("orientation", ["item", "user"])
def test_every_parallel_mode_agrees(orientation):
    ratings = random_ratings(num_users=40, num_items=30, density=0.3, seed=3)
    runs = {}
    for mode, model_parallel in (("jit", 1), ("pmap", 1), ("sharded", 1), ("sharded", 2)):
        config = _config(orientation=orientation, parallel=mode, valid_ratio=0.1,
                         model_parallel=model_parallel)
        experiment, state = setup(config, ratings)
        runs[(mode, model_parallel)] = evaluate(experiment, state.params, ranking=True)
    base = runs[("jit", 1)]
    for key, scores in runs.items():
        for name in ("valid", "test"):
            for metric, value in base[name].items():
                np.testing.assert_allclose(scores[name][metric], value, rtol=1e-5, atol=1e-7,
                                           err_msg=f"{key} {name} {metric}")


def test_ranking_does_not_change_rmse():
    ratings = random_ratings(num_users=40, num_items=30, density=0.3, seed=4)
    experiment, state = setup(_config(parallel="jit", cold_start="item-mean"), ratings)
    plain = evaluate(experiment, state.params)["test"]
    ranked = evaluate(experiment, state.params, ranking=True)["test"]
    for key in plain:
        np.testing.assert_allclose(ranked[key], plain[key], rtol=1e-6, equal_nan=True)


def test_select_metric_keeps_the_best_validation_ndcg_epoch(tmp_path):
    ratings = random_ratings(num_users=40, num_items=30, density=0.3, seed=5)
    config = _config(parallel="jit", epochs=4, valid_ratio=0.2, select="best", lr=0.05,
                     select_metric="valid_ndcg@5")
    result = train_and_evaluate(config, tmp_path / "run", ratings=ratings)
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    ndcg = [r["valid_ndcg@5"] for r in history]
    assert len(set(ndcg)) > 1            # the epochs differ, so the pick is a real one
    assert result.summary["selection"]["best_epoch"] == int(np.argmax(ndcg)) + 1
    assert result.summary["selection"]["rule"].startswith("best validation ndcg@5")
    # The chosen params' validation score is the best epoch's.
    np.testing.assert_allclose(result.summary["valid_ndcg@5"], max(ndcg), rtol=1e-6)
    assert "test_recall@5" in result.summary and result.summary["ranking"]["k"] == [3, 5]


def test_ranking_config_is_checked():
    with pytest.raises(ConfigError, match="select_metric"):
        _config(select_metric="valid_ndcg@7")          # 7 is not a cut-off
    with pytest.raises(ConfigError, match="ranking is off"):
        _config(select_metric="valid_ndcg@5", ranking="off")
    with pytest.raises(ConfigError, match="ranking_k"):
        config_lib.replace(config_lib.tiny(), ranking_k=(0,))
    assert config_lib.tiny().train.ranking == "off"   # tests' runs skip it unless asked


def test_compare_prefers_the_higher_ranking_metric():
    a = pd.DataFrame({"label": ["s0", "s1", "s2"], "test_rmse": [0.90, 0.91, 0.92],
                      "test_ndcg@10": [0.30, 0.32, 0.31]})
    b = a.assign(test_rmse=a["test_rmse"] + [0.01, 0.02, 0.015],
                 **{"test_ndcg@10": a["test_ndcg@10"] + [0.01, 0.02, 0.015]})
    assert compare(a, b)["better"] == "a"                        # lower RMSE
    assert compare(a, b, metric="test_ndcg@10")["better"] == "b"  # higher NDCG
    assert "higher test ndcg@10" in "\n".join(format_comparison(
        compare(a, b, metric="test_ndcg@10")))


@pytest.mark.parametrize("together", [False, True])
def test_a_run_without_selection_reports_the_final_ranking(together):
    """The last epoch's scores are a plain run's final ones: they carry the ranking metrics
    (alone, and as a member of train_many), equal to an evaluation of the saved params."""
    ratings = random_ratings(num_users=40, num_items=30, density=0.3, seed=6)
    config = _config(parallel="jit", epochs=2)
    if together:
        result = train_many([config, config_lib.replace(config, seed=1)], [None, None],
                            ratings=ratings)[0]
    else:
        result = train_and_evaluate(config, ratings=ratings)
    want = evaluate(result.experiment, result.params, ("test",), ranking=True)["test"]
    for key in ("ndcg@5", "recall@3", "heldout_ndcg", "mrr@5"):
        np.testing.assert_allclose(result.summary[f"test_{key}"], want[key], rtol=1e-6)


def _running_topk_reference(carry, scores_UxB, items_B, relevant_BxU):
    """The fold before the grouped top k and the merge by counts: the block's `lax.top_k`
    over [U, B], then `lax.top_k` over the 2k of carry and block (the carry first on ties)."""
    k = carry[0].shape[1]
    num_users, block = scores_UxB.shape
    if block > k:
        block_UxK, top_UxK = jax.lax.top_k(scores_UxB, k)
    else:
        block_UxK, top_UxK = scores_UxB, jnp.broadcast_to(jnp.arange(block), scores_UxB.shape)
    found = (block_UxK, items_B[top_UxK], relevant_BxU[top_UxK, jnp.arange(num_users)[:, None]])
    joined = [jnp.concatenate([mine, theirs], axis=1) for mine, theirs in zip(carry, found)]
    _, order_UxK = jax.lax.top_k(joined[0], k)
    return tuple(jnp.take_along_axis(x, order_UxK, axis=1) for x in joined)


def test_fast_paths_equal_the_reference_paths_with_ties_and_several_blocks():
    """The grouped top k, the merge by counts (and its skip for one block) and the held-out
    ranks from single-key sorts give what the plain `lax.top_k` / multi-key sort paths give,
    on scores full of ties, -inf (no candidate) and a user with fewer candidates than k."""
    rng = np.random.default_rng(7)
    num_items, num_users, k = 700, 6, 5
    scores_IxU = np.round(rng.normal(size=(num_items, num_users)))   # ties, in and across groups
    scores_IxU[rng.random(scores_IxU.shape) < 0.3] = -np.inf
    scores_IxU[:, 0] = -np.inf
    scores_IxU[[3, 650], 0] = 1.0                                           # 2 candidates < k
    scores_IxU[[697, 698], 1] = 9.0           # user 1's best two: in the shorter last group
    relevant_IxU = rng.random(scores_IxU.shape) < 0.2
    relevant_IxU[:, 0] = True          # user 0's -inf slots too (no candidate: not counted)
    users, items = np.nonzero(rng.random((30, 40)) < 0.4)
    order = rng.permutation(len(users))
    entries = {"user_E": users[order], "item_E": items[order],
               "rating_E": rng.integers(1, 6, len(users)).astype(np.float32),
               "pred_E": (np.round(rng.normal(size=len(users)) * 2) / 2).astype(np.float32),
               "valid_E": rng.random(len(users)) > 0.1}           # tied predictions, padding

    @jax.jit   # one compilation for all of it
    def both_ways(scores_IxU, relevant_IxU, entries):
        out = {"grouped": ranking.block_top_k(scores_IxU, k),
               "plain": jax.lax.top_k(scores_IxU.T, k),
               "grouped_by_user": ranking.block_top_k(scores_IxU.T, k, rows_first=False)}
        # Blocks of 250 (grouped), 3 (narrower than k), 447 (grouped, a shorter last group).
        fast = slow = ranking.empty_topk(num_users, k)
        for start, stop in ((0, 250), (250, 253), (253, num_items)):
            block = (scores_IxU[start:stop].T, jnp.arange(start, stop), relevant_IxU[start:stop])
            fast, slow = ranking.running_topk(fast, *block), _running_topk_reference(slow, *block)
        whole = (scores_IxU.T, jnp.arange(num_items), relevant_IxU)
        out.update(fast=fast, slow=slow, single=ranking.running_topk(
            ranking.empty_topk(num_users, k), *whole, carry_is_empty=True),
            single_slow=_running_topk_reference(ranking.empty_topk(num_users, k), *whole),
            packed=heldout_ranking.heldout_ndcg_sums(**entries, num_users=30, ks=(2, 5),
                                                     num_items=40),
            sorted=heldout_ranking.heldout_ndcg_sums(**entries, num_users=30, ks=(2, 5)))
        return out

    out = jax.device_get(both_ways(jnp.asarray(scores_IxU, jnp.float32),
                                   jnp.asarray(relevant_IxU), entries))
    for got, want in [*zip(out["grouped"], out["plain"]),
                      *zip(out["grouped_by_user"], out["plain"]), *zip(out["fast"], out["slow"]),
                      (out["single"][0], out["single_slow"][0]),
                      (out["single"][2], out["single_slow"][2])]:
        np.testing.assert_array_equal(got, want)
    assert out["packed"]["heldout_users"] == out["sorted"]["heldout_users"] > 20
    for key, value in out["sorted"].items():
        np.testing.assert_allclose(out["packed"][key], value, rtol=1e-6, err_msg=key)


def test_prepared_heldout_order_matches_numpy_by_hand():
    """`prepare_heldout`'s pieces (places, ranks, ideal DCG weights at every cut-off, the
    counted users) by hand, then `heldout_ndcg_prepared` on shuffled entries with padding
    slots, predictions tied within users (the lower item first) and users with one held-out
    rating, against `reference` and against `heldout_ndcg_sums` (the device-only path)."""
    users = np.array([2, 0, 0, 0, 1, 2, 2, 2, 3, 3, 4])
    items = np.array([4, 2, 0, 1, 3, 1, 0, 3, 0, 1, 2])
    ratings = np.array([5, 3, 1, 4, 5, 2, 5, 3, 5, 2, 0.5], np.float32)
    # User 2: item 1 best, then items 0, 3, 4 tied; user 0: items 0, 2 tied; user 3: tied.
    preds = np.array([2.0, 2.0, 2.0, 1.0, 3.0, 4.0, 2.0, 2.0, 1.0, 1.0, 3.0], np.float32)
    ks = (1, 2)
    slot, order = heldout_ranking.prepare_heldout(users, items, ratings, 5, ks, size=14)
    by_hand = sorted(range(len(users)), key=lambda e: (users[e], items[e]))
    np.testing.assert_array_equal(slot[by_hand], np.arange(len(users)))
    assert order.user_P.tolist() == [0, 0, 0, 1, 2, 2, 2, 2, 3, 3, 4, 5, 5, 5]
    assert order.rank_P.tolist() == [0, 1, 2, 0, 0, 1, 2, 3, 0, 1, 0, 0, 0, 0]
    counted = (0, 2, 3)                     # users 1 and 4 have one held-out rating each
    assert np.flatnonzero(order.first_P).tolist() == [0, 4, 8]
    for e in range(len(users)):
        u, place = users[e], int(slot[e])
        gains = np.sort(2.0 ** ratings[users == u] - 1.0)[::-1]
        for c, cut in enumerate([len(gains), *ks]):
            ideal = sum(g / np.log2(i + 2) for i, g in enumerate(gains[:cut]))
            want = (2.0 ** ratings[e] - 1.0) / ideal if u in counted else 0.0
            np.testing.assert_allclose(order.weight_PxC[place, c], want, rtol=1e-6)
    assert not order.weight_PxC[len(users):].any()
    # The device part, from shuffled entries and two padding slots.
    take = np.random.default_rng(1).permutation(len(users))
    take = np.concatenate([take, take[:2]])
    valid = np.arange(len(take)) < len(users)
    entries = [jnp.asarray(x[take]) for x in (slot, users, items, ratings, preds)]
    got = jax.jit(heldout_ranking.heldout_ndcg_prepared, static_argnums=(4, 5))(
        order, entries[0], entries[4], jnp.asarray(valid), 5, ks)
    device_only = heldout_ranking.heldout_ndcg_sums(*entries[1:], jnp.asarray(valid), 5, ks)
    held_UxI, scores_UxI = np.zeros((5, 5)), np.zeros((5, 5))
    held_UxI[users, items], scores_UxI[users, items] = ratings, preds
    want = reference(np.ones((5, 5)), held_UxI, scores_UxI, ks=ks)
    assert float(got["heldout_users"]) == want["heldout_users"] == 3
    for key in ("heldout_ndcg", *(f"heldout_ndcg@{k}" for k in ks)):
        np.testing.assert_allclose(float(got[key]) / 3, want[key], rtol=1e-6, err_msg=key)
        np.testing.assert_allclose(got[key], device_only[key], rtol=1e-6, err_msg=key)
    # Not every user's rows on this device (a user-rows share): only the given users count.
    mine = valid & np.isin(users[take], [0, 1, 3])
    part = heldout_ranking.heldout_ndcg_prepared(order, entries[0], entries[4],
                                                 jnp.asarray(mine), 5, ks)
    part_want = reference(np.ones((5, 5)), held_UxI * np.isin(np.arange(5), [0, 1, 3])[:, None],
                          scores_UxI, ks=ks)
    assert float(part["heldout_users"]) == part_want["heldout_users"] == 2
    np.testing.assert_allclose(float(part["heldout_ndcg"]) / 2, part_want["heldout_ndcg"],
                               rtol=1e-6)


def test_placed_heldout_sets_carry_their_order():
    """Every whole-split layout places the held-out sets with their `HeldoutOrder` (the
    evaluator's fast path: test_every_parallel_mode_agrees checks its results)."""
    ratings = random_ratings(num_users=40, num_items=30, density=0.3, seed=3)
    for mode in ("jit", "pmap", "sharded"):
        experiment, _ = setup(_config(parallel=mode, valid_ratio=0.1), ratings)
        for name, data in experiment.placed.heldout.items():
            rows = experiment.data.heldout_rows[name]
            assert data.ranking is not None, (mode, name)
            assert data.ranking.user_P.shape[-1] == max(
                r.nnz for r in experiment.data.heldout_rows.values()) >= rows.nnz
            assert heldout_ranking.SLOT in data.targets.fields
