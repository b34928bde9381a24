"""Checks a run can make before it loads data or compiles: output folders, disk and memory.

Each check raises `ConfigError` with one line naming the path (or the sizes) and the fix, so
a script can print it and exit 2 like any other usage error. Nothing here imports JAX.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from autorec_jax.errors import ConfigError

GIB = 2**30
FLOAT_BYTES = 4  # float32 parameters, optimizer state and activations
# Host and device bytes per loaded rating at the peak of setup: the ratings (ids, rating) and
# their train/valid/test copies, the CSR training rows on the host and on the device, and
# the evaluation's copy of them (measured on a 100M-rating Netflix-shaped set: README).
BYTES_PER_RATING = 64
MEMINFO = "/proc/meminfo"


def check_out_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Checks that `path` is, or can be created as, a writable folder (nothing is created).

    Args:
      path: the output folder.
      flag: the option it came from, named in messages.

    Returns:
      The folder as a Path (user home expanded).

    Raises:
      ConfigError: `path` is empty, is a file, lies under a file, or its nearest existing
        folder is not writable (permissions, read-only filesystem).
    """
    return _check_writable_folder(path, flag)


def check_cache_dir(path: str | os.PathLike, flag: str = "--compilation-cache") -> Path:
    """As `check_out_dir`, for a cache folder (e.g. JAX's compilation cache).

    Callers skip it when the cache is off; pass the folder that will be used (the default
    one when none was given).
    """
    return _check_writable_folder(path, flag)


def check_free_disk(path: str | os.PathLike, need_bytes: int) -> int:
    """Checks that the filesystem holding `path` (or where it would be created) has room.

    Args:
      path: a file or folder, existing or not.
      need_bytes: bytes the run will write there.

    Returns:
      The free bytes.

    Raises:
      ConfigError: fewer than `need_bytes` are free.
    """
    target = Path(os.fspath(path) or ".").expanduser()
    free = shutil.disk_usage(_nearest_existing(target)).free
    if free < need_bytes:
        raise ConfigError(f"{target}: needs about {_size(need_bytes)} of free disk, "
                          f"{_size(free)} free there; free some space or choose a folder on "
                          "another disk")
    return free


def estimate_memory_bytes(config, num_rows: int, row_width: int, num_ratings: int = 0
                          ) -> int:
    """Bytes a training config needs at its peak, for one copy of the model (one device).

    With d = [N, *hidden, N] the layer widths, S = sum(hidden), B = batch_size and
    E = min(eval_batch_size, num_rows), in float32 units:

      P      = sum over layers l of d[l] * d[l+1] + d[l+1]    parameters (kernels, biases)
      state  = P * (2 + m)    parameters, gradients, optimizer moments (m = 2 for Adam,
                              1 for SGD with momentum, 0 for plain SGD)
      train  = B * (4 N + 3 S)    a dense batch, its mask, the output and its gradient
                                  [B, N]; hidden activations, their gradients and dropout
                                  masks [B, S]
      eval   = E * (5 N + S)      an evaluation block's inputs, targets, their cold-start
                                  fields ("cold", "fallback") and outputs [E, N], and its
                                  activations [E, S]
      bytes  = 4 * (state / M + train + eval) + BYTES_PER_RATING * num_ratings

    M is `train.model_parallel` (a sharded run splits the N-sized state over it).
    BYTES_PER_RATING covers the ratings on the host (with their split copies) and the CSR
    rows on host and device. Compiler scratch is not counted; under pmap every device holds
    a copy.

    Args:
      config: a `Config`.
      num_rows: rows of the training matrix (items for I-AutoRec).
      row_width: N, the entries of a row (users for I-AutoRec).
      num_ratings: ratings loaded (0: not counted).
    """
    hidden = list(config.model.hidden)
    widths = [row_width, *hidden, row_width]
    params = sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
    optim = config.optim
    moments = {"adam": 2, "rprop": 3}.get(optim.optimizer, int(optim.momentum > 0))
    state = params * (2 + moments)
    batch = config.train.batch_size or num_rows
    train = batch * (4 * row_width + 3 * sum(hidden))
    block = min(config.train.eval_batch_size, num_rows)
    evaluation = block * (5 * row_width + sum(hidden))
    model = getattr(config.train, "model_parallel", 1)
    return (FLOAT_BYTES * (state // model + train + evaluation)
            + BYTES_PER_RATING * num_ratings)


def available_memory_bytes(meminfo: str | os.PathLike | None = None) -> int | None:
    """MemAvailable from `meminfo` (default /proc/meminfo, Linux), or None if unreadable."""
    try:
        with open(MEMINFO if meminfo is None else meminfo) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    value, unit = line.split()[1:3]
                    return int(value) * {"kB": 1024}.get(unit, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_memory(config, num_rows: int, row_width: int, available_bytes: int | None = None,
                 num_ratings: int = 0) -> int:
    """Checks that `estimate_memory_bytes` fits in the memory available.

    Args:
      config, num_rows, row_width, num_ratings: as for `estimate_memory_bytes`.
      available_bytes: the memory to fit in (e.g. an accelerator's); None: the host's
        MemAvailable, and no check where that is unknown (not Linux).

    Returns:
      The estimated bytes.

    Raises:
      ConfigError: the estimate exceeds the available memory.
    """
    need = estimate_memory_bytes(config, num_rows, row_width, num_ratings)
    if available_bytes is None:
        available_bytes = available_memory_bytes()
    if available_bytes is not None and need > available_bytes:
        hidden = ",".join(str(h) for h in config.model.hidden)
        raise ConfigError(f"hidden {hidden} with batch size {config.train.batch_size} on "
                          f"{num_rows} rows x {row_width} needs about {need / GIB:.1f} GiB, "
                          f"{available_bytes / GIB:.1f} GiB available; lower --hidden, "
                          "--batch-size or --eval-batch-size, or shard the model "
                          "(--parallel sharded --model-parallel M)")
    return need


def _check_writable_folder(path: str | os.PathLike, flag: str) -> Path:
    text = os.fspath(path)
    if not text.strip():
        raise ConfigError(f"{flag} is empty; name a folder (e.g. {flag} runs/first)")
    folder = Path(text).expanduser()
    try:
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"{flag} {folder}: is a file, not a folder; name a folder, or "
                              "move the file away")
        existing = _nearest_existing(folder)
    except OSError as err:
        raise ConfigError(f"{flag} {folder}: cannot be checked ({err.strerror}); choose "
                          "another folder") from None
    if not existing.is_dir():
        raise ConfigError(f"{flag} {folder}: cannot be created, {existing} is a file; choose "
                          "another folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == Path(os.path.abspath(folder)) else (
            f"cannot be created, {existing} is not writable")
        raise ConfigError(f"{flag} {folder}: {what}; choose a folder you can write to")
    return folder


def _nearest_existing(path: Path) -> Path:
    """`path` or its closest ancestor that exists (the current folder for a relative path)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _size(num_bytes: int) -> str:
    return f"{num_bytes / GIB:.1f} GiB" if num_bytes >= GIB else f"{num_bytes / 2**20:.0f} MiB"
