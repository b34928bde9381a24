"""MovieLens titles and years: parsers, the verified sources and cache, fake archives."""

import hashlib

import pytest

from autorec_jax.data import movielens, sources, titles
from autorec_jax.data.sources import FileSpec, Source
from autorec_jax.errors import ConfigError, DataError, SourceUnavailableError
from synthetic import zipped

UITEM = ("1|Toy Story (1995)|01-Jan-1995||http://x|0|0|1\n"
         "2|Misérables, Les (1995)|01-Jan-1995||http://x|0|0|1\n"
         "267|unknown||||1|0|0\n"
         "1412|Land Before Time III: The Time of the Great Giving (1995) (V)|1|0\n"
         ).encode("latin-1")
RECBOLE_ITEM = ("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
                "1\tToy Story\t1995\tAnimation Children's Comedy\n"
                "2\tMisérables, Les\t1995\tDrama Musical\n"
                "267\tunkonwn\tunkonwn\tunknown\n"
                "1412\tLand Before Time III: The Time of the Great Giving (1995)\tV\tAnimation\n"
                ).encode("utf-8")
MOVIES_DAT = "1::Toy Story (1995)::Animation\n2::Misérables, Les (1995)::Drama\n".encode(
    "latin-1")
MOVIES_CSV = ('movieId,title,genres\n1,Toy Story (1995),Animation\n'
              '11,"American President, The (1995)",Comedy\n'
              '200,Babylon 5 (1994\u20131998),Sci-Fi\n300,No Year Film,Drama\n').encode("utf-8")


class Counting:
    def __init__(self, data):
        self.data, self.calls = data, 0

    def __call__(self, dest):
        self.calls += 1
        dest.write_bytes(self.data)


@pytest.mark.parametrize("text, expected", [
    ("Toy Story (1995)", ("Toy Story", 1995)),
    ("Seven (Se7en) (1995)", ("Seven (Se7en)", 1995)),
    ("(500) Days of Summer (2009) ", ("(500) Days of Summer", 2009)),
    ("X (1995) (V)", ("X (V)", 1995)),
    ("Babylon 5 (1994\u20131998)", ("Babylon 5", 1994)),
    ("Movie (1990) Remake (2005)", ("Movie (1990) Remake", 2005)),
    ("unknown", ("unknown", None)),
    ("", ("", None)),
])
def test_split_title_parses_a_trailing_year(text, expected):
    assert titles.split_title(text) == expected


def test_parsers_read_each_movielens_layout():
    official = titles.parse_uitem(UITEM)
    assert official == titles.parse_recbole_item(RECBOLE_ITEM)
    assert official[2] == ("Misérables, Les", 1995)
    assert official[1412] == ("Land Before Time III: The Time of the Great Giving (V)", 1995)
    assert titles.parse_movies_dat(MOVIES_DAT) == {1: ("Toy Story", 1995),
                                                   2: ("Misérables, Les", 1995)}
    assert titles.parse_movies_csv(MOVIES_CSV) == {
        1: ("Toy Story", 1995), 11: ("American President, The", 1995),
        200: ("Babylon 5", 1994), 300: ("No Year Film", None)}


@pytest.mark.parametrize("parse, data, message", [
    (titles.parse_uitem, b"1|A (1990)\nx|B (1991)\n", r"u.item:2: item id 'x'"),
    (titles.parse_uitem, b"1 Toy Story\n", r"u.item:1: expected '\|'-separated"),
    (titles.parse_recbole_item, b"1\tA\t1990\n", "not a RecBole .item"),
    (titles.parse_movies_csv, b"1,A (1990),x\n", "movieId,title,genres header"),
])
def test_parsers_name_the_bad_line(parse, data, message):
    with pytest.raises(DataError, match=message):
        parse(data)


def test_ml100k_titles_come_from_the_pinned_wheel_member_then_the_cache(
        tmp_path, monkeypatch):
    body = Counting(RECBOLE_ITEM)
    monkeypatch.setattr(titles, "ML100K_ITEMS", FileSpec(
        "ml-100k", "ml-100k.item", {"sha256": sources.sha256_bytes(RECBOLE_ITEM)},
        (Source("fake wheel", body),)))
    first = titles.load_titles("ml-100k", cache_dir=tmp_path)
    second = titles.load_titles("ml-100k", cache_dir=tmp_path)
    assert first == second and first[1] == ("Toy Story", 1995) and body.calls == 1
    assert (tmp_path / "ml-100k" / "ml-100k.item").read_bytes() == RECBOLE_ITEM


def test_ml100k_wheel_member_with_another_checksum_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(titles, "ML100K_ITEMS", FileSpec(
        "ml-100k", "ml-100k.item", {"sha256": sources.sha256_bytes(RECBOLE_ITEM)},
        (Source("fake wheel", Counting(RECBOLE_ITEM + b"9\tX\t1999\tDrama\n")),)))
    with pytest.raises(SourceUnavailableError, match="ml-100k.item"):
        titles.load_titles("ml-100k", cache_dir=tmp_path)
    assert not (tmp_path / "ml-100k" / "ml-100k.item").exists()


def test_ml100k_official_archive_or_extracted_file_is_preferred(tmp_path, monkeypatch):
    monkeypatch.setattr(titles, "ML100K_ITEMS", FileSpec(
        "ml-100k", "ml-100k.item", {"sha256": "0" * 64}, ()))  # would fail if reached
    archive = zipped({"ml-100k/u.data": b"1\t1\t5\t1\n", "ml-100k/u.item": UITEM})
    monkeypatch.setattr(titles, "ML100K_ZIP", FileSpec(
        "ml-100k", "ml-100k.zip", {"md5": hashlib.md5(archive).hexdigest()}, ()))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "ml-100k.zip").write_bytes(archive)
    assert titles.load_titles("ml-100k", data_dir=tmp_path / "mine",
                              cache_dir=tmp_path / "c") == titles.parse_uitem(UITEM)
    (tmp_path / "extracted" / "ml-100k").mkdir(parents=True)
    (tmp_path / "extracted" / "ml-100k" / "u.item").write_bytes(UITEM.split(b"\n")[0] + b"\n")
    assert titles.load_titles("ml-100k", data_dir=tmp_path / "extracted",
                              cache_dir=tmp_path / "c") == {1: ("Toy Story", 1995)}


@pytest.mark.parametrize("name, member, data", [
    ("ml-1m", "ml-1m/movies.dat", MOVIES_DAT),
    ("ml-10m", "ml-10M100K/movies.dat", MOVIES_DAT),
    ("ml-20m", "ml-20m/movies.csv", MOVIES_CSV),
    ("ml-latest-small", "ml-latest-small/movies.csv", MOVIES_CSV),
])
def test_archive_titles_are_read_from_the_verified_cached_archive(tmp_path, monkeypatch,
                                                                  name, member, data):
    spec, ratings_member, fmt = movielens.ARCHIVES[name]
    archive = zipped({ratings_member: b"1::1::5::1\n", member: data})
    body = Counting(archive)
    monkeypatch.setitem(movielens.ARCHIVES, name, (FileSpec(
        name, spec.filename, {"sha256": sources.sha256_bytes(archive)},
        (Source("fake mirror", body),)), ratings_member, fmt))
    got = titles.load_titles(name, cache_dir=tmp_path)
    assert got[1] == ("Toy Story", 1995) and len(got) == (2 if member.endswith(".dat") else 4)
    assert titles.load_titles(name, cache_dir=tmp_path) == got and body.calls == 1
    (tmp_path / "ex").mkdir()
    (tmp_path / "ex" / member.split("/")[1]).write_bytes(data)
    assert titles.load_titles(name, data_dir=tmp_path / "ex") == got


def test_unknown_dataset_is_a_config_error():
    with pytest.raises(ConfigError, match="titles exist for ml-100k"):
        titles.load_titles("netflix")


def test_the_wheel_source_is_pinned():
    spec = titles.ML100K_ITEMS
    assert spec.digests == {"sha256": titles.ML100K_ITEM_SHA256}
    assert spec.sources[0].name == (f"package index wheel {movielens.RECBOLE_WHEEL} "
                                    f"({titles.RECBOLE_ML100K_ITEM})")


@pytest.mark.full
def test_real_ml100k_titles_through_the_projects_downloader():
    """Fetches the wheel member into the user cache once (skipped without the index)."""
    try:
        got = titles.load_titles("ml-100k")
    except SourceUnavailableError as err:
        pytest.skip(f"package index not reachable: {str(err).splitlines()[0]}")
    assert len(got) == 1682
    assert got[1] == ("Toy Story", 1995)
