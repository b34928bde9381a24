"""Reading delimited ratings files (user, item, rating[, timestamp]) into `Ratings`.

Without explicit columns a file may hold 3 fields (user, item, rating) or 4 (plus a
timestamp); the first data line decides, and every line must then have that many.

Fast path: pandas' C parser with fixed dtypes. Any failure falls back to a line-by-line scan
that finds the first bad line, so every error names the file, the line and the fix. Blank
lines are skipped; quotes are not special (ratings files do not quote).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from autorec_jax.data.ratings import Ratings
from autorec_jax.errors import DataError

ROLES = ("user", "item", "rating", "timestamp")
SKIP = "-"
SEPARATORS = ("\t", "::", ",", ";", "|", " ")
DEFAULT_COLUMNS = {3: ("user", "item", "rating"), 4: ("user", "item", "rating", "timestamp")}
HEADER_CHOICES = ("auto", "yes", "no")
ID_TYPES = ("auto", "int", "str")


@dataclasses.dataclass(frozen=True)
class Format:
    """How to read a delimited ratings file.

    Attributes:
      sep: field separator; None sniffs it from the first line among SEPARATORS.
      columns: the role of each field in file order: user, item, rating, timestamp, or "-"
        to ignore a field; user, item and rating are required. None: user, item, rating
        and an optional timestamp (3 or 4 fields, as the first data line has).
      header: "auto" (a first line whose rating field is not a number is a header), "yes",
        "no".
      rating_scale: (min, max) the ratings must lie in, or None for no check.
      duplicates: repeated (user, item) pairs: "error", "keep-last" (file order), "mean".
      id_type: "auto" (integers when every id parses as one, else strings), "int", "str".
    """

    sep: str | None = None
    columns: tuple[str, ...] | None = None
    header: str = "auto"
    rating_scale: tuple[float, float] | None = None
    duplicates: str = "error"
    id_type: str = "auto"

    def __post_init__(self):
        from autorec_jax.errors import ConfigError
        roles = [c for c in self.columns or ROLES if c != SKIP]
        unknown = [c for c in roles if c not in ROLES]
        if unknown or len(set(roles)) != len(roles) or not {"user", "item", "rating"} <= set(
                roles):
            raise ConfigError(f"data.columns must name user, item and rating once each (and "
                              f"optionally timestamp, '-' to skip a field), got "
                              f"{','.join(self.columns)!r}")
        if self.header not in HEADER_CHOICES:
            raise ConfigError(f"data.header must be one of auto, yes, no, got {self.header!r}")
        if self.id_type not in ID_TYPES:
            raise ConfigError(f"data.id_type must be one of auto, int, str, got {self.id_type!r}")
        if self.sep is not None and (self.sep == "" or "\n" in self.sep or '"' in self.sep):
            raise ConfigError(f"data.sep must be a non-empty separator, got {self.sep!r}")


def read_ratings(path: str | os.PathLike | None, fmt: Format = Format(), *,
                 data: bytes | None = None, name: str | None = None) -> Ratings:
    """Parses a delimited ratings file into `Ratings` (raw ids kept, mapped to indices).

    Args:
      path: the file.
      fmt: the file's format.
      data: the file's bytes, when already in memory (e.g. an archive member).
      name: the name used in messages (default: `path`).

    Raises:
      DataError: the file is missing, empty, not UTF-8, or has a bad line (named with its
        number and the fix), ratings outside the scale, or duplicate pairs under "error".
    """
    source = _Input(path, data, name or str(path))
    layout = _layout(source, fmt)
    fmt = dataclasses.replace(fmt, columns=layout.columns)
    frame = _fast_parse(source, layout.sep, fmt, layout.header, layout.first_line)
    return _to_ratings(frame, source, fmt, layout.header)


@dataclasses.dataclass(frozen=True)
class Layout:
    """What the first data line of a file says about it: separator, columns (a role per
    field), whether that line is a header, and its 1-based number."""

    sep: str
    columns: tuple[str, ...]
    header: bool
    first_line: int


def sniff_layout(path: str | os.PathLike, fmt: Format = Format()) -> Layout:
    """The `Layout` `read_ratings(path, fmt)` would read `path` with (only its head is read).

    Raises:
      DataError: as `read_ratings` does for the file's first data line.
    """
    return _layout(_Input(path, None, str(path)), fmt)


def _layout(source: "_Input", fmt: Format) -> Layout:
    first = _first_data_line(source.head(), source.shown)
    sep = fmt.sep if fmt.sep is not None else _sniff_separator(first, fmt, source.shown)
    if fmt.columns is None:
        fmt = dataclasses.replace(fmt, columns=_default_columns(first, sep, source.shown))
    return Layout(sep=sep, columns=fmt.columns, first_line=first[0],
                  header=_has_header(first, sep, fmt, source.shown))


class _Input:
    """The file being read: its bytes are loaded only when a check or an error needs them."""

    HEAD = 1 << 16

    def __init__(self, path, data: bytes | None, shown: str):
        self.path, self.data, self.shown = path, data, shown
        if data is None:
            p = Path(path)
            if p.is_dir():
                raise DataError("is a folder, not a ratings file; pass the file itself",
                                path=shown)
            if not p.is_file():
                raise DataError("no such file; check the path (or pass --data-dir for a "
                                "named dataset)", path=shown)

    def head(self) -> bytes:
        """At least the first non-blank line (up to where it ends)."""
        if self.data is not None:
            return self.data
        with open(self.path, "rb") as f:
            chunk = f.read(self.HEAD)
            while not (chunk.strip() and b"\n" in chunk.lstrip()):
                more = f.read(self.HEAD)
                if not more:
                    break
                chunk += more
        return chunk

    def bytes(self) -> bytes:
        if self.data is None:
            try:
                self.data = Path(self.path).read_bytes()
            except OSError as err:
                raise DataError(f"cannot read: {err.strerror}", path=self.shown) from None
        return self.data

    def for_pandas(self):
        return self.path if self.data is None else io.BytesIO(self.data)


def _lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, line without its end) for every line of `data`."""
    for number, line in enumerate(data.splitlines(), start=1):
        yield number, line


def _first_data_line(data: bytes, shown: str) -> tuple[int, str]:
    """(line number, text) of the first non-blank line, reading no further than it."""
    start, number = 0, 1
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end
        line = data[start:end].rstrip(b"\r")
        if line.strip():
            return number, _decode(line, number, shown)
        start, number = end + 1, number + 1
    raise DataError("the file holds no ratings (it is empty or blank)", path=shown)


def _decode(line: bytes, number: int, shown: str) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"bytes that are not UTF-8 ({line[err.start:err.end]!r} at column "
                        f"{err.start + 1}); convert the file to UTF-8 (e.g. iconv -f latin1 "
                        "-t utf-8)", path=shown, line=number) from None


def _split(line: str, sep: str) -> list[str]:
    return line.split(sep) if sep != " " else line.split()


def _expected_counts(fmt: Format) -> tuple[int, ...]:
    return tuple(DEFAULT_COLUMNS) if fmt.columns is None else (len(fmt.columns),)


def _expected_text(fmt: Format) -> str:
    if fmt.columns is None:
        return "3 or 4 are expected (user,item,rating[,timestamp])"
    return f"{len(fmt.columns)} are expected ({','.join(fmt.columns)})"


def _columns_example(count: int) -> str:
    """A --columns value for `count` fields: user,item,rating then timestamp and '-'s."""
    roles = ["user", "item", "rating", "timestamp"][:count]
    return ",".join(roles + ["-"] * (count - len(roles)))


def _sniff_separator(first: tuple[int, str], fmt: Format, shown: str) -> str:
    """The first of SEPARATORS giving the first data line an expected number of fields."""
    number, line = first
    for sep in SEPARATORS:
        if len(_split(line, sep)) in _expected_counts(fmt):
            return sep
    sep = max(SEPARATORS, key=lambda s: len(_split(line, s)))
    if len(_split(line, sep)) <= 1:
        raise DataError(f"cannot tell the separator: no tab, '::', ',', ';', '|' or space "
                        f"splits the line into fields, where {_expected_text(fmt)}; pass "
                        "--sep", path=shown, line=number)
    raise DataError(_count_message(line, sep, fmt), path=shown, line=number)


def _count_message(line: str, sep: str, fmt: Format) -> str:
    """A wrong field count and its fix: --sep when another separator fits, else --columns."""
    count = len(_split(line, sep))
    other = next((o for o in SEPARATORS
                  if o != sep and len(_split(line, o)) in _expected_counts(fmt)), None)
    if other is not None:
        fix = f"the separator looks like {other!r}: pass --sep {other!r}"
    elif count < 3:
        fix = ("a ratings line needs user, item and rating fields; fix the line, or pass "
               "--sep if another character separates them")
    else:
        fix = (f"describe the fields with --columns (e.g. --columns "
               f"{_columns_example(count)}; '-' skips a field)")
    return f"{count} field(s) separated by {sep!r} where {_expected_text(fmt)}; {fix}"


def _default_columns(first: tuple[int, str], sep: str, shown: str) -> tuple[str, ...]:
    """user,item,rating[,timestamp] as the first data line has 3 or 4 fields."""
    number, line = first
    count = len(_split(line, sep))
    if count not in DEFAULT_COLUMNS:
        raise DataError(_count_message(line, sep, Format()), path=shown, line=number)
    return DEFAULT_COLUMNS[count]


def _is_number(text: str) -> bool:
    # ASCII only, as pandas' parser reads numbers; Python's float() also takes "٣" (3).
    if not text.isascii():
        return False
    try:
        float(text)
        return True
    except ValueError:
        return False


def _has_header(first: tuple[int, str], sep: str, fmt: Format, shown: str) -> bool:
    number, line = first
    fields = _split(line, sep)
    if len(fields) != len(fmt.columns):
        _raise_field_count(number, line, len(fields), sep, fmt, shown)
    rating = fields[fmt.columns.index("rating")].strip()
    if fmt.header == "auto":
        return not _is_number(rating)
    if fmt.header == "no" and not _is_number(rating):
        raise DataError(f"the rating field {rating!r} is not a number; if this line is a "
                        "header, pass --header yes", path=shown, line=number)
    return fmt.header == "yes"


def _raise_field_count(number: int, line: str, count: int, sep: str, fmt: Format, shown: str):
    other = next((o for o in SEPARATORS
                  if o != sep and len(_split(line, o)) == len(fmt.columns)), None)
    if other is not None:
        hint = f"; the separator looks like {other!r}: pass --sep {other!r}"
    else:
        hint = (f"; fix the line, or describe the fields with --columns "
                f"(now {','.join(fmt.columns)}, '-' skips a field)")
    raise DataError(f"{count} field(s) where {len(fmt.columns)} are expected with separator "
                    f"{sep!r}{hint}", path=shown, line=number)


def _fast_parse(source: _Input, sep: str, fmt: Format, header: bool, first_line: int
                ) -> pd.DataFrame:
    """The C-parser read; on any parser complaint, the slow scan names the first bad line."""
    shown = source.shown
    names = [f"{c}_{i}" if c == SKIP else c for i, c in enumerate(fmt.columns)]
    if len(sep) > 1 and len(set(sep)) == 1:
        # '::' (MovieLens 1M/10M): split on ':' and keep every other field, so the C parser
        # can be used; the slow scan checks the real separator when anything looks off.
        cols = []
        for i, n in enumerate(names):
            cols += [n] + ([f"_gap{i}_{j}" for j in range(len(sep) - 1)] if i < len(names) - 1
                           else [])
        names, parse_sep, engine = cols, sep[0], "c"
    elif len(sep) > 1:
        parse_sep, engine = sep, "python"
    else:
        parse_sep, engine = (r"\s+" if sep == " " else sep), ("python" if sep == " " else "c")
    id_dtype = {"int": np.int64, "str": str, "auto": np.int64}[fmt.id_type]
    dtypes = {"user": id_dtype, "item": id_dtype, "rating": np.float64, "timestamp": np.int64}
    roles = [n for n in names if n in ROLES]
    # Without usecols the C parser itself rejects a line with surplus fields (the first line
    # is checked before); with it (skipped fields, '::') the separators are counted instead.
    usecols = roles if len(roles) < len(names) else None
    attempts = [id_dtype] if fmt.id_type != "auto" else [np.int64, str]
    for ids in attempts:
        dtypes["user"] = dtypes["item"] = ids
        try:
            with np.errstate(all="ignore"):  # pandas' own casts warn on some bad fields
                frame = pd.read_csv(
                    source.for_pandas(), sep=parse_sep, engine=engine, index_col=False,
                    header=0 if header and first_line == 1 else None, names=names,
                    usecols=usecols,
                    skiprows=[first_line - 1] if header and first_line > 1 else None,
                    dtype={k: v for k, v in dtypes.items() if k in roles},
                    quoting=csv.QUOTE_NONE, skip_blank_lines=True, na_filter=False,
                    encoding="utf-8", encoding_errors="strict")
        except (ValueError, pd.errors.ParserError, UnicodeDecodeError, OverflowError):
            continue
        if len(frame) == 0:
            raise DataError("the file holds a header but no ratings", path=shown)
        if usecols is not None or engine == "python":
            _check_field_counts(source.bytes(), sep, fmt, header, len(frame), shown)
        return frame
    _scan_for_bad_line(source.bytes(), sep, fmt, header, shown)
    raise DataError("could not be parsed (no single bad line found); check --sep and "
                    "--columns", path=shown)


def _check_field_counts(data: bytes, sep: str, fmt: Format, header: bool, rows: int,
                        shown: str) -> None:
    """Every line must have exactly len(columns) fields.

    The C parser, reading only the used columns, ignores surplus fields; so the separators
    are counted over the whole file (one pass in C) and only when the total is off is the
    file scanned line by line for the culprit.
    """
    if sep != " ":
        expected = (rows + int(header)) * (len(fmt.columns) - 1)
        if data.count(sep.encode()) == expected:
            return
    _scan_for_bad_line(data, sep, fmt, header, shown)


def _scan_for_bad_line(data: bytes, sep: str, fmt: Format, header: bool, shown: str) -> None:
    """Raises DataError at the first line that does not parse under `fmt`."""
    first = header
    for number, raw in _lines(data):
        if not raw.strip():
            continue
        line = _decode(raw, number, shown)
        if first:
            first = False
            continue
        fields = _split(line, sep)
        if len(fields) != len(fmt.columns):
            _raise_field_count(number, line, len(fields), sep, fmt, shown)
        for role, field in zip(fmt.columns, fields):
            value = field.strip()
            if role == "rating" and not _is_number(value):
                raise DataError(f"rating {value!r} is not a number; fix or remove the line",
                                path=shown, line=number)
            if role == "rating" and not np.isfinite(float(value)):
                raise DataError(f"rating {value!r} is not a finite number; fix or remove the "
                                "line", path=shown, line=number)
            if role == "timestamp" and not _is_int(value):
                raise DataError(f"timestamp {value!r} is not an integer (seconds); fix the "
                                "line, or mark the field '-' in --columns", path=shown,
                                line=number)
            if role in ("user", "item") and value == "":
                raise DataError(f"{role} id is empty; fix or remove the line", path=shown,
                                line=number)
            if role in ("user", "item") and fmt.id_type == "int" and not _is_int(value):
                raise DataError(f"{role} id {value!r} is not an integer; fix the line, or "
                                "pass --id-type str", path=shown, line=number)


def _is_int(text: str) -> bool:
    if not text.isascii():  # as _is_number
        return False
    try:
        int(text)
        return True
    except ValueError:
        return False


def _to_ratings(frame: pd.DataFrame, source: _Input, fmt: Format, header: bool) -> Ratings:
    shown = source.shown

    def line_of(row: int) -> int:
        return _line_of_row(source.bytes(), row, header)

    ratings = frame["rating"].to_numpy(np.float64)
    bad = np.flatnonzero(~np.isfinite(ratings) | (np.abs(ratings) > np.finfo(np.float32).max))
    if len(bad):
        raise DataError(f"rating {ratings[bad[0]]!s} is not a finite number; fix or remove "
                        "the line", path=shown,
                        line=line_of(int(bad[0])))
    if fmt.rating_scale is not None:
        low, high = fmt.rating_scale
        bad = np.flatnonzero((ratings < low) | (ratings > high))
        if len(bad):
            raise DataError(f"rating {ratings[bad[0]]:g} is outside the declared scale "
                            f"[{low:g}, {high:g}]; fix the line or pass --rating-scale",
                            path=shown, line=line_of(int(bad[0])))
    users, items = frame["user"].to_numpy(), frame["item"].to_numpy()
    if users.dtype == object:
        users, items = _strip(users), _strip(items)
        for role, ids in (("user", users), ("item", items)):
            empty = np.flatnonzero(ids == "")
            if len(empty):
                raise DataError(f"{role} id is empty; fix or remove the line", path=shown,
                                line=line_of(int(empty[0])))
    timestamps = frame["timestamp"].to_numpy(np.int64) if "timestamp" in frame else None
    return Ratings.from_raw(users, items, ratings, timestamps, source=shown,
                            duplicates=fmt.duplicates,
                            line_of=line_of)


def _strip(values: np.ndarray) -> np.ndarray:
    return np.asarray([v.strip() for v in values], dtype=object)


def _line_of_row(data: bytes, row: int, header: bool) -> int:
    """The 1-based line number of data row `row` (blank lines and the header skipped)."""
    seen = -1 if header else 0
    for number, line in _lines(data):
        if line.strip():
            if seen == row:
                return number
            seen += 1
    return -1
