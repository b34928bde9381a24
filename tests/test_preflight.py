"""Preflight checks: output and cache folders, free disk, and the memory estimate."""

import os
import shutil

import pytest

from autorec_jax import config as config_lib
from autorec_jax.run import preflight
from autorec_jax.errors import ConfigError

ML100K_ROWS, ML100K_WIDTH = 1682, 943  # I-AutoRec on MovieLens 100K: items x users
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.mark.parametrize("check, flag", [(preflight.check_out_dir, "--out"),
                                         (preflight.check_cache_dir, "--compilation-cache")])
def test_folder_checks_accept_existing_and_creatable_folders(tmp_path, check, flag):
    assert check(tmp_path) == tmp_path
    assert check(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # a check creates nothing


@pytest.mark.parametrize("check, flag", [(preflight.check_out_dir, "--out"),
                                         (preflight.check_cache_dir, "--compilation-cache")])
def test_folder_checks_refuse_empty_paths_and_files(tmp_path, check, flag):
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ConfigError, match=f"^{flag} is empty; name a folder"):
        check("")
    with pytest.raises(ConfigError, match=f"^{flag} {tmp_path}/f.txt: is a file, not a folder"):
        check(tmp_path / "f.txt")
    with pytest.raises(ConfigError, match=f"f.txt/sub: cannot be created, {tmp_path}/f.txt is"):
        check(tmp_path / "f.txt" / "sub")


@pytest.mark.skipif(IS_ROOT, reason="root writes through permission bits; see the test below")
def test_read_only_folder_is_refused(tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="ro: is not writable"):
            preflight.check_out_dir(tmp_path / "ro")
        with pytest.raises(ConfigError, match=f"cannot be created, {tmp_path}/ro is not"):
            preflight.check_out_dir(tmp_path / "ro" / "run")
    finally:
        (tmp_path / "ro").chmod(0o700)


def test_unwritable_folder_is_refused_as_access_reports_it(tmp_path, monkeypatch):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: os.fspath(p) != str(read_only)
                        and real_access(p, mode))
    with pytest.raises(ConfigError, match=r"^--out .*ro: is not writable; choose a folder"):
        preflight.check_out_dir(read_only)
    with pytest.raises(ConfigError, match="ro/run: cannot be created, .*ro is not writable"):
        preflight.check_out_dir(read_only / "run")
    assert preflight.check_out_dir(tmp_path / "other") == tmp_path / "other"


def test_free_disk_check_names_the_sizes(tmp_path, monkeypatch):
    free = shutil.disk_usage(tmp_path).free
    assert preflight.check_free_disk(tmp_path / "not-yet", 1) == free
    usage = shutil.disk_usage(tmp_path)._replace(free=300 * 2**20)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage)
    with pytest.raises(ConfigError, match=r"needs about 2.0 GiB of free disk, 300 MiB free"):
        preflight.check_free_disk(tmp_path, 2 * 2**30)


def test_memory_estimate_matches_a_hand_computation():
    config = config_lib.replace(config_lib.d2l(), hidden=(10,), batch_size=4,
                                eval_batch_size=3)
    params = (7 * 10 + 10) + (10 * 7 + 7)           # 157: encoder and decoder
    state = params * 4                              # params, grads, Adam's two moments
    train = 4 * (4 * 7 + 3 * 10)                    # [B, N] x 4 and [B, H] x 3
    evaluation = 3 * (5 * 7 + 10)                   # E = min(3, 5) rows; [E, N] x 5
    expected = 4 * (state + train + evaluation) + preflight.BYTES_PER_RATING * 11
    assert preflight.estimate_memory_bytes(config, 5, 7, num_ratings=11) == expected
    sgd = config_lib.replace(config, optimizer="sgd")
    assert preflight.estimate_memory_bytes(sgd, 5, 7) == 4 * (params * 2 + train + evaluation)


def test_huge_hidden_layer_is_refused_and_the_books_config_accepted():
    laptop = 16 * 2**30
    book = config_lib.d2l()
    need = preflight.check_memory(book, ML100K_ROWS, ML100K_WIDTH, available_bytes=laptop)
    assert need < 2**30
    huge = config_lib.replace(book, hidden=(2_000_000,))
    with pytest.raises(ConfigError) as info:
        preflight.check_memory(huge, ML100K_ROWS, ML100K_WIDTH, available_bytes=laptop)
    message = str(info.value)
    assert "needs about" in message and "16.0 GiB available" in message
    assert message.endswith("(--parallel sharded --model-parallel M)") and "\n" not in message


def test_memory_check_reads_meminfo_and_skips_when_unknown(tmp_path, monkeypatch):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemAvailable:    1000000 kB\n")
    assert preflight.available_memory_bytes(meminfo) == 1_024_000_000
    assert preflight.available_memory_bytes(tmp_path / "absent") is None
    monkeypatch.setattr(preflight, "MEMINFO", str(meminfo))
    huge = config_lib.replace(config_lib.d2l(), hidden=(2_000_000,))
    with pytest.raises(ConfigError, match="1.0 GiB available"):
        preflight.check_memory(huge, ML100K_ROWS, ML100K_WIDTH)
    monkeypatch.setattr(preflight, "MEMINFO", str(tmp_path / "absent"))
    assert preflight.check_memory(huge, ML100K_ROWS, ML100K_WIDTH) > 2**30
