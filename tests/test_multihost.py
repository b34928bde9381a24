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
from autorec_jax.experiment import train_and_evaluate
from autorec_jax.parallel import fetch
from synthetic import random_ratings
from test_train import toy_config

TESTS = Path(__file__).resolve().parent
CHILD = r"""
import json, sys
from autorec_jax.parallel import initialize_distributed
initialize_distributed(f"localhost:{sys.argv[1]}", 2, int(sys.argv[2]))
import jax
from test_multihost import make_run
result = make_run(sys.argv[3])  # every process names the folder; process 0 writes it
print("RESULT " + json.dumps(result))
"""


def make_run(out_dir=None):
    """The run both sides make: history and final params, as plain JSON-able data."""
    ratings = random_ratings(num_users=32, num_items=64, density=0.3, seed=2)
    config = config_lib.replace(toy_config(optimizer="adam", lr=0.01, batch_size=12,
                                           epochs=2), parallel="sharded",
                                model_parallel=int(os.environ.get("AUTOREC_TEST_MODEL", "1")))
    result = train_and_evaluate(config, out_dir, ratings=ratings)
    params = jax.tree.map(lambda x: np.asarray(x).tolist(),
                          fetch(result.state.params))
    return {"history": [{k: r[k] for k in ("train_loss", "test_rmse")}
                        for r in result.history],
            "params": params, "num_devices": result.summary["num_devices"],
            "processes": result.summary["process_count"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 devices")
def test_two_processes_match_one_process(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="4",
               PYTHONPATH=os.pathsep.join([str(TESTS.parent), str(TESTS)]))
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(port), str(i),
                                  str(tmp_path / "run")], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        outputs = [child.communicate(timeout=120) for child in children]
    finally:  # one failing child leaves the other waiting at a collective
        for child in children:
            if child.poll() is None:
                child.kill()
    for child, (out, err) in zip(children, outputs):
        assert child.returncode == 0, err[-3000:]
    results = [json.loads(next(line[7:] for line in out.splitlines()
                               if line.startswith("RESULT "))) for out, _ in outputs]
    single = make_run()
    for result in results:
        assert (result["num_devices"], result["processes"]) == (8, 2)
        for a, b in zip(result["history"], single["history"]):
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
            assert a["test_rmse"] == pytest.approx(b["test_rmse"], abs=1e-6)
        np.testing.assert_allclose(np.asarray(result["params"]["output"]["kernel"]),
                                   np.asarray(single["params"]["output"]["kernel"]),
                                   atol=1e-6)
    # Only process 0 wrote the run folder: metrics, checkpoint, model, summary.
    run = tmp_path / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["process_count"] == 2 and summary["num_devices"] == 8
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert (run / "model" / "manifest.json").exists()
    assert any((run / "checkpoints").iterdir())
