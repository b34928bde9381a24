"""One entry point from the data config to `Ratings` and its split."""

from __future__ import annotations

from autorec_jax.data import movielens, netflix, splits
from autorec_jax.data.ratings import Ratings
from autorec_jax.data.readers import read_ratings


def load_ratings(data, cache_dir=None) -> Ratings:
    """The ratings `data` (a DataConfig) names: its `ratings` file, else its dataset."""
    if data.ratings is None:
        return movielens.load(data.dataset, data_dir=data.data_dir, cache_dir=cache_dir,
                              duplicates=data.duplicates)
    kind = data.ratings_format
    if kind == "auto":
        kind = "netflix" if netflix.looks_like_netflix(data.ratings) else "delimited"
    if kind == "netflix":
        scale = tuple(data.rating_scale) if data.rating_scale is not None else (1.0, 5.0)
        return netflix.read_netflix(data.ratings, rating_scale=scale,
                                    duplicates=data.duplicates)
    return read_ratings(data.ratings, data.format())


def dataset_label(data) -> str:
    return f"file:{data.ratings}" if data.ratings is not None else data.dataset


def load_split(data, seed: int, ratings: Ratings | None = None, cache_dir=None
               ) -> tuple[Ratings, Ratings, Ratings]:
    """(train, valid, test) Ratings in one id space; valid is empty without a carve-out."""
    if ratings is None:
        ratings = load_ratings(data, cache_dir)
    parts = splits.make_split(ratings, data.split, seed=seed, test_ratio=data.test_ratio,
                              valid_ratio=data.valid_ratio, folds=data.folds, fold=data.fold,
                              leave_last=data.leave_last)
    return ratings.take(parts.train), ratings.take(parts.valid), ratings.take(parts.test)
