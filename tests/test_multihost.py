"""Two processes x 4 CPU devices (gloo collectives) train exactly like one process x 8."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from autorec_jax import config as config_lib
from autorec_jax.errors import TrainingInterrupted
from autorec_jax.run.experiment import train_and_evaluate
from autorec_jax.distributed.parallel import fetch
from synthetic import random_ratings
from test_train import toy_config

# The full tier (CI runs it beside the README's command: `python -m pytest -m full`).
pytestmark = pytest.mark.full
TESTS = Path(__file__).resolve().parent
CHILD = r"""
import json, sys
from autorec_jax.distributed.parallel import initialize_distributed
initialize_distributed(f"localhost:{sys.argv[1]}", 2, int(sys.argv[2]))
import jax
from test_multihost import make_run
# Every process names the run folder; process 0 writes it.
result = make_run(sys.argv[3], sys.argv[4] or None, stop_after=int(sys.argv[5]) or None,
                  resume=sys.argv[6] == "resume")
print("RESULT " + json.dumps(result))
"""


def run_ratings():
    return random_ratings(num_users=32, num_items=64, density=0.3, seed=2)


def split_files_folder():
    """A folder of split files to read instead of the ratings (env, so children see it)."""
    return os.environ.get("AUTOREC_TEST_SPLIT_FILES") or None


def run_config(parts=None, parallel="sharded"):
    return config_lib.replace(
        toy_config(optimizer="adam", lr=0.01, batch_size=16 if parts else 12, epochs=2,
                   last_batch="pad" if parts else "rollover"),
        parallel=parallel, parts=parts, train_ratings=None if parts else split_files_folder(),
        model_parallel=int(os.environ.get("AUTOREC_TEST_MODEL", "1")) if parallel ==
        "sharded" else 1)


def make_run(out_dir=None, parts=None, parallel="sharded", stop_after=None, resume=False,
             epochs=2):
    """The run both sides make: history and final params, as plain JSON-able data. With
    `parts` (a folder), the rows come from row parts instead of the ratings; with
    `stop_after`, the run is interrupted after that epoch ({"interrupted": epoch})."""
    calls = iter(range(1, 100))
    try:
        result = train_and_evaluate(
            config_lib.replace(run_config(parts, parallel), epochs=epochs), out_dir,
            ratings=None if parts or split_files_folder() else run_ratings(), resume=resume,
            stop_requested=None if stop_after is None else lambda: next(calls) >= stop_after)
    except TrainingInterrupted:
        return {"interrupted": stop_after}
    params = jax.tree.map(lambda x: np.asarray(x).tolist(),
                          fetch(result.state.params))
    data = result.experiment.data
    return {"history": [{k: r[k] for k in ("train_loss", "test_rmse")}
                        for r in result.history],
            "params": params, "num_devices": result.summary["num_devices"],
            "processes": result.summary["process_count"],
            "devices_rows": sorted(data.device_rows or []), "local_ratings": data.local_ratings}


def assert_same_run(result: dict, other: dict, *, rmse_atol: float, params_atol: float):
    """Every epoch's loss (1e-5 relative) and test RMSE, and the decoder's kernel, agree."""
    assert len(result["history"]) == len(other["history"])
    for a, b in zip(result["history"], other["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["test_rmse"] == pytest.approx(b["test_rmse"], abs=rmse_atol)
    np.testing.assert_allclose(np.asarray(result["params"]["output"]["kernel"]),
                               np.asarray(other["params"]["output"]["kernel"]),
                               atol=params_atol)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_two_processes(tmp_path, parts=("", ""), stop_after=0, resume="",
                      failing=False) -> list:
    """make_run in 2 processes x 4 CPU devices; process i reads the parts folder parts[i].
    Returns each process's result, or with `failing` each one's stderr."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="4",
               PYTHONPATH=os.pathsep.join([str(TESTS.parent), str(TESTS)]))
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(port), str(i),
                                  str(tmp_path / "run"), str(parts[i]), str(stop_after),
                                  resume], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for i in range(2)]
    try:
        outputs = [child.communicate(timeout=120) for child in children]
    finally:  # one failing child leaves the other waiting at a collective
        for child in children:
            if child.poll() is None:
                child.kill()
    if failing:
        assert all(child.returncode != 0 for child in children)
        return [err for _, err in outputs]
    for child, (out, err) in zip(children, outputs):
        assert child.returncode == 0, err[-3000:]
    return [json.loads(next(line[7:] for line in out.splitlines()
                            if line.startswith("RESULT "))) for out, _ in outputs]


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices")
@pytest.mark.parametrize("model", [1, 2])
def test_two_processes_match_one_process(tmp_path, monkeypatch, model):
    """(data 8) and (data 4, model 2): each process's model groups lie within it."""
    monkeypatch.setenv("AUTOREC_TEST_MODEL", str(model))
    results = run_two_processes(tmp_path)
    single = make_run()
    for result in results:
        assert (result["num_devices"], result["processes"]) == (8, 2)
        assert_same_run(result, single, rmse_atol=1e-6, params_atol=1e-6)
    # Only process 0 wrote the run folder: metrics, checkpoint, model, summary.
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["process_count"] == 2 and summary["num_devices"] == 8
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert (run / "model" / "manifest.json").exists()
    assert any((run / "checkpoints").iterdir())


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices")
@pytest.mark.parametrize("model", [2])  # 1 works too; 2 also covers the model axis
def test_two_processes_on_row_parts_load_only_their_own_and_match_one_process(
        tmp_path, monkeypatch, model):
    """Each process is given a folder holding only its own 4 of the 8 parts: it could not
    read another's. Both train exactly as one process with all 8 parts, and as one device.
    With a model axis of 2, each of the 4 data devices keeps 2 parts."""
    from autorec_jax.data import parts
    monkeypatch.setenv("AUTOREC_TEST_MODEL", str(model))
    data = 8 // model
    whole = tmp_path / "parts"
    parts.write_parts(run_config(), whole, 8, ratings=run_ratings())
    own = []
    for i in range(2):
        folder = tmp_path / f"process{i}"
        folder.mkdir()
        for name in ("meta.json", "lengths.npz", "ids.npz",
                     *(f"part-{p:05d}.npz" for p in range(4 * i, 4 * i + 4))):
            (folder / name).write_bytes((whole / name).read_bytes())
        own.append(folder)
    results = run_two_processes(tmp_path, own)
    single = make_run(parts=str(whole))
    one_device = make_run(parts=str(whole), parallel="jit")
    total = single["local_ratings"]
    assert [r["devices_rows"] for r in results] == [list(range(data // 2)),
                                                    list(range(data // 2, data))]
    assert single["devices_rows"] == list(range(data))
    for result in results:
        assert (result["num_devices"], result["processes"]) == (8, 2)
        assert result["local_ratings"] < 0.6 * total  # about half of the ratings each
        for other in (single, one_device):
            assert_same_run(result, other, rmse_atol=1e-5, params_atol=1e-5)
    assert sum(r["local_ratings"] for r in results) == total


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices")
def test_two_processes_from_split_files_match_one_process(tmp_path, monkeypatch):
    """Both processes read the split files (`data.py split` of the ratings): they train as
    one process from the files, which trains bit for bit as one from the internal split."""
    from autorec_jax.data import loading
    config = run_config()
    split = loading.load_split(config.data, config.split_seed, run_ratings())
    folder = tmp_path / "split"
    folder.mkdir()
    for name, part in zip(("train", "valid", "test"), split):
        if len(part):
            (folder / f"{name}.tsv").write_text("".join(
                f"{part.user_ids[u]}\t{part.item_ids[i]}\t{v:g}\n"
                for u, i, v in zip(part.users, part.items, part.ratings)))
    internal = make_run()
    monkeypatch.setenv("AUTOREC_TEST_SPLIT_FILES", str(folder))
    results = run_two_processes(tmp_path)
    single = make_run()
    assert single["history"] == internal["history"]
    assert single["params"] == internal["params"]
    for result in results:
        assert (result["num_devices"], result["processes"]) == (8, 2)
        assert_same_run(result, single, rmse_atol=1e-6, params_atol=1e-6)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["data"]["split"] == "files" and sorted(summary["data"]["split_files"]) == [
        "test", "train"]


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices")
def test_an_interrupted_two_process_run_resumes_like_an_uninterrupted_one(tmp_path):
    """Interrupted after epoch 1 (process 0 decides for both), then resumed by 2 processes:
    every process restores the checkpoint, and the run ends as one process's would."""
    assert run_two_processes(tmp_path, stop_after=1) == [{"interrupted": 1}] * 2
    run = tmp_path / "run"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    results = run_two_processes(tmp_path, resume="resume")
    single = make_run()
    assert [r["train_loss"] for r in results[0]["history"]] == pytest.approx(
        [r["train_loss"] for r in single["history"]], rel=1e-5)
    for result in results:
        assert result["history"][-1]["test_rmse"] == pytest.approx(
            single["history"][-1]["test_rmse"], abs=1e-6)
        np.testing.assert_allclose(np.asarray(result["params"]["output"]["kernel"]),
                                   np.asarray(single["params"]["output"]["kernel"]),
                                   atol=1e-6)
    assert len(results[0]["history"]) == 2  # process 0 read epoch 1's record back
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices")
def test_a_model_axis_across_processes_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOREC_TEST_MODEL", "8")
    for err in run_two_processes(tmp_path, failing=True):
        assert "train.model_parallel 8 spans processes" in err and "at most 4" in err
