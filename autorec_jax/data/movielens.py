"""MovieLens datasets: where each file comes from, its checksum, and how it is parsed."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from autorec_jax.data.ratings import Ratings
from autorec_jax.data.sources import FileSpec, locate, pip_wheel_source, url_member_source
from autorec_jax.errors import ConfigError, DataError

ML100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
ML100K_SHA256 = "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"
# The same 100,000 ratings, in u.data's order, ship inside this pure-Python wheel.
RECBOLE_WHEEL = "recbole==1.2.1"
RECBOLE_ML100K = "recbole/dataset_example/ml-100k/ml-100k.inter"


def recbole_inter_to_udata(data: bytes) -> bytes:
    """RecBole's ml-100k.inter (header + float columns) written back as u.data's lines."""
    lines = data.decode("utf-8").splitlines()
    if not lines or not lines[0].startswith("user_id"):
        raise DataError("not a RecBole .inter file (no header line)")
    out = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 4:
            raise DataError(f"expected 4 tab-separated fields, got {len(fields)}",
                            path=RECBOLE_ML100K, line=number)
        out.append("\t".join(str(int(float(f))) for f in fields))
    return ("\n".join(out) + "\n").encode("ascii")


ML100K = FileSpec(
    dataset="ml-100k", filename="u.data", sha256=ML100K_SHA256,
    sources=(url_member_source(ML100K_URL, "ml-100k/u.data"),
             pip_wheel_source(RECBOLE_WHEEL, RECBOLE_ML100K, recbole_inter_to_udata)))


def parse_udata(path: str | os.PathLike) -> Ratings:
    """Parses a u.data-format file: user, item, rating, timestamp; tab-separated integers.

    Raises:
      DataError: a line that does not have four integer fields (file and line named).
    """
    try:
        frame = pd.read_csv(path, sep="\t", header=None, dtype=np.int64, engine="c",
                            names=["user", "item", "rating", "timestamp"])
    except (ValueError, pd.errors.ParserError) as err:
        raise DataError(f"not in u.data format (4 tab-separated integers per line): {err}",
                        path=str(path)) from None
    if frame.isna().any().any():
        line = int(np.flatnonzero(frame.isna().any(axis=1).to_numpy())[0]) + 1
        raise DataError("missing field (expected 4 tab-separated integers)", path=str(path),
                        line=line)
    return Ratings.from_raw(frame["user"].to_numpy(), frame["item"].to_numpy(),
                            frame["rating"].to_numpy(np.float32),
                            frame["timestamp"].to_numpy(), source=str(path))


DATASETS = {"ml-100k": (ML100K, parse_udata)}


def load(name: str, *, data_dir=None, cache_dir=None) -> Ratings:
    """Loads a named dataset through its verified sources (see `sources.locate`)."""
    if name not in DATASETS:
        raise ConfigError(f"data.dataset must be one of {', '.join(DATASETS)}, got {name!r}")
    spec, parse = DATASETS[name]
    return parse(locate(spec, data_dir=data_dir, cache_dir=cache_dir))
