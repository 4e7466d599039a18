"""JAX's persistent compilation cache, switched on when jaxlmm is imported."""

import os
from pathlib import Path

import jax


def use_compilation_cache() -> None:
    """Keep JAX's compiled kernels between processes (XLA's persistent cache), so that a new process
    fitting a model of a shape seen before skips compilation: in ``$JAXLMM_CACHE_DIR`` (set it empty to
    turn the cache off), else ``$XDG_CACHE_HOME/jaxlmm/xla`` or ``~/.cache/jaxlmm/xla``.  A cache set up
    through JAX's own ``JAX_COMPILATION_CACHE_DIR`` is left alone."""

    if jax.config.jax_compilation_cache_dir:
        return
    folder = os.environ.get("JAXLMM_CACHE_DIR")
    if folder is None:
        folder = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jaxlmm" / "xla")
    if folder:
        jax.config.update("jax_compilation_cache_dir", folder)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
