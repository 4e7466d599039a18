"""JAX's persistent compilation cache, on when jaxlmm is imported: ``~/.cache/jaxlmm/xla`` (or under
``$XDG_CACHE_HOME``), another folder with ``JAXLMM_CACHE_DIR=/path``, off with ``JAXLMM_CACHE_DIR=""``."""

import os
from pathlib import Path

import jax


def default_folder() -> str:
    return str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jaxlmm" / "xla")


def use_compilation_cache(default: str | None = None) -> None:
    """Keep compiled kernels between processes (XLA's persistent cache) in ``$JAXLMM_CACHE_DIR``, else in
    ``default`` (nothing when both are unset or empty).  A cache set up through JAX's own
    ``JAX_COMPILATION_CACHE_DIR`` is left alone."""
    if jax.config.jax_compilation_cache_dir:
        return
    folder = os.environ.get("JAXLMM_CACHE_DIR", default)
    if folder:
        jax.config.update("jax_compilation_cache_dir", folder)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
