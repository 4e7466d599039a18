"""The blocked cross-products ``A = [Z X y]ᵀ[Z X y]``, computed once per design (MixedModels.jl's A).

Block 1 is the grouping factor with most levels; its ``Z₁ᵀZ₁`` is block-diagonal and is kept as
``(G, q, q)`` per-level blocks, so the per-theta work on it is O(G q³) whatever n is.  The other
blocks ("rest", of total size p₂) are dense.  ``Z₂ᵀZ₁`` is kept sparse (COO), together with the list of
index pairs needed for ``Z₂ᵀZ₁ W Z₁ᵀZ₂`` when W is block-diagonal (``pair_*``).

The y-dependent pieces (``A1y``, ``A2y``, ``AXy``, ``yy``) are separate fields, so a batch of responses
is a batch of those fields only.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from .design import Design, Structure


class CrossProducts(NamedTuple):
    A11: jnp.ndarray  # (G, q, q)   Z₁ⱼᵀZ₁ⱼ per level j of block 1
    A1X: jnp.ndarray  # (G, q, p)   Z₁ⱼᵀXⱼ
    A1y: jnp.ndarray  # (G, q)      Z₁ⱼᵀyⱼ
    AXX: jnp.ndarray  # (p, p)
    AXy: jnp.ndarray  # (p,)
    yy: jnp.ndarray  # ()
    A22: jnp.ndarray  # (p₂, p₂)    Z₂ᵀZ₂ (dense)
    A2X: jnp.ndarray  # (p₂, p)
    A2y: jnp.ndarray  # (p₂,)
    A21_row: jnp.ndarray  # (nnz,) row of Z₂ᵀZ₁ in the rest
    A21_col: jnp.ndarray  # (nnz,) flat column j*q + r in block 1
    A21_val: jnp.ndarray  # (nnz,)
    pair_out: jnp.ndarray  # (npairs,) flat index a*p₂ + b (a <= b) into Z₂ᵀZ₁ W Z₁ᵀZ₂
    pair_w: jnp.ndarray  # (npairs,) flat index j*q*q + r*q + s into W
    pair_val: jnp.ndarray  # (npairs,)
    n: jnp.ndarray  # () number of observations (a float, so masked data sets can batch)
    p: jnp.ndarray  # () number of fixed effects (a float: X may be padded with inert columns, see shapes.py)


def block_offsets(structure: Structure) -> list[int]:
    """Start of each rest block (blocks 2, 3, ...) within the p₂ rest columns; last entry is p₂."""
    offsets = [0]
    for b in structure.blocks[1:]:
        offsets.append(offsets[-1] + b.n_levels * b.q)
    return offsets


def sparse_Z(codes: np.ndarray, Z: np.ndarray, n_levels: int) -> sp.csr_matrix:
    """The n × (levels·q) random-effects model matrix of one block, level-major columns."""
    n, q = Z.shape
    cols = codes[:, None] * q + np.arange(q)[None, :]
    rows = np.repeat(np.arange(n), q)
    return sp.csr_matrix((Z.ravel(), (rows, cols.ravel())), shape=(n, n_levels * q))


def response_products(
    Y: np.ndarray, X: np.ndarray, codes: list[np.ndarray], Z: list[np.ndarray], structure: Structure
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The y-dependent cross-products for responses ``Y`` (n, B), batch axis first:
    A1y (B, G, q), A2y (B, p₂), AXy (B, p), yy (B,)."""
    b1 = structure.blocks[0]
    A1y = (sparse_Z(codes[0], Z[0], b1.n_levels).T @ Y).T.reshape(Y.shape[1], b1.n_levels, b1.q)
    rest = [sparse_Z(c, z, b.n_levels) for c, z, b in zip(codes[1:], Z[1:], structure.blocks[1:])]
    A2y = (sp.hstack(rest).T @ Y).T if rest else np.zeros((Y.shape[1], 0))
    return A1y, np.asarray(A2y), (X.T @ Y).T, np.einsum("ib,ib->b", Y, Y)


def crossproducts(
    y: np.ndarray, X: np.ndarray, codes: list[np.ndarray], Z: list[np.ndarray], structure: Structure
) -> CrossProducts:
    """All blocks of A for one data set."""
    b1 = structure.blocks[0]
    G, q = b1.n_levels, b1.q
    n, p = X.shape
    Z1 = Z[0]
    A11 = np.zeros((G, q, q))
    np.add.at(A11, codes[0], Z1[:, :, None] * Z1[:, None, :])
    A1X = np.zeros((G, q, p))
    np.add.at(A1X, codes[0], Z1[:, :, None] * X[:, None, :])
    A1y, A2y, AXy, yy = (a[0] for a in response_products(y[:, None], X, codes, Z, structure))

    rest = [sparse_Z(c, z, b.n_levels) for c, z, b in zip(codes[1:], Z[1:], structure.blocks[1:])]
    if rest:
        Z2 = sp.hstack(rest).tocsr()
        p2 = Z2.shape[1]
        A22 = (Z2.T @ Z2).toarray()
        A2X = np.asarray(Z2.T @ X)
        A21 = (Z2.T @ sparse_Z(codes[0], Z1, G)).tocoo()
        row, col, val = A21.row.astype(np.int64), A21.col.astype(np.int64), A21.data
        pair_out, pair_w, pair_val = _pairs(row, col, val, A11, p2)
    else:
        p2 = 0
        A22, A2X = np.zeros((0, 0)), np.zeros((0, p))
        row = col = pair_out = pair_w = np.zeros(0, dtype=np.int64)
        val = pair_val = np.zeros(0)
    # NumPy arrays: compiled functions take them as they are (one fit's few calls need no device copies)
    return CrossProducts(
        *(np.asarray(a, dtype=np.float64) for a in (A11, A1X, A1y, X.T @ X, AXy, yy, A22, A2X, A2y)),
        row.astype(np.int32),
        col.astype(np.int32),
        np.asarray(val, dtype=np.float64),
        pair_out.astype(np.int32),
        pair_w.astype(np.int32),
        np.asarray(pair_val, dtype=np.float64),
        np.asarray(float(n)),
        np.asarray(float(p)),
    )


def _pairs(row, col, val, A11, p2):
    """The terms of the upper triangle of ``Z₂ᵀZ₁ W Z₁ᵀZ₂`` for block-diagonal W, merged where possible.

    A term is ``A21[a, jq+r] A21[b, jq+s] W[j, r, s]`` with ``a <= b`` (the lower triangle is its mirror).
    ``Wⱼ = Λ₁Mⱼ⁻¹Λ₁ᵀ`` depends on the level j only through ``A11ⱼ``, so levels with equal ``A11ⱼ`` (all
    levels of the same size, for a random intercept) share one W, and their terms with the same (a, b, r, s)
    are summed once here: on InstEval this takes 3.6 million terms down to 1.1 million.  Returns
    (a*p₂ + b, index of W's entry, coefficient), sorted by the first.
    """
    G, q = A11.shape[0], A11.shape[1]
    _, first_level, which = np.unique(A11.reshape(G, q * q), axis=0, return_index=True, return_inverse=True)
    representative = first_level[which.ravel()]  # the first level with the same A11 block
    level, r = col // q, col % q
    order = np.argsort(level, kind="stable")
    row, level, r, val = row[order], level[order], r[order], val[order]
    counts = np.bincount(level, minlength=G)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rep = counts[level]
    left = np.repeat(np.arange(row.size), rep)
    within = np.arange(rep.sum()) - np.repeat(np.cumsum(rep) - rep, rep)
    right = starts[level[left]] + within
    upper = row[left] <= row[right]
    left, right = left[upper], right[upper]
    out = row[left] * p2 + row[right]
    w = representative[level[left]] * q * q + r[left] * q + r[right]
    key = out * (G * q * q) + w
    order = _argsort(key)
    key, coef = key[order], (val[left] * val[right])[order]
    run_starts = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))  # equal keys are summed
    key, coef = key[run_starts], np.add.reduceat(coef, run_starts)
    return key // (G * q * q), key % (G * q * q), coef


def _argsort(key: np.ndarray) -> np.ndarray:
    """``np.argsort(key)`` for non-negative int64 keys, through a plain sort of ``key << b | position``
    where that fits in 63 bits (NumPy's vectorised sort is about ten times faster than its argsort)."""
    b = max(1, int(key.size - 1).bit_length())
    if key.size == 0 or int(key.max()).bit_length() + b > 63:
        return np.argsort(key)
    return np.sort((key << b) | np.arange(key.size)) & ((1 << b) - 1)


def design_response_products(Y: np.ndarray, design: Design) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`response_products` of responses ``Y`` (n, B) of ``design``: of the √w-scaled rows of
    ``[Z X Y − offset]``, as the fit's own cross-products (lme4's weights and offset)."""
    X, Z = design.model_matrices
    return response_products(design.model_response(Y), X, design.codes, Z, design.structure)
