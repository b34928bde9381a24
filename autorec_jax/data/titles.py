"""MovieLens item titles and release years, from the same verified sources as the ratings.

MovieLens 100K: the official `ml-100k/u.item` when the official archive (or the extracted
file) is at hand, else `ml-100k.item` from the `recbole` wheel on the package index (pinned
by SHA-256 and cached like u.data). The larger archives carry `movies.dat` (ml-1m, ml-10m)
or `movies.csv` (ml-20m, ml-25m, ml-latest-small) beside their ratings member.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from pathlib import Path

from autorec_jax.data import movielens
from autorec_jax.data.archives import zip_member
from autorec_jax.data.sources import FileSpec, locate, pip_wheel_source
from autorec_jax.errors import ConfigError, DataError, SourceUnavailableError

log = logging.getLogger(__name__)

Titles = dict  # raw item id -> (title, year or None)

# GroupLens' published MD5 of ml-100k.zip (its .md5 sidecar); used only when the archive is
# already in --data-dir or the cache: the official site is not fetched just for titles.
ML100K_ZIP_MD5 = "0e33842e24a9c977be4e0107933c0723"
ML100K_ZIP = FileSpec(dataset="ml-100k", filename="ml-100k.zip",
                      digests={"md5": ML100K_ZIP_MD5}, sources=())
RECBOLE_ML100K_ITEM = "recbole/dataset_example/ml-100k/ml-100k.item"
# Tab-separated, header `item_id:token movie_title:token_seq release_year:token class:...`,
# UTF-8, 1682 items; the titles have their "(year)" moved into the year column.
ML100K_ITEM_SHA256 = "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532"
ML100K_ITEMS = FileSpec(
    dataset="ml-100k", filename="ml-100k.item", digests={"sha256": ML100K_ITEM_SHA256},
    sources=(pip_wheel_source(movielens.RECBOLE_WHEEL, RECBOLE_ML100K_ITEM, lambda b: b),))

_TITLE_YEAR = re.compile(
    r"^(?P<title>.*?)\s*\((?P<year>\d{4})(?:\s*[-\u2013]\s*(?:\d{4})?)?\)"
    r"(?P<rest>(?:\s*\([^()]*\))*)\s*$")


def split_title(text: str) -> tuple[str, int | None]:
    """"Toy Story (1995)" -> ("Toy Story", 1995); no trailing year -> (text, None).

    Parenthesised notes after the year stay in the title ("X (1995) (V)" -> ("X (V)", 1995));
    a year range keeps its first year.
    """
    text = text.strip()
    match = _TITLE_YEAR.match(text)
    if match is None:
        return text, None
    rest = match.group("rest").strip()
    title = match.group("title") + (" " + rest if rest else "")
    return title, int(match.group("year"))


def _decode(data: bytes) -> str:
    """UTF-8 where it decodes (the newer files), else latin-1 (u.item, movies.dat)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _item_id(text: str, name: str, line: int) -> int:
    try:
        return int(text)
    except ValueError:
        raise DataError(f"item id {text!r} is not an integer", path=name, line=line) from None


def parse_uitem(data: bytes, name: str = "u.item") -> Titles:
    """MovieLens 100K's u.item: id|title (year)|release date|video date|url|19 genre flags."""
    return _parse_separated(data, name, "|")


def parse_recbole_item(data: bytes, name: str = RECBOLE_ML100K_ITEM) -> Titles:
    """RecBole's ml-100k.item: header, then id, title, year (not always a year), genres."""
    lines = _decode(data).splitlines()
    if not lines or not lines[0].startswith("item_id"):
        raise DataError("not a RecBole .item file (no header line)", path=name)
    out = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 3:
            raise DataError(f"expected tab-separated id, title, year; got {line[:40]!r}",
                            path=name, line=number)
        title, year = fields[1].strip(), fields[2].strip()
        if re.fullmatch(r"\d{4}", year):
            entry = (title, int(year))
        elif title == "unkonwn":  # u.item's item 267 is "unknown", misspelt here
            entry = ("unknown", None)
        else:  # u.item's "X (1995) (V)" became title "X (1995)", year "V"
            entry = split_title(f"{title} ({year})" if year else title)
        out[_item_id(fields[0], name, number)] = entry
    return out


def parse_movies_dat(data: bytes, name: str = "movies.dat") -> Titles:
    """ml-1m / ml-10m movies.dat: id::title (year)::genres."""
    return _parse_separated(data, name, "::")


def _parse_separated(data: bytes, name: str, sep: str) -> Titles:
    """Lines of id<sep>title (year)<sep>...; blank lines skipped, bad lines named."""
    out = {}
    for number, line in enumerate(_decode(data).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split(sep)
        if len(fields) < 2:
            raise DataError(f"expected '{sep}'-separated fields, got {line[:40]!r}", path=name,
                            line=number)
        out[_item_id(fields[0], name, number)] = split_title(fields[1])
    return out


def parse_movies_csv(data: bytes, name: str = "movies.csv") -> Titles:
    """ml-20m / ml-25m / latest movies.csv: header movieId,title,genres; titles CSV-quoted."""
    rows = csv.reader(io.StringIO(_decode(data), newline=""))
    header = next(rows, None)
    if not header or header[0].strip().lower() != "movieid":
        raise DataError("expected a movieId,title,genres header line", path=name, line=1)
    out = {}
    for number, row in enumerate(rows, start=2):
        if not row:
            continue
        if len(row) < 2:
            raise DataError(f"expected movieId,title,...; got {','.join(row)[:40]!r}",
                            path=name, line=number)
        out[_item_id(row[0], name, number)] = split_title(row[1])
    return out


def _movies_member(ratings_member: str) -> str:
    folder, _, filename = ratings_member.rpartition("/")
    return f"{folder}/movies{Path(filename).suffix}"


def load_titles(dataset: str, *, data_dir=None, cache_dir=None) -> Titles:
    """Titles and years of a MovieLens dataset's items, keyed by raw item id.

    Args:
      dataset: a name in `movielens.DATASETS`.
      data_dir: a folder holding the dataset's files (as for the ratings).
      cache_dir: the dataset cache (default: $AUTOREC_JAX_DATA or ~/.cache/autorec_jax).

    Returns:
      {raw item id (int): (title, year or None)}.

    Raises:
      ConfigError: not a MovieLens dataset name.
      DataError: a malformed file; SourceUnavailableError when no source could be used.
    """
    if dataset == "ml-100k":
        return _ml100k_titles(data_dir, cache_dir)
    if dataset not in movielens.ARCHIVES:
        raise ConfigError(f"titles exist for {', '.join(movielens.DATASETS)}, not {dataset!r}")
    spec, ratings_member, _ = movielens.ARCHIVES[dataset]
    member = _movies_member(ratings_member)
    parse = parse_movies_csv if member.endswith(".csv") else parse_movies_dat
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        for candidate in (root / Path(member).name, root / member):
            if candidate.is_file():
                return parse(candidate.read_bytes(), str(candidate))
    archive = locate(spec, data_dir=data_dir, cache_dir=cache_dir)
    return parse(zip_member(archive, member), f"{archive}:{member}")


def _ml100k_titles(data_dir, cache_dir) -> Titles:
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        for candidate in (root / "u.item", root / "ml-100k" / "u.item"):
            if candidate.is_file():
                log.info("using the extracted %s as it is (no checksum is published for it)",
                         candidate)
                return parse_uitem(candidate.read_bytes(), str(candidate))
    try:
        archive = locate(ML100K_ZIP, data_dir=data_dir, cache_dir=cache_dir)
    except SourceUnavailableError:
        path = locate(ML100K_ITEMS, data_dir=data_dir, cache_dir=cache_dir)
        return parse_recbole_item(path.read_bytes(), str(path))
    return parse_uitem(zip_member(archive, "ml-100k/u.item"), f"{archive}:ml-100k/u.item")
