"""Named datasets: MovieLens 100K, 1M, 10M, 20M, 25M, latest-small; sources, checksums, formats.

MovieLens 100K is verified file by file (the official SHA-256 of `u.data`), so it can also
come from the package-index fallback. The others are verified as whole archives against the
digests published for them (GroupLens' MD5 sidecars, and the SHA-256 values recorded by
TensorFlow Datasets), then their ratings member is read from the archive in memory.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from autorec_jax.data.archives import zip_member
from autorec_jax.data.ratings import Ratings
from autorec_jax.data.readers import Format, read_ratings
from autorec_jax.data.sources import (FileSpec, locate, pip_wheel_source, url_member_source,
                                      url_source)
from autorec_jax.errors import ConfigError, DataError

log = logging.getLogger(__name__)

BASE_URL = "https://files.grouplens.org/datasets/movielens/"
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
    dataset="ml-100k", filename="u.data", digests={"sha256": ML100K_SHA256},
    sources=(url_member_source(BASE_URL + "ml-100k.zip", "ml-100k/u.data"),
             pip_wheel_source(RECBOLE_WHEEL, RECBOLE_ML100K, recbole_inter_to_udata)))
UDATA = Format(sep="\t", columns=("user", "item", "rating", "timestamp"), header="no",
               rating_scale=(1.0, 5.0), id_type="int")


def _archive(name: str, digests: dict, member: str, fmt: Format) -> tuple:
    spec = FileSpec(dataset=name, filename=f"{name}.zip", digests=digests,
                    sources=(url_source(BASE_URL + f"{name}.zip"),))
    return spec, member, fmt


DOUBLE_COLON = dict(sep="::", header="no", id_type="int")
CSV_HEADER = dict(sep=",", header="yes", id_type="int")
ARCHIVES = {
    "ml-1m": _archive("ml-1m", {
        "md5": "c4d9eecfca2ab87c1945afe126590906",
        "sha256": "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"},
        "ml-1m/ratings.dat", Format(rating_scale=(1.0, 5.0), **DOUBLE_COLON)),
    "ml-10m": _archive("ml-10m", {"md5": "ce571fd55effeba0271552578f2648bd"},
                       "ml-10M100K/ratings.dat", Format(rating_scale=(0.5, 5.0), **DOUBLE_COLON)),
    "ml-20m": _archive("ml-20m", {
        "md5": "cd245b17a1ae2cc31bb14903e1204af3",
        "sha256": "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3"},
        "ml-20m/ratings.csv", Format(rating_scale=(0.5, 5.0), **CSV_HEADER)),
    "ml-25m": _archive("ml-25m", {
        "md5": "6b51fb2759a8657d3bfcbfc42b592ada",
        "sha256": "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa"},
        "ml-25m/ratings.csv", Format(rating_scale=(0.5, 5.0), **CSV_HEADER)),
    # GroupLens regenerates "latest" now and then; this is the archive TFDS recorded.
    "ml-latest-small": _archive("ml-latest-small", {
        "sha256": "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436"},
        "ml-latest-small/ratings.csv", Format(rating_scale=(0.5, 5.0), **CSV_HEADER)),
}
DATASETS = ("ml-100k",) + tuple(ARCHIVES)


def parse_udata(path) -> Ratings:
    """Parses a u.data-format file: user, item, rating, timestamp; tab-separated integers."""
    return read_ratings(path, UDATA)


def load(name: str, *, data_dir=None, cache_dir=None, duplicates: str | None = None
         ) -> Ratings:
    """Loads a named dataset through its verified sources (see `sources.locate`).

    With `data_dir`, an archive there is verified like a download; an already extracted
    ratings file there (e.g. ratings.dat, or ml-1m/ratings.dat) is used as it is, with a
    warning, since no checksum is published for extracted files.
    """
    if name == "ml-100k":
        return parse_udata(locate(ML100K, data_dir=data_dir, cache_dir=cache_dir))
    if name not in ARCHIVES:
        raise ConfigError(f"data.dataset must be one of {', '.join(DATASETS)}, got {name!r}")
    spec, member, fmt = ARCHIVES[name]
    if duplicates is not None:
        fmt = Format(**{**fmt.__dict__, "duplicates": duplicates})
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        for candidate in (root / Path(member).name, root / member):
            if candidate.is_file():
                log.warning("using the extracted %s as it is: GroupLens publishes checksums "
                            "for the archive only", candidate)
                return read_ratings(candidate, fmt)
    archive = locate(spec, data_dir=data_dir, cache_dir=cache_dir)
    return read_ratings(None, fmt, data=zip_member(archive, member), name=f"{archive}:{member}")


def summary(ratings: Ratings) -> dict:
    """Counts, density and the rating histogram of some ratings."""
    histogram = pd.Series(ratings.ratings).value_counts(sort=False).sort_index()
    values, counts = histogram.index.to_numpy(), histogram.to_numpy()
    cells = ratings.num_users * ratings.num_items
    out = {"ratings": len(ratings), "users": ratings.num_users, "items": ratings.num_items,
           "density": len(ratings) / cells if cells else 0.0,
           "histogram": {f"{v:g}": int(c) for v, c in zip(values, counts)}}
    if ratings.timestamps is not None and len(ratings):
        out["first_timestamp"] = int(ratings.timestamps.min())
        out["last_timestamp"] = int(ratings.timestamps.max())
    return out
