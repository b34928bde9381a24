"""Dataset sources: verified lookup order, corrupted caches, failures, atomic writes."""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from autorec_jax.data import sources
from autorec_jax.data.archives import zip_member
from autorec_jax.data.movielens import parse_udata, recbole_inter_to_udata
from autorec_jax import fileio
from autorec_jax.data.sources import FileSpec, Source, locate
from autorec_jax.fileio import atomic_write_bytes
from autorec_jax.errors import DataError, SourceUnavailableError
from synthetic import random_ratings, udata_text, zipped

GOOD = udata_text(random_ratings()).encode()
GOOD_SHA = sources.sha256_bytes(GOOD)


class Counting:
    """A source body writing fixed bytes (or raising) and counting its calls."""

    def __init__(self, result):
        self.result, self.calls = result, 0

    def __call__(self, dest: Path):
        self.calls += 1
        if isinstance(self.result, Exception):
            dest.write_bytes(b"partial")  # a failure after writing must leave no trace
            raise self.result
        dest.write_bytes(self.result)


def spec(*bodies):
    return FileSpec("toy", "u.data", {"sha256": GOOD_SHA},
                    tuple(Source(f"source{i}", b) for i, b in enumerate(bodies)))


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def test_fetch_writes_a_verified_cache_file_then_reuses_it(tmp_path):
    body = Counting(GOOD)
    first = locate(spec(body), cache_dir=tmp_path)
    second = locate(spec(body), cache_dir=tmp_path)
    assert first == second == tmp_path / "toy" / "u.data"
    assert first.read_bytes() == GOOD and body.calls == 1


def test_corrupted_cache_file_is_detected_deleted_and_fetched_again(tmp_path):
    cached = tmp_path / "toy" / "u.data"
    cached.parent.mkdir()
    cached.write_bytes(GOOD[:-10] + b"9\t9\t9\t9\n")  # damaged, same kind of content
    body = Counting(GOOD)
    path = locate(spec(body), cache_dir=tmp_path)
    assert body.calls == 1 and path.read_bytes() == GOOD
    assert len(parse_udata(path)) == len(random_ratings())


def test_source_with_wrong_checksum_is_never_cached(tmp_path):
    bad, good = Counting(GOOD + b"1\t1\t1\t1\n"), Counting(GOOD)
    path = locate(spec(bad, good), cache_dir=tmp_path)
    assert bad.calls == good.calls == 1 and path.read_bytes() == GOOD
    assert no_temp_files(tmp_path)


def test_every_source_failing_gives_one_error_naming_each(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "u.data").write_bytes(b"not the file\n")
    failing = spec(Counting(OSError("Name or service not known")),
                   Counting(GOOD + b"x"),
                   Counting(DataError("pip download failed: no network")))
    with pytest.raises(SourceUnavailableError) as info:
        locate(failing, data_dir=tmp_path / "mine", cache_dir=tmp_path / "cache")
    message = str(info.value)
    for expected in ("--data-dir", "is not the published", "cache", "not present",
                     "source0: OSError: Name or service not known",
                     "source1: ChecksumError", "source2: DataError: pip download failed",
                     "--data-dir FOLDER"):
        assert expected in message
    assert not (tmp_path / "cache" / "toy" / "u.data").exists()
    assert no_temp_files(tmp_path)


def test_explicit_folder_is_used_first_when_verified(tmp_path):
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "u.data").write_bytes(GOOD)
    body = Counting(GOOD)
    assert locate(spec(body), data_dir=tmp_path, cache_dir=tmp_path / "c") == \
        tmp_path / "toy" / "u.data"
    assert body.calls == 0


def test_atomic_write_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new content")
    assert target.read_bytes() == b"old" and no_temp_files(tmp_path)


def test_url_source_reads_the_member_of_a_downloaded_zip(tmp_path):
    archive = tmp_path / "ml-100k.zip"
    archive.write_bytes(zipped({"ml-100k/u.data": GOOD, "ml-100k/u.item": b"x"}))
    source = sources.url_member_source(archive.as_uri(), "ml-100k/u.data")
    dest = tmp_path / "out"
    source.fetch(dest)
    assert dest.read_bytes() == GOOD


@pytest.mark.parametrize("data, message", [
    (zipped({"ml-100k/u.data": GOOD})[:200], "truncated or corrupted"),
    (b"PK\x03\x04garbage", "truncated or corrupted"),
    (zipped({"other": b""}), "has no member ml-100k/u.data"),
    (zipped({"ml-100k/u.data": GOOD, "../evil.sh": b"x"}), "zip-slip"),
    (zipped({"ml-100k/u.data": GOOD, "/etc/evil": b"x"}), "zip-slip"),
], ids=["truncated", "garbage", "no-member", "relative-slip", "absolute-slip"])  # the zips
# hold the time they were made: ids from their bytes differ between xdist workers
def test_zip_member_errors_name_the_problem(data, message):
    with pytest.raises(DataError, match=message):
        zip_member(data, "ml-100k/u.data")


def test_recbole_inter_converts_back_to_udata_lines():
    inter = ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
             "196\t242\t3\t881250949\n186\t302\t3.0\t891717742\n")
    assert recbole_inter_to_udata(inter.encode()) == b"196\t242\t3\t881250949\n" \
        b"186\t302\t3\t891717742\n"
    with pytest.raises(DataError, match="not a RecBole"):
        recbole_inter_to_udata(b"196\t242\t3\t881250949\n")


def test_default_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(sources.CACHE_ENV, str(tmp_path))
    assert sources.default_cache_dir() == tmp_path
    monkeypatch.delenv(sources.CACHE_ENV)
    assert sources.default_cache_dir() == Path.home() / ".cache" / "autorec_jax"


@pytest.mark.parametrize("text, message", [
    ("1\t2\t3\n", ":1: 3 field"),
    ("1\t2\t3\t4\n5\t6\tx\t8\n", ":2: rating 'x' is not a number"),
    ("1,2,3,4\n", "separator looks like ','"),
])
def test_parse_udata_rejects_malformed_lines(tmp_path, text, message):
    path = tmp_path / "u.data"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        parse_udata(path)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_gives_the_mode_the_umask_allows(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "f.json", b"{}")
    finally:
        os.umask(old)
    assert (tmp_path / "f.json").stat().st_mode & 0o777 == mode


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temp_files_of_killed_runs_are_removed_on_next_use(tmp_path):
    folder = tmp_path / "toy"
    stale = [folder / f".u.data.{dead_pid()}.deadbeef.tmp",
             folder / f".download.{dead_pid()}.0badf00d.tmp"]            # a fetch's folder
    stale[1].mkdir(parents=True)
    (stale[1] / "archive.zip").write_bytes(b"x")
    fresh = folder / f".u.data.{dead_pid()}.0000aaaa.tmp"          # a dead pid, but recent
    alive = folder / f".u.data.{os.getppid()}.1111bbbb.tmp"        # old, but its run is alive
    mine = folder / "notes.tmp"                                     # not one of our temp names
    for path in (stale[0], fresh, alive, mine):
        path.write_bytes(b"partial")
    old = time.time() - 2 * fileio.STALE_TEMP_SECONDS
    for path in (stale[0], alive, mine, stale[1], *stale[1].iterdir()):
        os.utime(path, (old, old))
    locate(spec(Counting(GOOD)), cache_dir=tmp_path)
    assert not any(p.exists() for p in stale)
    assert fresh.exists() and alive.exists() and mine.exists()
    assert (folder / "u.data").read_bytes() == GOOD


@pytest.mark.parametrize("when", ["before reading", "before deleting"])
def test_damaged_cache_removed_meanwhile_by_another_process_is_fetched_again(
        tmp_path, monkeypatch, when):
    cached = tmp_path / "toy" / "u.data"
    cached.parent.mkdir()
    cached.write_bytes(b"damaged\n")
    real_mismatch = sources.mismatch

    def racing_mismatch(path, digests):
        if path == cached and when == "before reading":
            cached.unlink()
        problem = real_mismatch(path, digests)
        if path == cached and when == "before deleting":
            cached.unlink()
        return problem

    monkeypatch.setattr(sources, "mismatch", racing_mismatch)
    assert locate(spec(Counting(GOOD)), cache_dir=tmp_path).read_bytes() == GOOD


def test_fetch_scratch_folders_live_beside_the_destination_and_go_even_on_errors(
        tmp_path, monkeypatch):
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    dest = tmp_path / "cache" / ".u.data.1.00000000.tmp"
    dest.parent.mkdir()
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(DataError, match="truncated or corrupted"):
        sources.url_member_source(broken.as_uri(), "ml-100k/u.data").fetch(dest)
    seen = {}

    def fake_pip(cmd, env, **kwargs):
        folder = Path(cmd[cmd.index("-d") + 1])
        seen.update(folder=folder, tmpdir=env["TMPDIR"], beside=folder.parent == dest.parent)
        (folder / "recbole-1.2.1-py3-none-any.whl").write_bytes(b"not a zip")
        raise subprocess.TimeoutExpired(cmd, 1)

    monkeypatch.setattr(subprocess, "run", fake_pip)
    with pytest.raises(subprocess.TimeoutExpired):
        sources.pip_wheel_source("recbole==1.2.1", "m", bytes).fetch(dest)
    assert seen["beside"] and seen["tmpdir"] == str(seen["folder"])
    assert not seen["folder"].exists()
    assert list(dest.parent.iterdir()) == [] and list(system_tmp.iterdir()) == []


@pytest.mark.parametrize("name, words", [("nowhere", "no such folder"),
                                         ("u.data", "is a file, not a folder")])
def test_data_dir_that_is_not_a_folder_is_an_error_naming_it(tmp_path, name, words):
    (tmp_path / "u.data").write_bytes(GOOD)
    data_dir = tmp_path / name
    body = Counting(GOOD)
    with pytest.raises(DataError, match=f"--data-dir {data_dir}: {words}"):
        locate(spec(body), data_dir=data_dir, cache_dir=tmp_path / "cache")
    assert body.calls == 0
