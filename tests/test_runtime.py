"""The accelerator guard: what counts as a visible TPU or GPU, and when a run stops."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import autorec_jax as ar
from autorec_jax.run import runtime
from autorec_jax.errors import ConfigError
from synthetic import random_ratings
from test_train import toy_config

REPO = Path(__file__).resolve().parent.parent
CUDA12_SMI = "| NVIDIA-SMI 550.54.15   Driver Version: 550.54.15   CUDA Version: 12.4 |"


def fake_probes(files=(), environ=None, pci=None, backend="cpu", requested="", smi=""):
    """A system holding `files` and PCI devices {"0000:00:04.0": (vendor, device)}."""
    pci = pci or {}
    texts = {f"/sys/bus/pci/devices/{slot}/{kind}": value
             for slot, ids in pci.items() for kind, value in zip(("vendor", "device"), ids)}

    def glob(pattern):
        if pattern == "/sys/bus/pci/devices/*/vendor":
            return [path for path in texts if path.endswith("/vendor")]
        prefix = pattern.split("[")[0]
        return [f for f in files if f.startswith(prefix) and f[len(prefix):].isdigit()]

    return runtime.SystemProbes(exists=lambda path: path in files, glob=glob,
                                read_text=lambda path: texts.get(path, ""),
                                environ=environ or {}, nvidia_smi=lambda: smi,
                                backend=lambda: backend, requested=lambda: requested)


@pytest.mark.parametrize("probes, kind", [
    (fake_probes(), None),
    (fake_probes(files={"/dev/accel0"}), "tpu"),                       # v2/v3/v4 TPU VM
    (fake_probes(pci={"0000:00:05.0": ("0x1ae0", "0x0063")}), "tpu"),   # v5e chip on vfio
    (fake_probes(pci={"0000:00:04.0": ("0x1ae0", "0x0042")}), None),    # Google's gVNIC
    (fake_probes(environ={"TPU_ACCELERATOR_TYPE": "v5litepod-1"}), "tpu"),
    (fake_probes(environ={"COLAB_TPU_ADDR": "10.0.0.2:8470"}), "tpu"),
    (fake_probes(files={"/dev/nvidia0"}), "gpu"),
    (fake_probes(files={"/dev/nvidiactl"}), "gpu"),
    (fake_probes(files={"/dev/accelerometer"}), None),
], ids=["nothing", "accel", "pci-v5e", "pci-gvnic", "env-tpu-vm", "env-colab", "nvidia0",
        "nvidiactl", "not-accel"])
def test_visible_accelerator_reads_device_files_pci_ids_and_env(probes, kind):
    assert runtime.visible_accelerator(probes) == kind


def test_cpu_only_jax_next_to_a_tpu_stops_with_one_line_naming_the_fix():
    with pytest.raises(ConfigError) as error:
        runtime.check_accelerator(False, fake_probes(files={"/dev/accel0"}))
    message = str(error.value)
    assert "\n" not in message and 'pip install -U "jax[tpu]"' in message
    assert "restart" in message and "--allow-cpu true" in message


def test_cpu_only_jax_next_to_a_gpu_names_the_cuda_extras():
    with pytest.raises(ConfigError, match=r'jax\[cuda13\].*jax\[cuda12\]'):
        runtime.check_accelerator(False, fake_probes(files={"/dev/nvidia0"}))


@pytest.mark.parametrize("allow_cpu, probes", [
    (True, fake_probes(files={"/dev/accel0"})),                          # the flag
    (False, fake_probes(files={"/dev/accel0"}, requested="cpu")),        # JAX_PLATFORMS=cpu
    (False, fake_probes(files={"/dev/accel0"}, backend="tpu")),          # JAX runs on it
    (False, fake_probes(files={"/dev/nvidia0"}, backend="gpu")),
    (False, fake_probes()),                                              # nothing to use
], ids=["allow-cpu", "cpu-asked-by-name", "tpu-started", "gpu-started", "no-accelerator"])
def test_guard_lets_the_run_go(allow_cpu, probes):
    runtime.check_accelerator(allow_cpu, probes)


def test_cpu_first_in_a_platform_list_is_no_insistence():
    with pytest.raises(ConfigError):
        runtime.check_accelerator(False, fake_probes(files={"/dev/accel0"},
                                                     requested="tpu,cpu"))


@pytest.mark.parametrize("report, extra", [(CUDA12_SMI, "cuda12"), (
    "Driver Version: 580.65.06   CUDA Version: 13.0", "cuda13"), ("", "cuda12")])
def test_jax_extra_follows_the_drivers_cuda_version(report, extra):
    assert runtime.jax_extra(fake_probes(files={"/dev/nvidia0"}, smi=report)) == extra
    assert runtime.jax_extra(fake_probes(environ={"TPU_NAME": "local"})) == "tpu"
    assert runtime.jax_extra(fake_probes()) is None


def test_a_run_checks_the_accelerator_before_loading_data(monkeypatch):
    monkeypatch.setattr(runtime, "PROBES", fake_probes(files={"/dev/accel0"}))
    ratings = random_ratings(num_users=20, num_items=16, density=0.3, seed=1)
    with pytest.raises(ConfigError, match="allow-cpu"):
        ar.train_and_evaluate(toy_config(epochs=1), ratings=ratings)
    result = ar.train_and_evaluate(toy_config(epochs=1, allow_cpu=True), ratings=ratings)
    assert result.summary["epochs_run"] == 1


@pytest.mark.skipif(runtime.visible_accelerator() is not None,
                    reason="a real accelerator is visible; JAX may start it")
def test_cli_exits_2_when_jax_fell_back_to_the_cpu_beside_a_tpu():
    # The real probes and the real JAX: no libtpu here, so JAX falls back to the CPU.
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), "--preset",
                          "tiny", "--compilation-cache", "off"], capture_output=True,
                         text=True, env={**env, "TPU_ACCELERATOR_TYPE": "v5litepod-1"})
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("\n") == 1 and 'jax[tpu]' in out.stderr and out.stdout == ""
