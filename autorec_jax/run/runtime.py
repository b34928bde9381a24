"""Process-level JAX settings that entry points (scripts, notebooks) opt into explicitly, the
accelerator guard (a TPU or GPU the system shows but JAX did not start stops a run), and the
command line's Ctrl-C policy (`Interrupts`).

Nothing here imports JAX at module load, so a notebook can read the system (which jax extra
to install) before JAX is installed or imported.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Mapping

from autorec_jax.errors import ConfigError
from autorec_jax.fileio import WRITE_LOCK

# Set on TPU VMs (TPU_ACCELERATOR_TYPE, e.g. v5litepod-1), by Cloud TPU tooling (TPU_NAME)
# and on Colab's legacy TPU runtimes (COLAB_TPU_ADDR).
TPU_ENV_VARS = ("TPU_ACCELERATOR_TYPE", "COLAB_TPU_ADDR", "TPU_NAME")
# TPU chips on PCI: Google's vendor id and the chip ids JAX itself looks for (v3, v4, v5p,
# v5e, v6e, 7x; jax/_src/hardware_utils.py). v5e and v6e chips are bound to vfio and appear
# as /dev/vfio/<n>, which any passthrough device can; their PCI ids say it is a TPU.
GOOGLE_PCI_VENDOR = "0x1ae0"
TPU_PCI_DEVICES = ("0x0027", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076")
# The device files JAX checks before it starts CUDA (the second one: Docker, Kubernetes).
GPU_DEVICE_FILES = ("/dev/nvidia0", "/dev/nvidiactl")
TPU_INSTALL = 'pip install -U "jax[tpu]"'
GPU_INSTALL = 'pip install -U "jax[cuda13]" ("jax[cuda12]" for a driver older than CUDA 13)'


def default_compilation_cache_dir() -> Path:
    return Path(os.environ.get("AUTOREC_JAX_JIT_CACHE",
                               Path.home() / ".cache" / "autorec_jax" / "jit"))


def enable_compilation_cache(cache_dir: str | os.PathLike | None = None) -> Path:
    """Turns on JAX's persistent compilation cache so a second run does not recompile.

    Call it once, before the first compilation. Every executable is cached, however quick
    its compilation was, since this project's compiles are seconds at most.
    """
    import jax  # here, so that reading the default folder imports no JAX

    path = Path(cache_dir) if cache_dir is not None else default_compilation_cache_dir()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _nvidia_smi() -> str:
    """nvidia-smi's report, or "" when it is missing or fails."""
    if shutil.which("nvidia-smi") is None:
        return ""
    try:
        return subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20,
                              check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _jax_backend() -> str:
    import jax
    return jax.default_backend()


def _requested_platforms() -> str:
    import jax
    return jax.config.jax_platforms or ""


@dataclasses.dataclass(frozen=True)
class SystemProbes:
    """How the system and JAX are read; tests replace `PROBES` with fakes."""

    exists: Callable[[str], bool] = os.path.exists
    glob: Callable[[str], list] = glob.glob
    read_text: Callable[[str], str] = _read_text
    environ: Mapping[str, str] = dataclasses.field(default_factory=lambda: os.environ)
    nvidia_smi: Callable[[], str] = _nvidia_smi
    backend: Callable[[], str] = _jax_backend          # "cpu", "gpu", "tpu" (starts JAX)
    requested: Callable[[], str] = _requested_platforms  # JAX_PLATFORMS / jax_platforms


PROBES = SystemProbes()


def visible_accelerator(probes: SystemProbes | None = None) -> str | None:
    """"tpu" or "gpu" when the system shows one (whatever JAX does with it), else None."""
    probes = probes or PROBES
    if (probes.glob("/dev/accel[0-9]*")
            or any(probes.environ.get(name) for name in TPU_ENV_VARS)
            or any(probes.read_text(vendor) == GOOGLE_PCI_VENDOR
                   and probes.read_text(str(Path(vendor).with_name("device"))) in TPU_PCI_DEVICES
                   for vendor in probes.glob("/sys/bus/pci/devices/*/vendor"))):
        return "tpu"
    if any(probes.exists(path) for path in GPU_DEVICE_FILES):
        return "gpu"
    return None


def cuda_extra(nvidia_smi_report: str) -> str:
    """The jax extra for this driver: "cuda13" when nvidia-smi reports CUDA 13 or newer,
    else "cuda12" (which newer drivers also run)."""
    found = re.search(r"CUDA Version:\s*(\d+)", nvidia_smi_report)
    return "cuda13" if found and int(found.group(1)) >= 13 else "cuda12"


def jax_extra(probes: SystemProbes | None = None) -> str | None:
    """The extra to install jax with here ("tpu", "cuda12", "cuda13"), None for the CPU."""
    probes = probes or PROBES
    kind = visible_accelerator(probes)
    if kind == "gpu":
        return cuda_extra(probes.nvidia_smi())
    return kind


def check_accelerator(allow_cpu: bool = False, probes: SystemProbes | None = None) -> None:
    """Stops a run that would silently train on the CPU next to an idle TPU or GPU.

    JAX registers the TPU and CUDA backends so that a failure to start them (a libtpu older
    than jaxlib, no CUDA plugin) only warns and falls back to the CPU. This raises instead,
    unless `allow_cpu` or JAX_PLATFORMS=cpu (the CPU asked for by name). Where no
    accelerator is visible it does nothing.

    Raises:
      ConfigError: one line naming the install command that fixes it and the flag that
        keeps the CPU.
    """
    probes = probes or PROBES
    if allow_cpu:
        return
    kind = visible_accelerator(probes)
    if kind is None or probes.backend() != "cpu":
        return
    requested = {p.strip() for p in probes.requested().split(",") if p.strip()}
    if requested == {"cpu"}:
        return
    what, fix = (("a TPU", TPU_INSTALL) if kind == "tpu" else ("an NVIDIA GPU", GPU_INSTALL))
    raise ConfigError(f"{what} is visible but JAX started only the CPU: run {fix} and "
                      "restart Python (Colab: Runtime > Restart session), or pass --allow-cpu "
                      "true (train.allow_cpu) to train on the CPU")


# Names of writes in progress in a run folder: atomic_path's `.<name>.<pid>.<hex>.tmp` files
# (data/sources.py) and checkpoint.py's folders being written, replaced or deleted.
_WRITING_PREFIXES = (".partial-", ".replaced-", ".deleting-")


def writing_in(folder: str | os.PathLike | None, pid: int | None = None) -> bool:
    """Whether this process has a write in progress under `folder` (see `_WRITING_PREFIXES`)."""
    if folder is None or not os.path.isdir(folder):
        return False
    tag = f".{os.getpid() if pid is None else pid}."
    for _, dirs, files in os.walk(folder):
        if any(d.startswith(_WRITING_PREFIXES) for d in dirs) or any(
                f.startswith(".") and tag in f and f.endswith(".tmp") for f in files):
            return True
    return False


class Interrupts:
    """The Ctrl-C (SIGINT) policy of a command-line run, installed once by the script.

    Ctrl-C exits with status 130 and one line on stderr, never a traceback, at any moment:
    during imports, loading, compilation (even inside XLA), training, evaluation and saving.
    A watcher thread reads the signal from a wakeup fd (so it acts while the main thread sits
    in C code, and no KeyboardInterrupt can be swallowed in a callback); the Python-level
    handler does nothing. The exit waits while this process has a write in progress in
    `folder` (a temp file or checkpoint folder not yet renamed into place), so whatever is
    left on disk is whole. Between `allow_stop()` and the end, the first Ctrl-C only sets
    `requested` (the training loop polls it, saves and stops); a second one exits. The main
    thread calls `take_exit()` before its own last line, so only one line is ever printed.

    Attributes:
      folder: where the run writes (None: exit without waiting).
      message: the line's text after `<prog>: `.
      requested: a stop was asked for while stopping was allowed.
    """

    def __init__(self, prog: str, *, folder: str | os.PathLike | None = None,
                 message: str = "interrupted",
                 stop_note: str = "stopping after this epoch (Ctrl-C again to stop at once)"):
        self.prog, self.folder, self.message, self.stop_note = prog, folder, message, stop_note
        self.requested = False
        self._stoppable = False
        self._main_done = False
        self._exit = threading.Lock()  # held by whichever thread ends the process
        self._reader, self._writer = socket.socketpair()

    def install(self) -> "Interrupts":
        """Takes over SIGINT (call it from the main thread, as early as possible)."""
        self._writer.setblocking(False)
        signal.signal(signal.SIGINT, lambda signum, frame: None)
        signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        threading.Thread(target=self._watch, name="sigint-watcher", daemon=True).start()
        return self

    def allow_stop(self) -> None:
        """From now on the first Ctrl-C asks the loop to stop instead (main thread)."""
        # Something may have taken the wakeup fd since install (asyncio does, for its loop).
        signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        self._stoppable = True

    def stop_requested(self) -> bool:
        """The `stop_requested=` of `train_and_evaluate`: polled after each epoch, it also
        allows stopping from then on (before the first epoch ends, Ctrl-C exits)."""
        if not self._stoppable:
            self.allow_stop()
        return self.requested

    def take_exit(self) -> None:
        """Called by the main thread once it is done (before its last line and status): from
        then on Ctrl-C adds nothing. If a Ctrl-C is already ending the process, this waits
        for that (one line in all: its own)."""
        self._main_done = True
        self._exit.acquire()

    def _watch(self) -> None:
        while True:
            data = self._reader.recv(64)
            for signum in data:
                if signum == signal.SIGINT:
                    self._on_sigint()

    def _on_sigint(self) -> None:
        if self._stoppable and not self.requested:
            self.requested = True
            if self.stop_note:
                print(self.stop_note, flush=True)
            return
        if not self._exit.acquire(blocking=False):
            return  # the main thread is printing its last line and status
        # A write in progress (atomic file, checkpoint folder) lands first, and none starts
        # after: the lock is held until the process ends. The poll covers writers that do
        # not take the lock.
        with WRITE_LOCK:
            while not self._main_done and writing_in(self.folder):
                time.sleep(0.01)
            exit_interrupted(self.prog, self.message)


def exit_interrupted(prog: str, message: str = "interrupted") -> None:
    """Ends the process now: status 130, one line `<prog>: <message>` on stderr."""
    try:
        sys.stdout.flush()
    except Exception:  # noqa: BLE001 - a closed or broken stdout must not block the exit
        pass
    os.write(2, f"{prog}: {message}\n".encode())
    os._exit(130)
