"""Splits: the book's random and seq-aware splits, reproduced draw for draw."""

import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from autorec_jax.data import splits
from autorec_jax.data.movielens import parse_udata
from autorec_jax.errors import ConfigError, DataError
from synthetic import random_ratings


def book_random_split(data: pd.DataFrame, seed: int, test_ratio: float = 0.1):
    """d2l's split_data_ml100k, split_mode='random', after np.random.seed(seed)."""
    np.random.seed(seed)
    mask = [True if x == 1 else False
            for x in np.random.uniform(0, 1, (len(data))) < 1 - test_ratio]
    neg_mask = [not x for x in mask]
    return data[mask], data[neg_mask]


def book_seq_aware_split(data: pd.DataFrame, num_users: int):
    """d2l's split_data_ml100k, split_mode='seq-aware', verbatim in logic."""
    train_items, test_items, train_list = {}, {}, []
    for line in data.itertuples():
        u, i, rating, time = line[1], line[2], line[3], line[4]
        train_items.setdefault(u, []).append((u, i, rating, time))
        if u not in test_items or test_items[u][-1] < time:
            test_items[u] = (i, rating, time)
    for u in range(1, num_users + 1):
        train_list.extend(sorted(train_items[u], key=lambda k: k[3]))
    test_data = [(key, *value) for key, value in test_items.items()]
    train_data = [item for item in train_list if item not in test_data]
    return pd.DataFrame(train_data), pd.DataFrame(test_data)


def frame(r):
    return pd.DataFrame({"user_id": r.user_ids[r.users], "item_id": r.item_ids[r.items],
                         "rating": r.ratings.astype(int), "timestamp": r.timestamps})


def as_set(df):
    return set(map(tuple, np.asarray(df)[:, :4].astype(np.int64).tolist()))


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_random_split_equals_the_books_split(seed):
    r = random_ratings(num_users=60, num_items=50, seed=seed)
    train_index, test_index = splits.random_split(r, 0.1, seed)
    book_train, book_test = book_random_split(frame(r), seed)
    np.testing.assert_array_equal(train_index, np.asarray(book_train.index))
    np.testing.assert_array_equal(test_index, np.asarray(book_test.index))


def test_random_split_leaves_numpy_global_state_alone():
    np.random.seed(123)
    expected = np.random.uniform()
    np.random.seed(123)
    splits.random_split(random_ratings(), 0.1, 5)
    assert np.random.uniform() == expected


def test_seq_aware_split_equals_the_books_split_with_timestamp_ties():
    r = random_ratings(num_users=30, num_items=25, seed=2)
    # Force ties on the latest timestamp for some users: the first in file order must win.
    times = r.timestamps.copy()
    for user in range(0, r.num_users, 3):
        mine = np.flatnonzero(r.users == user)
        times[mine] = times[mine].max()
    r = r.__class__(r.users, r.items, r.ratings, times, r.user_ids, r.item_ids)
    train, test = splits.split(r, "seq-aware", test_ratio=0.1, seed=0)
    book_train, book_test = book_seq_aware_split(frame(r), r.num_users)
    assert as_set(frame(train)) == as_set(book_train)
    assert as_set(frame(test)) == as_set(book_test)
    assert len(test) == r.num_users


@pytest.mark.parametrize("kind", ["random", "seq-aware"])
def test_splits_partition_the_ratings(kind):
    r = random_ratings(seed=4)
    if kind == "random":
        train_index, test_index = splits.random_split(r, 0.25, 4)
    else:
        train_index, test_index = splits.seq_aware_split(r)
    both = np.concatenate([train_index, test_index])
    np.testing.assert_array_equal(np.sort(both), np.arange(len(r)))


def test_seq_aware_split_without_timestamps_is_an_error():
    with pytest.raises(DataError, match="timestamps"):
        splits.seq_aware_split(random_ratings(timestamps=False))


# --- the other splits --------------------------------------------------------------------

ALL = [("random", {}), ("seq-aware", {}), ("ratio", {"test_ratio": 0.2}),
       ("kfold", {"folds": 4, "fold": 2}), ("leave-last", {"leave_last": 2}),
       ("random", {"valid_ratio": 0.1}), ("kfold", {"valid_ratio": 0.25})]


@pytest.mark.parametrize("kind, options", ALL)
def test_every_split_partitions_the_ratings_and_is_a_function_of_the_seed(kind, options):
    r = random_ratings(num_users=25, num_items=30, seed=8)
    parts = splits.make_split(r, kind, seed=3, **options)
    both = np.concatenate([parts.train, parts.valid, parts.test])
    np.testing.assert_array_equal(np.sort(both), np.arange(len(r)))
    for part in (parts.train, parts.valid, parts.test):
        assert np.all(np.diff(part) > 0)  # ascending file order
    again = splits.make_split(r, kind, seed=3, **options)
    for a, b in zip((parts.train, parts.valid, parts.test), (again.train, again.valid,
                                                             again.test)):
        np.testing.assert_array_equal(a, b)


def test_ratio_split_and_valid_carve_out_have_exact_sizes():
    r = random_ratings(num_users=30, num_items=30, seed=1)
    parts = splits.make_split(r, "ratio", seed=0, test_ratio=0.2, valid_ratio=0.1)
    assert len(parts.test) == round(0.2 * len(r))
    assert len(parts.valid) == round(0.1 * (len(r) - len(parts.test)))
    other = splits.make_split(r, "ratio", seed=1, test_ratio=0.2)
    assert not np.array_equal(parts.test, other.test)


def test_kfold_test_parts_cover_every_rating_exactly_once():
    r = random_ratings(seed=2)
    tests = [splits.make_split(r, "kfold", seed=5, folds=5, fold=k).test for k in range(5)]
    np.testing.assert_array_equal(np.sort(np.concatenate(tests)), np.arange(len(r)))
    sizes = [len(t) for t in tests]
    assert max(sizes) - min(sizes) <= 1


def test_leave_last_takes_each_users_latest_ratings_and_keeps_one_for_training():
    r = random_ratings(num_users=20, num_items=15, seed=6)
    train, test = splits.leave_last_split(r, 3)
    for user in range(r.num_users):
        mine = np.flatnonzero(r.users == user)
        latest_first = mine[np.lexsort((mine, r.timestamps[mine]))][::-1]
        expected = latest_first[:min(3, len(mine) - 1)]
        assert set(test[np.isin(test, mine)]) == set(expected)
        assert np.isin(mine, train).any()


@pytest.mark.parametrize("kind, options, message", [
    ("kfold", {"folds": 3, "fold": 3}, "data.fold"),
    ("leave-last", {"leave_last": 0}, "data.leave_last"),
    ("ml100k-u1", {}, "needs u.data's 100000 ratings"),
    ("random", {"valid_ratio": 1.0}, "data.valid_ratio"),
    ("bogus", {}, "data.split must be one of"),
])
def test_impossible_split_options_are_config_errors(kind, options, message):
    with pytest.raises(ConfigError, match=message):
        splits.make_split(random_ratings(), kind, seed=0, **options)


def synthetic_udata(tmp_path):
    """100,000 distinct ratings with timestamps, in random order (a stand-in for u.data)."""
    rng = np.random.default_rng(0)
    keys = rng.choice(943 * 1682, 100_000, replace=False)
    lines = [f"{k // 1682 + 1}\t{k % 1682 + 1}\t{rng.integers(1, 6)}\t{880000000 + i}"
             for i, k in enumerate(keys)]
    path = tmp_path / "u.data"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.skipif(not (shutil.which("perl") and shutil.which("sort")),
                    reason="needs perl and sort to run the official scripts' logic")
def test_ml100k_official_splits_equal_mku_sh_and_allbut_pl(tmp_path):
    """Runs the logic of ml-100k's mku.sh (head/tail/sort) and allbut.pl (perl) on a
    u.data-shaped file and compares each test set with the rebuilt split."""
    udata = synthetic_udata(tmp_path)
    ratings = parse_udata(udata)
    allbut = ("perl -ne '($u) = split; $c{$u}++; "
              "if ($c{$u} >= $ARGV_START && $c{$u} <= $ARGV_STOP) { print } '")
    for k in range(1, 6):
        script = (f"head -{k * 20000} {udata} | tail -20000 | "
                  "sort -t\"$(printf '\\t')\" -k 1,1n -k 2,2n")
        expected = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                                  check=True).stdout.splitlines()
        _, test = splits.ml100k_split(ratings, f"ml100k-u{k}")
        assert sorted(lines_of(ratings, test)) == sorted(expected)
    for name, start, stop in (("ua", 1, 10), ("ub", 11, 20)):
        script = allbut.replace("$ARGV_START", str(start)).replace("$ARGV_STOP", str(stop))
        expected = subprocess.run(["sh", "-c", f"{script} {udata}"], capture_output=True,
                                  text=True, check=True).stdout.splitlines()
        train, test = splits.ml100k_split(ratings, f"ml100k-{name}")
        assert sorted(lines_of(ratings, test)) == sorted(expected)
        assert len(test) == 10 * ratings.num_users and len(train) == 100_000 - len(test)


def lines_of(ratings, index):
    return [f"{ratings.user_ids[ratings.users[i]]}\t{ratings.item_ids[ratings.items[i]]}\t"
            f"{int(ratings.ratings[i])}\t{ratings.timestamps[i]}" for i in index]
