"""The Netflix Prize layout: folders of mv_*.txt, combined files, and their bad inputs."""

import numpy as np
import pytest

from autorec_jax.data.netflix import looks_like_netflix, read_netflix
from autorec_jax.errors import DataError

MOVIE_1 = "1:\n1488844,3,2005-09-06\n822109,5,2005-05-13\n"
MOVIE_7 = "7:\n822109,2,2004-01-01\n30878,4,1999-12-31"  # no final newline


def test_folder_and_combined_file_give_the_same_ratings(tmp_path):
    folder = tmp_path / "training_set"
    folder.mkdir()
    (folder / "mv_0000001.txt").write_text(MOVIE_1)
    (folder / "mv_0000007.txt").write_text(MOVIE_7)
    combined = tmp_path / "combined_data_1.txt"
    combined.write_text(MOVIE_1 + MOVIE_7 + "\n")
    assert looks_like_netflix(folder) and looks_like_netflix(combined)
    for source in (folder, combined):
        r = read_netflix(source)
        rows = sorted(zip(r.user_ids[r.users].tolist(), r.item_ids[r.items].tolist(),
                          r.ratings.tolist(), r.timestamps.tolist()))
        day = 86400
        assert rows == sorted([
            (1488844, 1, 3.0, 13032 * day), (822109, 1, 5.0, 12916 * day),
            (822109, 7, 2.0, 12418 * day), (30878, 7, 4.0, 10956 * day)])


def test_plain_ratings_file_is_not_netflix(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("1,2,3,4\n")
    assert not looks_like_netflix(path)


@pytest.mark.parametrize("text, line, words", [
    ("1488844,3,2005-09-06\n", 1, "expected a 'MovieID:' line"),
    ("1:\n1488844,3\n", 2, "(3) are expected"),
    ("1:\n1488844,3,2005-13-45\n", 2, "not a YYYY-MM-DD date"),
    ("1:\n1488844,x,2005-09-06\n", 2, "is not a number"),
    ("1:\n1488844,9,2005-09-06\n", 2, "outside the scale"),
    ("1:\n1488844,3,2005-09-06\n\n822109,5,2005-05-13\n", 3, "empty line"),
    ("", None, "no ratings"),
])
def test_bad_netflix_input_names_the_line(tmp_path, text, line, words):
    path = tmp_path / "mv_0000001.txt"
    path.write_text(text)
    with pytest.raises(DataError) as info:
        read_netflix(path)
    assert words in str(info.value) and info.value.line == line


def test_duplicate_customer_movie_pairs_follow_the_policy(tmp_path):
    path = tmp_path / "combined.txt"
    path.write_text("1:\n5,3,2005-01-01\n5,4,2005-01-02\n")
    with pytest.raises(DataError, match="again"):
        read_netflix(path)
    r = read_netflix(path, duplicates="keep-last")
    np.testing.assert_array_equal(r.ratings, [4.0])


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_netflix(tmp_path / "nope")
    with pytest.raises(DataError, match="no mv_"):
        read_netflix(tmp_path)


@pytest.mark.parametrize("chunk_bytes", [1, 7, 30, 1 << 20])
def test_chunked_reading_gives_the_same_ratings_and_lines(tmp_path, chunk_bytes):
    """Chunks cut inside movies (and inside lines) change nothing; errors keep their line."""
    path = tmp_path / "combined.txt"
    path.write_text(MOVIE_1 + MOVIE_7 + "\n8:\n5,1,2000-02-29\n")
    whole, chunked = read_netflix(path), read_netflix(path, chunk_bytes=chunk_bytes)
    for name in ("users", "items", "ratings", "timestamps", "user_ids", "item_ids"):
        np.testing.assert_array_equal(getattr(chunked, name), getattr(whole, name))
    assert len(whole) == 5
    path.write_text(MOVIE_1 + MOVIE_7 + "\n8:\n5,1,2001-02-29\n")
    with pytest.raises(DataError, match="not a YYYY-MM-DD date") as info:
        read_netflix(path, chunk_bytes=chunk_bytes)
    assert info.value.line == 8
