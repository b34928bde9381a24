"""Files written whole or not at all: atomic writes, temp names a killed run can be traced
by, and the clean-up of stale temps. Standard library only (the floor every module may use).

Temp files and folders live beside their destination and are named `.<name>.<pid>.<hex>.tmp`,
so one left by a killed process is recognisable: `clean_stale_temps` removes those older than
STALE_TEMP_SECONDS whose process is gone. Every removal tolerates entries vanishing meanwhile.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)
# Held while a file or folder is written into place (temp name, then rename). A thread that
# ends the process (Ctrl-C: `run.runtime.Interrupts`) takes it first, so a write in progress
# lands whole and none starts after. Re-entrant: a folder write holds it around its files.
WRITE_LOCK = threading.RLock()

TEMP_SUFFIX = ".tmp"
STALE_TEMP_SECONDS = 3600.0  # a temp entry untouched this long, whose process is gone, is stale


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes `data` to `path` so that readers see the old file or the whole new one.

    The file gets the mode a plain open() would give it (0o666 less the umask).
    """
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def temp_name(name: str) -> str:
    """`.<name>.<pid>.<8 hex>.tmp`: hidden, recognisable, and naming the process it is for."""
    return f".{name}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}"


def temp_pid(name: str) -> int | None:
    """The creating process id in a `temp_name`, or None when `name` is not one."""
    parts = name.rsplit(".", 3)
    if (not name.startswith(".") or not name.endswith(TEMP_SUFFIX) or len(parts) != 4
            or not parts[1].isdigit() or len(parts[2]) != 8):
        return None
    return int(parts[1])


def _create_temp_file(folder: Path, name: str) -> Path:
    """A new empty file named by `temp_name` in `folder`, mode 0o666 less the umask."""
    while True:
        path = folder / temp_name(name)
        try:
            # os.open applies the umask (mkstemp would force 0o600, kept by the rename).
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return path
        except FileExistsError:
            continue


class atomic_path:
    """Context manager giving a temp path beside `path`; on success it is fsynced and renamed
    onto `path`, on any exception it is removed and `path` is left as it was."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        WRITE_LOCK.acquire()
        try:
            self.tmp = _create_temp_file(self.path.parent, self.path.name)
        except BaseException:
            WRITE_LOCK.release()
            raise
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                with open(self.tmp, "rb+") as f:
                    os.fsync(f.fileno())
                os.replace(self.tmp, self.path)
        finally:
            self.tmp.unlink(missing_ok=True)
            WRITE_LOCK.release()
        return False


class temp_folder:
    """Context manager giving a new temp folder beside `dest` (named by `temp_name`), removed
    with its contents on exit, exception or not. Nothing goes to the system temp folder, so a
    killed run leaves its scraps where `clean_stale_temps` finds them."""

    def __init__(self, dest: Path, purpose: str):
        self.dest, self.purpose = Path(dest), purpose

    def __enter__(self) -> Path:
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        while True:
            self.path = self.dest.parent / temp_name(self.purpose)
            try:
                self.path.mkdir()
                return self.path
            except FileExistsError:
                continue

    def __exit__(self, exc_type, exc, tb):
        shutil.rmtree(self.path, ignore_errors=True)
        return False


def _pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host; True when that cannot be told."""
    if os.name != "posix":  # os.kill would terminate it on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # exists (another user's), or not a pid this host can check
    return True


def _last_modified(path: Path) -> float:
    """The latest mtime of `path` and, for a folder, of anything in it (a download writing
    into a file does not touch its folder's mtime). Vanished entries count as now."""
    try:
        latest = path.lstat().st_mtime
        if path.is_dir() and not path.is_symlink():
            for root, dirs, files in os.walk(path):
                for name in dirs + files:
                    try:
                        latest = max(latest, os.lstat(os.path.join(root, name)).st_mtime)
                    except FileNotFoundError:
                        pass
        return latest
    except FileNotFoundError:
        return time.time()


def clean_stale_temps(folder: Path, max_age_seconds: float = STALE_TEMP_SECONDS
                      ) -> list[Path]:
    """Removes the temp files and folders (see `temp_name`) in `folder` left by killed runs.

    An entry is stale when it was not modified for `max_age_seconds` and the process named in
    it is gone. Both are required: a live fetch may leave its temp file untouched for long
    (while downloading elsewhere), and a process id means nothing in a cache shared between
    hosts. Entries vanishing meanwhile (another process cleaning) are fine.

    Returns:
      The paths removed.
    """
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:  # no folder yet, or unreadable: nothing to clean
        return removed
    now = time.time()
    for entry in entries:
        pid = temp_pid(entry.name)
        if pid is None or pid == os.getpid():
            continue
        if now - _last_modified(entry) < max_age_seconds or _pid_alive(pid):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        except OSError as err:
            log.warning("could not remove stale temp %s: %s", entry, err)
            continue
        log.info("removed stale temp %s (process %d is gone)", entry, pid)
        removed.append(entry)
    return removed
