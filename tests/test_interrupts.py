"""Ctrl-C at any moment of scripts/train.py: exit status 130, one stderr line, no traceback,
and nothing half-written in the run folder.

Each case waits for an observable point (time since start for the imports, the setup log
line for compilation, a finished epoch for training, a checkpoint folder being written for
saving), so which phase the signal lands in does not hang on timing; the asserted outcome
holds wherever it lands.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from synthetic import random_ratings, udata_text

REPO = Path(__file__).resolve().parent.parent
# The compilation cache stays on (in a temp folder): turning it on imports JAX while the
# flags are parsed, a moment the guard must cover too; the later runs reuse its entries.
CLI = ["--preset", "tiny", "--hidden", "64", "--batch-size", "8", "--parallel", "jit",
       "--epochs", "100000", "--checkpoint-every", "1"]


@pytest.fixture(scope="module")
def jit_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("jit_cache")


@pytest.fixture(scope="module")
def ratings_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "ratings.tsv"
    path.write_text(udata_text(random_ratings(num_users=30, num_items=48, density=0.3,
                                              seed=5)))
    return path


class Run:
    """scripts/train.py as a subprocess, its stdout read line by line as it comes."""

    def __init__(self, ratings_file, out, cache):
        self.out = out
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "scripts" / "train.py"), *CLI, "--ratings",
             str(ratings_file), "--out", str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "AUTOREC_JAX_JIT_CACHE": str(cache)})
        self.lines = []
        threading.Thread(target=lambda: self.lines.extend(iter(self.proc.stdout.readline, "")),
                         daemon=True).start()

    def wait_for(self, ready, timeout=90.0):
        deadline = time.monotonic() + timeout
        while not ready() and time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stderr.read()
            time.sleep(0.002)
        assert ready(), "the run never reached the point to interrupt"

    def interrupt(self, times=1):
        for _ in range(times):
            self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=90)
        return self.proc.returncode, self.proc.stderr.read()


def epochs_done(out):
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def writing_a_checkpoint(out):
    root = out / "checkpoints"
    return root.is_dir() and any(p.name.startswith(".partial-") for p in root.iterdir())


def assert_exited_cleanly(returncode, stderr, out):
    assert returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "interrupt" in lines[0] and "Traceback" not in stderr, stderr
    if not out.exists():
        return
    for path in out.rglob("*"):
        assert not path.name.endswith(".tmp"), f"temp file left: {path}"
        assert not path.name.startswith((".partial-", ".replaced-", ".deleting-")), path
        assert "orbax-checkpoint-tmp" not in path.name, path
        if path.suffix == ".json":
            json.loads(path.read_text())
        if path.name == "metrics.jsonl":
            [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/<pid>/maps")
def test_ctrl_c_during_imports_and_compilation_exits_at_once(
        tmp_path, ratings_file, jit_cache):
    # jaxlib's shared objects mapped: the script is importing JAX (before the script's first
    # line runs, Python's own startup is out of any script's reach).
    run = Run(ratings_file, tmp_path / "imports", jit_cache)
    run.wait_for(lambda: "jaxlib" in Path(f"/proc/{run.proc.pid}/maps").read_text())
    assert_exited_cleanly(*run.interrupt(), run.out)
    # The setup's log line: the data is loaded and placed, the first epoch compiles next.
    run = Run(ratings_file, tmp_path / "compile", jit_cache)
    run.wait_for(lambda: any("train /" in line for line in run.lines))
    returncode, stderr = run.interrupt()
    assert_exited_cleanly(returncode, stderr, run.out)
    assert epochs_done(run.out) <= 1


def test_ctrl_c_during_training_stops_after_the_epoch_and_saves_it(
        tmp_path, ratings_file, jit_cache):
    run = Run(ratings_file, tmp_path / "train", jit_cache)
    run.wait_for(lambda: epochs_done(run.out) >= 2)
    returncode, stderr = run.interrupt()
    assert_exited_cleanly(returncode, stderr, run.out)
    assert "--resume" in stderr
    from autorec_jax.run import checkpoint
    assert checkpoint.latest(run.out) == epochs_done(run.out)


def test_a_second_ctrl_c_while_a_checkpoint_is_written_exits_once_it_is_whole(
        tmp_path, ratings_file, jit_cache):
    run = Run(ratings_file, tmp_path / "save", jit_cache)
    run.wait_for(lambda: epochs_done(run.out) >= 2)
    run.proc.send_signal(signal.SIGINT)  # a stop request: the loop saves and stops
    run.wait_for(lambda: any("stopping after this epoch" in line for line in run.lines))
    run.wait_for(lambda: writing_a_checkpoint(run.out))
    run.proc.send_signal(signal.SIGSTOP)  # frozen mid-save: the second Ctrl-C lands there
    assert writing_a_checkpoint(run.out)
    run.proc.send_signal(signal.SIGINT)
    run.proc.send_signal(signal.SIGCONT)
    assert_exited_cleanly(*run.interrupt(times=0), run.out)
    from autorec_jax.run import checkpoint
    assert checkpoint.latest(run.out) is not None


def test_writing_in_sees_this_processes_temp_files_and_checkpoint_folders(tmp_path):
    from autorec_jax.fileio import temp_name
    from autorec_jax.run.runtime import writing_in
    assert not writing_in(tmp_path) and not writing_in(None)
    (tmp_path / "sub").mkdir()
    temp = tmp_path / "sub" / temp_name("metrics.jsonl")
    temp.write_text("")
    assert writing_in(tmp_path) and not writing_in(tmp_path, pid=os.getpid() + 1)
    temp.unlink()
    assert not writing_in(tmp_path)
    (tmp_path / "checkpoints" / ".partial-3").mkdir(parents=True)
    assert writing_in(tmp_path)


WRITER = r"""
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from autorec_jax.run.runtime import Interrupts
from autorec_jax.fileio import atomic_write_bytes
out = Path(sys.argv[1])
Interrupts("writer", folder=out).install()
out.mkdir(exist_ok=True)
print("writing", flush=True)
n = 0
while True:  # one atomic write after another, as a loop saving its records does
    atomic_write_bytes(out / f"f{n % 3}", bytes(200_000))
    n += 1
"""


def test_ctrl_c_between_back_to_back_writes_leaves_no_temp_file(tmp_path):
    # A write may start at any moment, also after the exit decided that none was in
    # progress: the exit and the writes share a lock, so none starts once it is ending.
    for trial in range(4):
        out = tmp_path / f"out{trial}"
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(out), str(REPO)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline() == "writing\n"
        time.sleep(0.2 + 0.05 * trial)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 130 and stderr == "writer: interrupted\n", stderr
        assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []
        assert all(p.stat().st_size == 200_000 for p in out.iterdir())
