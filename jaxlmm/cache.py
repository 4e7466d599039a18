"""Compiled code: kept on disk between processes, and bounded in memory within one.

* JAX's persistent compilation cache is on when jaxlmm is imported: ``~/.cache/jaxlmm/xla`` (or under
  ``$XDG_CACHE_HOME``), another folder with ``JAXLMM_CACHE_DIR=/path``, off with ``JAXLMM_CACHE_DIR=""``.
* Every executable loaded into the process (compiled, or read from that cache) holds memory mappings
  until JAX's caches drop it; Linux allows 65,530 per process, and a long session fitting many shapes
  would reach the limit and crash inside jaxlib.  jaxlmm counts the executables loaded and, at its entry
  points (:func:`bound_executables`), drops JAX's in-memory caches once more than ``MAX_EXECUTABLES`` are
  live; the kernels still needed are then reloaded from the persistent cache (a fraction of a second each).
"""

import os
from pathlib import Path

import jax
from jax import monitoring

MAX_EXECUTABLES = 64  # ~150-250 memory mappings each on XLA:CPU
_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # jax._src.dispatch.BACKEND_COMPILE_EVENT
_loaded = {"executables": 0, "releases": 0}


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
        jax.config.update(
            "jax_persistent_cache_min_compile_time_secs", 0.0
        )  # every kernel: warm starts compile nothing


def _count_executable(event: str, duration: float, **kwargs) -> None:
    if event == _BACKEND_COMPILE_EVENT:  # recorded for each executable loaded, compiled or read from disk
        _loaded["executables"] += 1


def count_executables() -> None:
    """Start counting the executables JAX loads into this process (once, at import)."""
    monitoring.register_event_duration_secs_listener(_count_executable)


def live_executables() -> int:
    """Executables loaded since JAX's caches were last dropped by :func:`bound_executables`."""
    return _loaded["executables"]


def bound_executables(limit: int | None = None) -> bool:
    """Drop JAX's in-memory caches when more than ``limit`` (``MAX_EXECUTABLES``) executables are live.

    Called where no computation is in flight (at the start of a fit or a batch).  Returns whether it
    dropped them.
    """
    if _loaded["executables"] <= (MAX_EXECUTABLES if limit is None else limit):
        return False
    jax.clear_caches()
    _loaded["executables"] = 0
    _loaded["releases"] += 1
    return True
