"""Shape buckets: the compiled kernels see sizes rounded up to a few values, with exact padding.

Every distinct array shape is a new XLA executable (seconds to compile, memory mappings held for the
life of the process), so a session fitting models of many sizes would compile without end.  Sizes are
therefore rounded up to a bucket grid and the cross-products padded:

* *empty levels* (zero rows of Z) in any block: an empty level adds ``M_j = I`` to the blocked factor,
  so it changes neither ``log|M|`` nor the Schur complement, and the criterion is unchanged exactly;
* *zero sparse entries* in the ``Z₂ᵀZ₁`` and pair lists (coefficient 0, pair indices kept sorted);
* *inert fixed-effect columns*: a padded column of X is orthogonal to everything and of unit norm
  (``XᵀX`` gets a 1 on its diagonal, every other product a 0), so the Schur complement gains an identity
  block: ``log|R_X|²`` and r² are unchanged, its coefficient is 0, and ``(R_XᵀR_X)⁻¹`` holds the real one
  in its leading block;
* the numbers of observations and of real fixed effects travel as data (``CrossProducts.n``, ``.p``).

The grid is powers of two up to ``FINE_FROM`` and ``STEPS_PER_OCTAVE`` sizes per octave beyond: small
problems share few executables (compiling costs far more than padding them), large ones pay at most
1/8 more work in the padded dimension.  Two kinds of dimension get finer grids, because padding them costs
more than a compile saves: the levels of the second and later blocks, which make the dense Schur block
whose Cholesky costs their cube (powers of two up to ``DENSE_FINE_FROM``, ``FINE_STEPS_PER_OCTAVE`` sizes
per octave beyond: ≤ 5% more work; a crossed factor of 601 levels pads to 608, InstEval's 1,128 lecturers
to 1,136), and sparse lists longer than ``LONG_LIST`` (InstEval's 1,062,300 pairs pad by 0.25%, not 11%).
Fixed-effect columns take two sizes per octave (:func:`columns_bucket`).  Batched refits (of responses, or
of data sets) run hundreds to thousands of lanes of one shape, where run time outweighs a compile: their lanes use the fine grid from
``BATCH_FINE_FROM`` on (200 data sets of 21 groups: 22 padded levels rather than 32, 1.3x faster lanes).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .crossprod import CrossProducts, block_offsets, crossproducts
from .design import Design, ReBlock, Structure

FINE_FROM = 256  # sizes above this are rounded to STEPS_PER_OCTAVE sizes per octave, not to powers of two
BATCH_FINE_FROM = 8  # the same for the lanes of batched refits
STEPS_PER_OCTAVE = 8
FINE_STEPS_PER_OCTAVE = 64  # for the dense block's levels beyond DENSE_FINE_FROM, and for long sparse lists
DENSE_FINE_FROM = 128  # the dense block's levels: powers of two only up to here
COLUMNS_FINE_FROM = 4  # fixed-effect columns: powers of two only up to here
LONG_LIST = 1 << 16  # sparse lists longer than this use FINE_STEPS_PER_OCTAVE
MIN_FIRST_LEVELS = 8  # the grouping factor with most levels has at least this many (padded) levels
MIN_REST_LEVELS = 4


def bucket(k: int, minimum: int = 1, fine_from: int = FINE_FROM, steps: int = STEPS_PER_OCTAVE) -> int:
    """The smallest grid size >= max(k, minimum): a power of two up to ``fine_from``, beyond it a
    multiple of 2^e / ``steps`` for the octave (2^e, 2^(e+1)] holding k."""
    k = max(int(k), int(minimum), 1)
    power = 1 << (k - 1).bit_length()
    if power <= fine_from:
        return power
    step = max((power // 2) // steps, 1)
    return -(-k // step) * step


def dense_bucket(k: int, fine_from: int = FINE_FROM) -> int:
    """The grid size of a second or later block's levels (rows of the dense Schur block, cubic cost)."""
    return bucket(k, MIN_REST_LEVELS, min(fine_from, DENSE_FINE_FROM), FINE_STEPS_PER_OCTAVE)


def columns_bucket(p: int, fine_from: int = FINE_FROM) -> int:
    """The grid size of the fixed-effect columns: 1, 2, 4, 6, 8, 12, 16, 24, ... (two sizes per octave; a
    model with 9 coefficients runs 12 columns, not 16); on the batch grid, every count above 8."""
    return bucket(p, 1, fine_from) if fine_from <= BATCH_FINE_FROM else bucket(p, 1, COLUMNS_FINE_FROM, 2)


def list_bucket(k: int, fine_from: int = FINE_FROM) -> int:
    """The grid length of a sparse entry list."""
    return bucket(k, 1, fine_from, FINE_STEPS_PER_OCTAVE if k > LONG_LIST else STEPS_PER_OCTAVE)


def padded_structure(structure: Structure, fine_from: int = FINE_FROM) -> Structure:
    """``structure`` with each block's number of levels rounded up to its bucket."""
    blocks = tuple(
        ReBlock(
            bucket(b.n_levels, MIN_FIRST_LEVELS, fine_from) if k == 0 else dense_bucket(b.n_levels, fine_from),
            b.q,
            b.theta_index,
        )
        for k, b in enumerate(structure.blocks)
    )
    return Structure(blocks, structure.n_theta)


def padded_sizes(cp: CrossProducts, fine_from: int = FINE_FROM) -> tuple[int, int, int]:
    """Bucketed lengths of the ``Z₂ᵀZ₁`` entry list and of the pair list, and the bucketed number of
    fixed-effect columns."""
    return (
        list_bucket(cp.A21_val.shape[0], fine_from),
        list_bucket(cp.pair_val.shape[0], fine_from),
        columns_bucket(cp.AXX.shape[0], fine_from),
    )


def _rest_remap(structure: Structure, target: Structure) -> np.ndarray:
    """Position of each real rest column (blocks 2, 3, ...) among ``target``'s padded rest columns."""
    old, new = block_offsets(structure), block_offsets(target)
    pieces = [np.arange(o1, o2) - o1 + n1 for o1, o2, n1 in zip(old, old[1:], new)]
    return np.concatenate(pieces).astype(np.int64) if pieces else np.zeros(0, dtype=np.int64)


def pad_response_products(
    products: dict[str, np.ndarray], structure: Structure, target: Structure, p: int
) -> dict[str, np.ndarray]:
    """The y-dependent products of a batch (``A1y`` (B, G, q), ``A2y`` (B, p₂), ``AXy`` (B, p), ``yy``)
    padded to ``target`` and ``p`` fixed-effect columns, as :func:`pad_crossproducts` pads one data set's."""
    A1y, A2y, AXy = (np.asarray(products[k]) for k in ("A1y", "A2y", "AXy"))
    B, G = A1y.shape[0], target.blocks[0].n_levels
    padded_A2y = np.zeros((B, block_offsets(target)[-1]))
    padded_A2y[:, _rest_remap(structure, target)] = A2y
    return {
        **products,
        "A1y": np.concatenate([A1y, np.zeros((B, G - A1y.shape[1], A1y.shape[2]))], axis=1),
        "A2y": padded_A2y,
        "AXy": np.concatenate([AXy, np.zeros((B, p - AXy.shape[1]))], axis=1),
    }


def pad_crossproducts(
    cp: CrossProducts, structure: Structure, target: Structure, nnz: int, npairs: int, p: int
) -> CrossProducts:
    """``cp`` padded with empty levels to ``target``'s level counts, to ``nnz``/``npairs`` sparse entries
    and to ``p`` fixed-effect columns (inert ones after the real ones).

    Each block's real levels keep their positions at the start of the block, so estimates per level are
    the first ``n_levels`` rows of the padded ones.
    """
    G = target.blocks[0].n_levels
    remap = _rest_remap(structure, target)
    p2, p2_new = block_offsets(structure)[-1], block_offsets(target)[-1]

    def pad_first(a):
        a = np.asarray(a)
        return np.concatenate([a, np.zeros((G - a.shape[0],) + a.shape[1:])])

    def pad_rest(a, square=False):
        a = np.asarray(a)
        out = np.zeros((p2_new,) * (2 if square else 1) + a.shape[2 if square else 1 :])
        out[np.ix_(remap, remap) if square else remap] = a
        return out

    def pad_columns(a):
        a = np.asarray(a)
        return np.concatenate([a, np.zeros(a.shape[:-1] + (p - a.shape[-1],))], axis=-1)

    def pad_sparse(a, length, fill=0):
        a = np.asarray(a)
        return np.concatenate([a, np.full(length - a.shape[0], fill, dtype=a.dtype)])

    row = remap[np.asarray(cp.A21_row)] if p2 else np.asarray(cp.A21_row)
    out_idx = np.asarray(cp.pair_out)
    if p2:
        out_idx = remap[out_idx // p2] * p2_new + remap[out_idx % p2]
    last_out = out_idx[-1] if out_idx.size else 0  # padding repeats the last index: the list stays sorted
    p_real = cp.AXX.shape[0]
    AXX = np.eye(p)
    AXX[:p_real, :p_real] = cp.AXX
    return CrossProducts(
        A11=pad_first(cp.A11),
        A1X=pad_columns(pad_first(cp.A1X)),
        A1y=pad_first(cp.A1y),
        AXX=AXX,
        AXy=pad_columns(cp.AXy),
        yy=np.asarray(cp.yy),
        A22=pad_rest(cp.A22, square=True),
        A2X=pad_columns(pad_rest(cp.A2X)),
        A2y=pad_rest(cp.A2y),
        A21_row=pad_sparse(row, nnz),
        A21_col=pad_sparse(cp.A21_col, nnz),
        A21_val=pad_sparse(cp.A21_val, nnz),
        pair_out=pad_sparse(out_idx, npairs, last_out),
        pair_w=pad_sparse(cp.pair_w, npairs),
        pair_val=pad_sparse(cp.pair_val, npairs),
        n=np.asarray(cp.n),
        p=np.asarray(cp.p),
    )


def pad_to_bucket(
    cp: CrossProducts, structure: Structure, fine_from: int = FINE_FROM
) -> tuple[CrossProducts, Structure]:
    """``cp`` padded to the bucket of its shapes, and the padded structure (the compile key)."""
    target = padded_structure(structure, fine_from)
    return pad_crossproducts(cp, structure, target, *padded_sizes(cp, fine_from)), target


class Problem(NamedTuple):
    """A design with its cross-products padded to their shape bucket, and the padded structure: what the
    compiled kernels see of a model, whatever its parameters (fitted, or given for a simulation)."""

    design: Design
    cp: CrossProducts
    structure: Structure


def padded_problem(design: Design, fine_from: int = FINE_FROM) -> Problem:
    """The :class:`Problem` of a design: cross-products computed once, padded to their bucket."""
    X, Z = design.model_matrices  # √w-scaled rows of [Z X y − offset] (lme4's weights and offset)
    cp = crossproducts(design.model_response(design.y), X, design.codes, Z, design.structure)
    cp, structure = pad_to_bucket(cp, design.structure, fine_from)
    return Problem(design, cp, structure)
