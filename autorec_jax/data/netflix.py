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
CHUNK_BYTES = 64 << 20  # text parsed at a time


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
                 duplicates: str = "error", chunk_bytes: int = CHUNK_BYTES) -> Ratings:
    """Ratings from a Netflix-layout folder or file (users = customers, items = movies).

    Files are read in chunks of about `chunk_bytes`, cut at line ends, and each chunk is
    parsed into compact arrays (int32 ids and days, float32 ratings; dates become day
    numbers without holding a string per line), so the reader holds one chunk of text at a
    time: its memory is about 16 bytes per rating plus the chunk, not the files' size.

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
    parts = [part for f in files for part in _parse_file(f, str(f), rating_scale, chunk_bytes)]
    movies, customers, ratings, days = (np.concatenate(x) for x in zip(*parts))
    del parts
    return Ratings.from_raw(customers, movies, ratings, days.astype(np.int64) * 86400,
                            source=str(p), duplicates=duplicates)


def _parse_file(path: Path, shown: str, rating_scale, chunk_bytes: int) -> list[tuple]:
    """A file's ratings as a list of per-chunk (movies, customers, ratings, days) arrays."""
    parts, movie, first_line, tail = [], None, 1, b""
    with open(path, "rb") as f:
        while True:
            block = f.read(max(chunk_bytes, 1))
            data = tail + block
            if block:
                cut = data.rfind(b"\n") + 1
                if cut == 0:  # no line end yet: read on
                    tail = data
                    continue
                data, tail = data[:cut], data[cut:]
            if data.strip():
                movie, part = _parse(data, shown, rating_scale, movie, first_line)
                parts.append(part)
            first_line += data.count(b"\n")
            if not block:
                break
    if not parts:
        raise DataError("the file holds no ratings (it is empty or blank)", path=shown)
    return parts


def _parse(data: bytes, shown: str, rating_scale, movie: int | None, first_line: int
           ) -> tuple[int | None, tuple[np.ndarray, ...]]:
    """One chunk of whole lines; lines before its first header belong to `movie`.

    Returns (the movie the chunk ends in, its arrays).
    """
    headers = list(HEADER.finditer(data))
    first_content = re.search(rb"\S", data)
    if movie is None and (not headers or headers[0].start() > first_content.start()):
        line = first_line + data.count(b"\n", 0, first_content.start())
        raise DataError("expected a 'MovieID:' line before the ratings (Netflix Prize "
                        "layout); for a plain ratings file use --ratings-format delimited",
                        path=shown, line=line)
    starts = [0] + [h.end() + 1 for h in headers]
    ends = [h.start() for h in headers] + [len(data)]
    ids = [movie] + [int(h.group(1)) for h in headers]
    segments, movie_ids, counts = [], [], []
    for movie_id, begin, end in zip(ids, starts, ends):
        segment = data[begin:end] if begin < len(data) else b""
        if not segment:
            continue
        if not segment.endswith(b"\n"):
            segment += b"\n"
        segments.append(segment)
        movie_ids.append(movie_id)
        counts.append(segment.count(b"\n"))
    # "YYYY-MM-DD" -> three integer fields: no string object per line.
    body = b"".join(segments).replace(b"-", b",")
    try:
        frame = pd.read_csv(io.BytesIO(body), sep=",", header=None, engine="c",
                            names=["customer", "rating", "year", "month", "day"],
                            dtype={"customer": np.int64, "rating": np.float32,
                                   "year": np.int32, "month": np.int32, "day": np.int32},
                            skip_blank_lines=False, na_filter=False, encoding="utf-8")
        if len(frame) != sum(counts):
            raise ValueError("row count")
        days = _day_numbers(frame["year"].to_numpy(), frame["month"].to_numpy(),
                            frame["day"].to_numpy())
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError, OverflowError):
        _scan(data, shown, first_line=first_line)
        raise DataError("could not be parsed (no single bad line found)", path=shown) from None
    del body
    ratings = frame["rating"].to_numpy(np.float32)
    low, high = rating_scale
    bad = np.flatnonzero(~np.isfinite(ratings) | (ratings < low) | (ratings > high))
    if len(bad):
        _scan(data, shown, rating_scale, first_line=first_line)
    customers = frame["customer"].to_numpy()
    if len(customers) and 0 <= customers.min() and customers.max() < 2**31:
        customers = customers.astype(np.int32)
    movies = np.repeat(np.asarray(movie_ids, np.int32), counts)
    return ids[-1], (movies, customers, ratings, days)


def _day_numbers(year: np.ndarray, month: np.ndarray, day: np.ndarray) -> np.ndarray:
    """int32 days since 1970-01-01 of valid calendar dates; ValueError for any other."""
    if len(year) and not ((year.min() >= 1000) & (year.max() <= 9999) & (month.min() >= 1)
                          & (month.max() <= 12) & (day.min() >= 1) & (day.max() <= 31)):
        raise ValueError("date out of range")
    months = (year - 1970).astype("datetime64[Y]").astype("datetime64[M]") + (month - 1)
    dates = months.astype("datetime64[D]") + (day - 1)
    if np.any(dates.astype("datetime64[M]") != months):  # e.g. 2005-02-30
        raise ValueError("no such day")
    return dates.astype(np.int64).astype(np.int32)


def _scan(data: bytes, shown: str, rating_scale=None, first_line: int = 1) -> None:
    """Raises DataError at the first malformed line (`data` starts at line `first_line`)."""
    for number, raw in enumerate(data.splitlines(), start=first_line):
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
