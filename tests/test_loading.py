"""load_split refuses splits nothing can be learned or measured from, naming split and fix."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from autorec_jax import config as config_lib
from autorec_jax.data import loading
from autorec_jax.data.ratings import Ratings
from autorec_jax.errors import DataError
from synthetic import random_ratings

REPO = Path(__file__).resolve().parent.parent


def data_config(**overrides):
    return config_lib.replace(config_lib.d2l(), ratings="mine.csv", **overrides).data


def latest_on_new_items(num_users=4, shared_latest=False) -> Ratings:
    """Every user rates item 0 first, then an item of their own (later, the seq-aware test)."""
    users = np.repeat(np.arange(num_users), 2)
    items = np.stack([np.zeros(num_users, int), np.arange(1, num_users + 1)], 1).reshape(-1)
    times = np.tile([1, 2], num_users)
    if shared_latest:  # an extra user rates user 0's own item early, item 0 last: not cold
        users = np.append(users, [num_users, num_users])
        items, times = np.append(items, [1, 0]), np.append(times, [0, 5])
    return Ratings.from_raw(users, items, np.full(len(users), 3.0), times)


@pytest.mark.parametrize("overrides, words", [
    ({"split": "ratio", "test_ratio": 0.01},
     "leaves no test ratings (train 20, valid 0, test 0); raise --test-ratio"),
    ({"split": "ratio", "test_ratio": 0.34, "valid_ratio": 0.99},
     "leaves no training ratings (train 0, valid 13, test 7); lower --valid-ratio"),
    ({"split": "random", "test_ratio": 0.999}, "leaves no training ratings"),
])
def test_empty_train_or_test_is_a_data_error_naming_split_and_fix(overrides, words):
    cells = np.arange(20)  # 5 users x 4 items, every cell rated
    ratings = Ratings.from_raw(cells % 5, cells // 5, np.full(20, 4.0))
    data = data_config(**overrides)
    with pytest.raises(DataError) as info:
        loading.load_split(data, seed=0, ratings=ratings)
    message = str(info.value)
    assert message.startswith(f"split {data.split!r} of file:mine.csv ") and words in message


@pytest.mark.parametrize("orientation", ["item", "user"])
def test_every_test_rating_cold_is_a_data_error(orientation):
    data = data_config(split="seq-aware", orientation=orientation)
    with pytest.raises(DataError, match="all 4 test ratings are cold"):
        loading.load_split(data, seed=0, ratings=latest_on_new_items())


def test_some_cold_test_ratings_are_accepted():
    train, valid, test = loading.load_split(data_config(split="seq-aware"), seed=0,
                                            ratings=latest_on_new_items(shared_latest=True))
    assert (len(train), len(valid), len(test)) == (5, 0, 5)


def test_every_test_user_without_training_ratings_is_refused_for_i_autorec():
    full = Ratings.from_raw([1, 1, 2, 3], [1, 2, 1, 2], [3.0, 4.0, 5.0, 1.0])
    train, test = full.take(np.array([0, 1])), full.take(np.array([2, 3]))
    with pytest.raises(DataError, match="no test rating's user has a training rating"):
        loading.check_split(data_config(), train, full.take(np.zeros(0, int)), test)


def test_valid_may_be_empty():
    ratings = random_ratings(num_users=20, num_items=15, seed=3)
    train, valid, test = loading.load_split(data_config(split="ratio"), seed=0,
                                            ratings=ratings)
    assert len(valid) == 0 and len(train) and len(test)


def test_train_cli_with_an_empty_test_split_exits_1_with_one_line(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("".join(f"{u},{i},3\n" for u in range(1, 5) for i in range(1, 4)))
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), "--ratings",
                           str(path), "--split", "ratio", "--test-ratio", "0.01",
                           "--quiet"],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and "leaves no test ratings" in done.stderr
