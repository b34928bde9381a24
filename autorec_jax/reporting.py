"""Run records on disk (metrics.jsonl, summary.json) and the environment they came from.

Files are written whole to a temp file and renamed, so a crash never leaves a half-written
record and an earlier complete file stays readable until the new one replaces it.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path

import jax

from autorec_jax.data.sources import atomic_write_bytes

PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "pandas")


def environment() -> dict:
    """Device kind and count, backend and library versions of this process."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    device = jax.local_devices()[0]
    return {"device_kind": device.device_kind, "platform": device.platform,
            "device_count": jax.local_device_count(), "versions": versions}


def write_json(path: Path, obj) -> None:
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_jsonl(path: Path, records: list[dict]) -> None:
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    atomic_write_bytes(Path(path), text.encode())
