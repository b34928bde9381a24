"""Delimited ratings files: formats accepted, and every kind of bad input named precisely."""

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from autorec_jax.data.readers import Format, read_ratings
from autorec_jax.errors import ConfigError, DataError


def write(tmp_path, content: bytes, name="ratings.txt"):
    path = tmp_path / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("content, fmt, expected", [
    (b"1\t10\t3\t100\n2\t20\t4.5\t200\n", {}, ([1, 2], [10, 20], [3, 4.5], [100, 200])),
    (b"1::10::3::100\n2::20::4::200\n", {}, ([1, 2], [10, 20], [3, 4], [100, 200])),
    (b"userId,movieId,rating,timestamp\n1,10,3.5,100\n2,20,4,200\n", {},
     ([1, 2], [10, 20], [3.5, 4], [100, 200])),
    (b"1,10,3,100\r\n2,20,4,200\r\n", {}, ([1, 2], [10, 20], [3, 4], [100, 200])),
    (b"\n1\t10\t3\t100\n\n2\t20\t4\t200\n\n", {}, ([1, 2], [10, 20], [3, 4], [100, 200])),
    (b"u1;i1;5\nu2;i1;1\n", {"columns": ("user", "item", "rating")},
     (["u1", "u2"], ["i1", "i1"], [5, 1], None)),
    (b"10|x|1|4\n20|y|2|5\n", {"columns": ("item", "-", "user", "rating")},
     ([1, 2], [10, 20], [4, 5], None)),
    (b"a b 3\nc b 2\n", {"sep": " ", "columns": ("user", "item", "rating")},
     (["a", "c"], ["b", "b"], [3, 2], None)),
    (b"1,10,3\n2,20,4.5\n", {}, ([1, 2], [10, 20], [3, 4.5], None)),
    (b"user,item,rating\nu1,i1,5\n", {}, (["u1"], ["i1"], [5], None)),
    (b"1\t10\t3\n2\t20\t4\n", {"sep": "\t"}, ([1, 2], [10, 20], [3, 4], None)),
])
def test_accepted_formats(tmp_path, content, fmt, expected):
    r = read_ratings(write(tmp_path, content), Format(**fmt))
    users, items, ratings, times = expected
    assert list(r.user_ids[r.users]) == users and list(r.item_ids[r.items]) == items
    np.testing.assert_allclose(r.ratings, ratings)
    assert (r.timestamps is None) if times is None else list(r.timestamps) == times


def test_duplicate_policies(tmp_path):
    path = write(tmp_path, b"1\t2\t3\t100\n5\t6\t1\t150\n1\t2\t5\t200\n")
    kept = read_ratings(path, Format(duplicates="keep-last"))
    assert sorted(zip(kept.users.tolist(), kept.ratings.tolist())) == [(0, 5.0), (1, 1.0)]
    mean = read_ratings(path, Format(duplicates="mean"))
    merged = sorted(zip(mean.ratings.tolist(), mean.timestamps.tolist()))
    assert merged == [(1.0, 150), (4.0, 200)]


BAD = [  # (content, format, expected line or None, words the message must hold)
    (b"1\t2\t3\t4\n5\t6\t4\t8\t9\n", {}, 2, "5 field(s) where 4 are expected"),
    (b"1\t2\t3\t4\n5\t6\t4\n", {}, 2, "3 field(s) where 4 are expected"),
    (b"1\t2\t3\n", {"sep": "\t", "columns": ("user", "item", "rating", "timestamp")}, 1,
     "3 field(s) where 4"),
    (b"1\t2\t3\n4\t5\t6\t7\n", {}, 2, "4 field(s) where 3 are expected"),
    (b"1\t2\t3\t4\t5\n", {}, 1, "--columns user,item,rating,timestamp,-"),
    (b"1,2\n", {}, 1, "needs user, item and rating"),
    (b"1#2#3\n", {}, 1, "cannot tell the separator"),
    (b"1\t2\t3\t4\n\n\n5\t6\tfour\t8\n", {}, 4, "rating 'four' is not a number"),
    (b"1\t2\t3\t4\n5\t6\tnan\t8\n", {}, 2, "not a finite number"),
    (b"1\t2\t3\t4\n5\t6\tinf\t8\n", {}, 2, "not a finite number"),
    (b"1\t2\t3\t4\n5\t6\t7\t8\n", {"rating_scale": (1, 5)}, 2, "outside the declared scale"),
    (b"1\t2\t3\t4\n1\t2\t4\t8\n", {}, 2, "rates item 2 again (first at line 1)"),
    (b"", {}, None, "holds no ratings"),
    (b"\n  \n", {}, None, "holds no ratings"),
    (b"user\titem\trating\ttime\n", {}, None, "header but no ratings"),
    (b"user\titem\trating\ttime\n1\t2\t3\t4\n", {"header": "no"}, 1, "pass --header yes"),
    (b"1\t2\t3\t4\n\xe9\t6\t4\t8\n", {}, 2, "not UTF-8"),
    (b"1,2,3,4\n5,6,4,8\n", {"sep": "\t"}, 1, "pass --sep ','"),
    (b"1\t2\t3\t4\n\t6\t4\t8\n", {}, 2, "user id is empty"),
    (b"1\t2\t3\tnoon\n", {}, 1, "timestamp 'noon' is not an integer"),
    (b"a\t2\t3\t4\n", {"id_type": "int"}, 1, "pass --id-type str"),
    ("1\t2\t3\n4\t5\t٣\n".encode(), {}, 2, "rating '٣' is not a number"),
    ("1\t٣\t3\n".encode(), {"id_type": "int"}, 1, "item id '٣' is not an integer"),
    (b"1::2::3::4\n5:6::4::8\n", {}, 2, "3 field(s) where 4"),
    (b"1\t2\t0\t4\n", {}, 1, "rating 0"),
    (b"1;2;3;4;5;6\n", {}, 1, "6 field(s) separated by ';' where 3 or 4 are expected"),
]


@pytest.mark.parametrize("content, fmt, line, words", BAD)
def test_bad_input_names_file_line_and_fix(tmp_path, content, fmt, line, words):
    path = write(tmp_path, content)
    with pytest.raises(DataError) as info:
        read_ratings(path, Format(**fmt))
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: " if line else f"{path}: ")
    assert words in message and "\n" not in message
    assert info.value.line == line and info.value.path == str(path)


def test_plain_three_field_csv_reads_by_default(tmp_path):
    r = read_ratings(write(tmp_path, b"1,10,4\n2,10,3\n2,11,5\n"))
    assert (len(r), r.num_users, r.num_items, r.timestamps) == (3, 2, 2, None)


def test_wrong_field_count_suggests_columns_not_the_separator(tmp_path):
    with pytest.raises(DataError) as info:
        read_ratings(write(tmp_path, b"1,10,4,100,x\n"))
    message = str(info.value)
    assert "5 field(s)" in message and "--columns user,item,rating,timestamp,-" in message
    assert "--sep" not in message and "separator looks like" not in message


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_ratings(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="is a folder"):
        read_ratings(tmp_path)


@pytest.mark.parametrize("fmt, field", [
    ({"columns": ("user", "item")}, "data.columns"),
    ({"columns": ("user", "item", "rating", "stars")}, "data.columns"),
    ({"header": "maybe"}, "data.header"),
    ({"id_type": "float"}, "data.id_type"),
])
def test_impossible_formats_are_config_errors(fmt, field):
    with pytest.raises(ConfigError, match=field):
        Format(**fmt)


# --- property: random (often malformed) files either parse correctly or raise DataError ---

# ASCII digits only: pandas' parser (and so the reader) reads "٣" as text, not 3.
NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$", re.ASCII)


def integer(text: str):
    """The integer a numeric id or timestamp denotes ('7', '7.0' and '7e0' alike), or None."""
    if not NUMBER.match(text):
        return None
    value = float(text)
    return int(value) if value.is_integer() and abs(value) < 2 ** 62 else None


FIELD = st.one_of(
    st.integers(1, 40).map(str),
    st.sampled_from(["1", "2.5", "5", "0", "-3", "nan", "inf", "1e0", "+4", " 3", "3 ", "",
                     "x", "1.0", "007", "\"4\"", "#", "é", "\x00", "4\r", "1_0", "٣"]),
    st.text(alphabet="0123456789.-+eEx \"'\x00é", max_size=4),
)
LINE = st.lists(FIELD, min_size=0, max_size=6).map("\t".join)
FILE = st.lists(LINE, min_size=0, max_size=8).map("\n".join)


def reference_parse(text: str, counts=(4,)):
    """What a correct reader returns for a tab file without header whose lines all have the
    first line's number of fields, one of `counts` (4: with timestamps), or None."""
    rows, count = [], None
    for line in text.encode("utf-8").splitlines():
        if not line.strip():
            continue
        fields = [f.strip() for f in line.decode("utf-8").split("\t")]
        count = count or len(fields)
        if len(fields) != count or count not in counts or not fields[0] or not fields[1]:
            return None
        if count == 4 and integer(fields[3]) is None:
            return None
        try:
            rating = float(fields[2])
        except ValueError:
            return None
        if not np.isfinite(rating) or rating == 0 or not NUMBER.match(fields[2]):
            return None
        rows.append((fields[0], fields[1], rating, integer(fields[3]) if count == 4 else None))
    if not rows or len({(u, i) for u, i, _, _ in rows}) != len(rows):
        return None
    return rows


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(FILE, st.sampled_from([("user", "item", "rating", "timestamp"), None]))
@example("1\t٣\t1", None)         # a non-ASCII digit is an id's text, not the number 3
@example("1\t2\t٣", None)         # and no rating
def test_random_files_parse_correctly_or_raise_data_error(tmp_path, text, columns):
    path = write(tmp_path, text.encode("utf-8"))
    try:
        got = read_ratings(path, Format(sep="\t", header="no", columns=columns))
    except DataError:
        return
    expected = reference_parse(text, (4,) if columns else (3, 4))
    assert expected is not None, f"accepted a malformed file: {text!r}"
    as_int = all(integer(u) is not None and integer(i) is not None for u, i, _, _ in expected)
    norm = integer if as_int else (lambda x: x)
    rows = sorted((norm(u), norm(i), np.float32(r), t) for u, i, r, t in expected)
    times = got.timestamps.tolist() if got.timestamps is not None else [None] * len(got)
    ours = sorted(zip(got.user_ids[got.users].tolist(), got.item_ids[got.items].tolist(),
                      got.ratings.tolist(), times))
    assert [(u, i, float(r), t) for u, i, r, t in rows] == ours
