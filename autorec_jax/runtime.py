"""Process-level JAX settings that entry points (scripts, notebooks) opt into explicitly."""

from __future__ import annotations

import os
from pathlib import Path


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
