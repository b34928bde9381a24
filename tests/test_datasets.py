"""Named datasets through archives and local files; the data CLI; training on a file."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from autorec_jax import config as config_lib
from autorec_jax.data import loading, movielens, sources
from autorec_jax.data.sources import FileSpec, Source
from autorec_jax.errors import DataError, SourceUnavailableError
from synthetic import random_ratings, udata_text, zipped

REPO = Path(__file__).resolve().parent.parent
ML1M_LINES = b"1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n"


@pytest.fixture
def fake_ml1m(monkeypatch):
    """ml-1m's registry entry pointed at a local archive with its own digest."""
    archive = zipped({"ml-1m/ratings.dat": ML1M_LINES, "ml-1m/README": b"x"})
    calls = []

    def fetch(dest):
        calls.append(dest)
        dest.write_bytes(archive)

    _, member, fmt = movielens.ARCHIVES["ml-1m"]
    spec = FileSpec("ml-1m", "ml-1m.zip", {"sha256": sources.sha256_bytes(archive)},
                    (Source("fake mirror", fetch),))
    monkeypatch.setitem(movielens.ARCHIVES, "ml-1m", (spec, member, fmt))
    return archive, calls


def test_archive_dataset_is_fetched_verified_cached_and_read(tmp_path, fake_ml1m):
    archive, calls = fake_ml1m
    r = movielens.load("ml-1m", cache_dir=tmp_path)
    assert (len(r), r.num_users, r.num_items) == (3, 2, 2)
    assert (tmp_path / "ml-1m" / "ml-1m.zip").read_bytes() == archive
    movielens.load("ml-1m", cache_dir=tmp_path)
    assert len(calls) == 1


def test_archive_in_data_dir_is_verified_and_extracted_file_is_used_with_a_warning(
        tmp_path, fake_ml1m, caplog):
    archive, calls = fake_ml1m
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "ml-1m.zip").write_bytes(archive)
    assert len(movielens.load("ml-1m", data_dir=tmp_path / "mine",
                              cache_dir=tmp_path / "c")) == 3
    (tmp_path / "extracted").mkdir()
    (tmp_path / "extracted" / "ratings.dat").write_bytes(ML1M_LINES + b"3::1::9::1\n")
    with caplog.at_level(logging.WARNING):
        with pytest.raises(DataError, match=r"ratings.dat:4: rating 9 is outside"):
            movielens.load("ml-1m", data_dir=tmp_path / "extracted")
    assert "publishes checksums for the archive only" in caplog.text
    assert not calls


def test_archive_with_the_wrong_checksum_is_never_used(tmp_path, monkeypatch):
    _, member, fmt = movielens.ARCHIVES["ml-1m"]
    spec = FileSpec("ml-1m", "ml-1m.zip", {"md5": "0" * 32},
                    (Source("bad mirror", lambda d: d.write_bytes(zipped({member: b""}))),))
    monkeypatch.setitem(movielens.ARCHIVES, "ml-1m", (spec, member, fmt))
    with pytest.raises(SourceUnavailableError, match="bad mirror: ChecksumError: MD5"):
        movielens.load("ml-1m", cache_dir=tmp_path)
    assert not list((tmp_path / "ml-1m").glob("*"))


def test_registry_lists_every_movielens_size_with_published_digests():
    assert set(movielens.DATASETS) == {"ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m",
                                       "ml-latest-small"}
    for spec, member, fmt in movielens.ARCHIVES.values():
        assert spec.digests and all(len(d) in (32, 64) for d in spec.digests.values())
        assert member.endswith(("ratings.dat", "ratings.csv")) and fmt.rating_scale


def run_cli(*args):
    return subprocess.run([sys.executable, str(REPO / "scripts" / "data.py"), *args],
                          capture_output=True, text=True)


def test_data_stats_prints_counts_histogram_time_and_memory(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("user,item,rating\nu1,i1,5\nu2,i1,3\nu2,i2,3\n")
    done = run_cli("stats", str(path), "--columns", "user,item,rating", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert (out["ratings"], out["users"], out["items"]) == (3, 2, 2)
    assert out["histogram"] == {"3": 2, "5": 1} and out["density"] == 0.75
    assert out["load_seconds"] > 0 and out["peak_memory_bytes"] > 0


def test_data_stats_reads_a_plain_user_item_rating_csv_with_no_flags(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("1,10,5\n2,10,3\n2,11,4\n")
    done = run_cli("stats", str(path), "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert (out["ratings"], out["users"], out["items"]) == (3, 2, 2)
    assert "first_timestamp" not in out


@pytest.mark.parametrize("args, words", [
    (["stats", "{dir}/bad.tsv"], "bad.tsv:3: rating 'x' is not a number"),
    (["stats", "{dir}/missing.tsv"], "missing.tsv: no such file"),
    (["split", "{dir}/bad.tsv", "--out", "{dir}/out"], "bad.tsv:3: rating 'x'"),
])
def test_data_cli_malformed_input_exits_1_with_one_line_and_no_traceback(tmp_path, args,
                                                                         words):
    (tmp_path / "bad.tsv").write_text("1\t2\t3\t4\n5\t6\t4\t8\n7\t8\tx\t9\n")
    done = run_cli(*[a.format(dir=tmp_path) for a in args])
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and words in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_train_cli_malformed_ratings_exit_1_one_line(tmp_path):
    (tmp_path / "bad.tsv").write_text("1\t2\t3\t4\n5\t6\t4\t8\t0\n")
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), "--ratings",
                           str(tmp_path / "bad.tsv"), "--compilation-cache", "off"],
                          capture_output=True, text=True)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0
    assert "bad.tsv:2: 5 field(s) where 4 are expected" in done.stderr


def test_train_cli_unknown_dataset_is_a_usage_error_exit_2():
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), "--dataset",
                           "ml-2m", "--compilation-cache", "off"], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "data.dataset must be one of ml-100k" in done.stderr and "'ml-2m'" in done.stderr


def test_data_split_writes_a_partition_that_reads_back(tmp_path):
    r = random_ratings(num_users=30, num_items=20, seed=9)
    path = tmp_path / "ratings.tsv"
    path.write_text("".join(f"{r.user_ids[u]}\t{r.item_ids[i]}\t{int(v)}\t{t}\n" for u, i, v, t
                            in zip(r.users, r.items, r.ratings, r.timestamps)))
    out = tmp_path / "split"
    done = run_cli("split", str(path), "--split", "kfold", "--folds", "4", "--fold", "1",
                   "--valid-ratio", "0.1", "--out", str(out))
    assert done.returncode == 0, done.stderr
    record = json.loads((out / "split.json").read_text())
    rows = []
    for name in ("train", "valid", "test"):
        lines = (out / f"{name}.tsv").read_text().splitlines()
        assert len(lines) == record["counts"][name]
        rows += lines
    original = path.read_text().splitlines()
    assert sorted(rows) == sorted(original)


def test_data_split_into_a_used_folder_replaces_only_the_earlier_splits_files(tmp_path):
    r = random_ratings(num_users=30, num_items=20, seed=9)
    path = tmp_path / "ratings.tsv"
    path.write_text(udata_text(r))
    out = tmp_path / "split"
    done = run_cli("split", str(path), "--split", "ratio", "--valid-ratio", "0.2", "--out",
                   str(out))
    assert done.returncode == 0 and (out / "valid.tsv").exists(), done.stderr
    (out / "notes.txt").write_text("mine")
    done = run_cli("split", str(path), "--split", "ratio", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "split.json", "test.tsv",
                                                     "train.tsv"]
    rows = (out / "train.tsv").read_text().splitlines() + (
        out / "test.tsv").read_text().splitlines()
    assert sorted(rows) == sorted(path.read_text().splitlines())
    assert json.loads((out / "split.json").read_text())["files"] == {
        "train": "train.tsv", "test": "test.tsv"}


@pytest.mark.parametrize("out, words", [("{dir}/taken.txt", "taken.txt: is a file, not a folder"),
                                        ("", "--out is empty")])
def test_data_split_out_that_is_a_file_or_empty_exits_2_before_loading(tmp_path, out, words):
    (tmp_path / "taken.txt").write_text("keep me")
    done = run_cli("split", str(tmp_path / "missing.tsv"), "--out", out.format(dir=tmp_path))
    assert done.returncode == 2 and done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and words in done.stderr
    assert (tmp_path / "taken.txt").read_text() == "keep me"


def test_training_on_a_ratings_file_records_data_split_and_ids(tmp_path):
    r = random_ratings(num_users=30, num_items=40, seed=4)
    path = tmp_path / "mine.csv"
    path.write_text("who,what,stars,when\n" + "".join(
        f"u{r.user_ids[u]},m{r.item_ids[i]},{int(v)},{t}\n" for u, i, v, t in
        zip(r.users, r.items, r.ratings, r.timestamps)))
    config = config_lib.replace(config_lib.tiny(), ratings=str(path), split="ratio",
                                valid_ratio=0.1, epochs=2, parallel="jit")
    from autorec_jax.run.experiment import train_and_evaluate
    result = train_and_evaluate(config, tmp_path / "run")
    data = result.summary["data"]
    assert data["dataset"] == f"file:{path}" and data["split"] == "ratio"
    assert data["train_ratings"] + data["valid_ratings"] + data["test_ratings"] == len(r)
    assert data["valid_ratings"] > 0 and np.isfinite(result.summary["valid_rmse"])
    ids = json.loads((tmp_path / "run" / "ids.json").read_text())
    assert ids["users"][:2] == ["u1", "u10"] and len(ids["items"]) == data["num_items"]
    assert "valid_rmse" in result.history[-1]


def test_load_ratings_dispatches_netflix_and_delimited(tmp_path):
    netflix = tmp_path / "nf.txt"
    netflix.write_text("3:\n10,4,2005-01-01\n11,2,2005-01-02\n")
    delimited = tmp_path / "d.tsv"
    delimited.write_text("10\t3\t4\t1\n")
    base = config_lib.d2l().data
    for path, count in ((netflix, 2), (delimited, 1)):
        data = config_lib.replace(config_lib.d2l(), ratings=str(path)).data
        assert len(loading.load_ratings(data)) == count
    assert base.ratings is None
