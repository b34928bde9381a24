"""The Colab notebook, executed top to bottom on CPU with 8 fake devices, as CI runs it.

The kernel gets JAX_PLATFORMS=cpu, 8 host devices and AUTOREC_JAX_NOTEBOOK_CI=1, which the
install cell (and only it) reads: it installs nothing and takes this checkout. Every cell
runs; the training is the book's full recipe on MovieLens 100K (through the project's loader).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "autorec_colab.ipynb"
CI_ENV = {"JAX_PLATFORMS": "cpu", "AUTOREC_JAX_NOTEBOOK_CI": "1"}


def test_committed_notebook_has_no_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


def test_only_the_install_cell_reads_the_ci_marker():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    readers = [i for i, cell in enumerate(nb.cells) if "AUTOREC_JAX_NOTEBOOK_CI" in cell.source
               and cell.cell_type == "code"]
    assert len(readers) == 1 and "pip" in nb.cells[readers[0]].source


@pytest.mark.full
def test_notebook_runs_end_to_end_on_8_cpu_devices():
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    flags = os.environ.get("XLA_FLAGS", "")
    env = {**os.environ, **CI_ENV,
           "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count=8".strip()}
    runs = NOTEBOOK.parent / "runs"       # where the notebook puts its runs (gitignored)
    existed = runs.exists()
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute(env=env)
    finally:
        if not existed:
            shutil.rmtree(runs, ignore_errors=True)
    text = "\n".join(output.get("text", "") + str(output.get("data", {}).get("text/plain", ""))
                     for cell in nb.cells if cell.cell_type == "code"
                     for output in cell.outputs)
    assert "CI: autorec_jax from" in text and "installing nothing" in text
    assert "sharded on 8 cpu device(s)" in text  # auto: every local device
    assert "restored" in text and "Image" in text  # the curves were shown


def test_install_cell_outside_a_checkout_asks_for_the_source(tmp_path):
    # As on Colab before AUTOREC_JAX_SOURCE is set: nothing to install from, one clear line.
    nb = nbformat.read(NOTEBOOK, as_version=4)
    parameters, install = [cell.source for cell in nb.cells if cell.cell_type == "code"][:2]
    env = {k: v for k, v in os.environ.items() if k != "AUTOREC_JAX_NOTEBOOK_CI"}
    out = subprocess.run([sys.executable, "-c", parameters + "\n" + install], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "pip install" not in out.stdout
    assert "RuntimeError: Set AUTOREC_JAX_SOURCE in the cell above" in out.stderr
