"""Test setup that must run before JAX does any work: CPU backend, 8 fake devices, and one
persistent compilation cache for the whole test run.

The cache lives in a folder of this run alone (shared by its xdist workers and the scripts
the tests start, through JAX_COMPILATION_CACHE_DIR and AUTOREC_JAX_JIT_CACHE, so no test
writes to the user's own cache) and is removed when the run ends: many
tests compile the same small programs, and each is compiled once per run instead of once
per test and worker. `AUTOREC_TEST_COMPILATION_CACHE=off` turns it off.
"""

import os
import shutil
import tempfile
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _run_cache_dir() -> Path | None:
    if os.environ.get("AUTOREC_TEST_COMPILATION_CACHE", "on") == "off":
        return None
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID") or os.environ.setdefault(
        "AUTOREC_TEST_RUN_ID", f"{os.getpid()}")
    return Path(tempfile.gettempdir()) / f"autorec_jax_test_cache_{run_id}"


_CACHE = _run_cache_dir()
if _CACHE is not None:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(_CACHE)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    os.environ["AUTOREC_JAX_JIT_CACHE"] = str(_CACHE)   # the scripts' default folder

import chex  # noqa: E402

chex.set_n_cpu_devices(8)

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_sessionfinish(session):
    # The controller (not an xdist worker) removes the run's cache once every worker is done.
    if _CACHE is not None and not hasattr(session.config, "workerinput"):
        shutil.rmtree(_CACHE, ignore_errors=True)
