"""The Netflix Prize layout: per movie a `MovieID:` line, then `CustomerID,Rating,Date` lines.

Accepts the official folder of `mv_*.txt` files (one movie each) or files that hold many
movies one after another (as the Kaggle `combined_data_*.txt`). Dates become timestamps
(seconds since 1970-01-01, UTC midnight).
"""

from __future__ import annotations

import datetime
import io
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from autorec_jax.data.ratings import Ratings
from autorec_jax.errors import DataError

HEADER = re.compile(rb"^[ \t]*(\d+):[ \t]*\r?$", re.M)
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def looks_like_netflix(path: str | os.PathLike) -> bool:
    """A folder with mv_*.txt files, or a file whose first non-blank line is `MovieID:`."""
    p = Path(path)
    if p.is_dir():
        return any(p.glob("mv_*.txt"))
    try:
        with open(p, "rb") as f:
            head = f.read(256)
    except OSError:
        return False
    first = next((line for line in head.splitlines() if line.strip()), b"")
    return HEADER.match(first) is not None


def read_netflix(path: str | os.PathLike, *, rating_scale=(1.0, 5.0),
                 duplicates: str = "error") -> Ratings:
    """Ratings from a Netflix-layout folder or file (users = customers, items = movies).

    Raises:
      DataError: a missing path, a data line before any `MovieID:` line, or a malformed line
        (file and line named).
    """
    p = Path(path)
    if p.is_dir():
        files = sorted(p.glob("mv_*.txt"))
        if not files:
            raise DataError("no mv_*.txt files in this folder; point at the Netflix "
                            "training_set folder or a combined file", path=str(p))
    elif p.is_file():
        files = [p]
    else:
        raise DataError("no such file or folder", path=str(p))
    parts = [_parse(f.read_bytes(), str(f), rating_scale) for f in files]
    movies, customers, ratings, days = (np.concatenate(x) for x in zip(*parts))
    return Ratings.from_raw(customers, movies, ratings, days * 86400, source=str(p),
                            duplicates=duplicates)


def _parse(data: bytes, shown: str, rating_scale) -> tuple[np.ndarray, ...]:
    headers = list(HEADER.finditer(data))
    first_content = re.search(rb"\S", data)
    if first_content is None:
        raise DataError("the file holds no ratings (it is empty or blank)", path=shown)
    if not headers or headers[0].start() > first_content.start():
        line = data.count(b"\n", 0, first_content.start()) + 1
        raise DataError("expected a 'MovieID:' line before the ratings (Netflix Prize "
                        "layout); for a plain ratings file use --ratings-format delimited",
                        path=shown, line=line)
    segments, movie_ids, counts = [], [], []
    for i, header in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(data)
        segment = data[header.end() + 1:end] if header.end() < len(data) else b""
        if segment and not segment.endswith(b"\n"):
            segment += b"\n"
        segments.append(segment)
        movie_ids.append(int(header.group(1)))
        counts.append(segment.count(b"\n"))
    body = b"".join(segments)
    try:
        frame = pd.read_csv(io.BytesIO(body), sep=",", header=None, engine="c",
                            names=["customer", "rating", "date"],
                            dtype={"customer": np.int64, "rating": np.float64, "date": str},
                            skip_blank_lines=False, na_filter=False, encoding="utf-8")
        if len(frame) != sum(counts) or frame["date"].str.len().ne(10).any():
            raise ValueError("row count or date width")
        days = (pd.to_datetime(frame["date"], format="%Y-%m-%d").to_numpy(
            "datetime64[D]").astype(np.int64))
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError, OverflowError):
        _scan(data, shown)
        raise DataError("could not be parsed (no single bad line found)", path=shown) from None
    ratings = frame["rating"].to_numpy(np.float64)
    low, high = rating_scale
    bad = np.flatnonzero(~np.isfinite(ratings) | (ratings < low) | (ratings > high))
    if len(bad):
        _scan(data, shown, rating_scale)
    movies = np.repeat(np.asarray(movie_ids, np.int64), counts)
    return movies, frame["customer"].to_numpy(), ratings, days


def _scan(data: bytes, shown: str, rating_scale=None) -> None:
    """Raises DataError at the first malformed line."""
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise DataError("bytes that are not UTF-8; convert the file to UTF-8", path=shown,
                            line=number) from None
        if not line:
            raise DataError("empty line inside a movie's ratings; remove it", path=shown,
                            line=number)
        if HEADER.match(raw):
            continue
        fields = line.split(",")
        if len(fields) != 3:
            raise DataError(f"{len(fields)} field(s) where CustomerID,Rating,Date (3) are "
                            "expected", path=shown, line=number)
        customer, rating, date = (f.strip() for f in fields)
        try:
            int(customer)
            value = float(rating)
        except ValueError:
            raise DataError(f"customer {customer!r} or rating {rating!r} is not a number",
                            path=shown, line=number) from None
        if not DATE.match(date) or not _valid_date(date):
            raise DataError(f"date {date!r} is not a YYYY-MM-DD date", path=shown, line=number)
        if not np.isfinite(value) or (rating_scale is not None and not (
                rating_scale[0] <= value <= rating_scale[1])):
            raise DataError(f"rating {rating} is outside the scale [{rating_scale[0]:g}, "
                            f"{rating_scale[1]:g}]" if rating_scale else
                            f"rating {rating} is not finite", path=shown, line=number)


def _valid_date(text: str) -> bool:
    try:
        datetime.date.fromisoformat(text)
        return True
    except ValueError:
        return False
