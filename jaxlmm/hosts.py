"""Several processes (hosts) under JAX's distributed runtime: split the simulations, gather the results.

After ``jax.distributed.initialize(...)`` in every process, ``bootstrap``, ``pbtest`` and ``power`` give
each process its share of the ``nsim`` simulations, drawn from its own child of the seed's
``SeedSequence``, fit them on the process's local devices, and gather every process's results, so each
process returns the whole result.  With one process nothing changes (and the seed's stream is the plain
one, as ``simulate`` draws it).
"""

from __future__ import annotations

import jax
import numpy as np


def process_share(nsim: int, seed: int | None) -> tuple[int, int | np.random.SeedSequence | None]:
    """This process's number of simulations and its seed."""
    count, index = jax.process_count(), jax.process_index()
    if count == 1:
        return nsim, seed
    share = nsim // count + (index < nsim % count)
    return share, np.random.SeedSequence(seed).spawn(count)[index]


def gather(array: np.ndarray) -> np.ndarray:
    """Every process's ``array`` concatenated along axis 0, in process order (sizes may differ)."""
    if jax.process_count() == 1:
        return array
    from jax.experimental import multihost_utils

    array = np.asarray(array)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([array.shape[0]]))).ravel()
    padded = np.zeros((int(sizes.max()),) + array.shape[1:], dtype=array.dtype)
    padded[: array.shape[0]] = array
    everything = np.asarray(multihost_utils.process_allgather(padded))
    return np.concatenate([everything[k, : sizes[k]] for k in range(len(sizes))])
