"""Many data sets of different sizes fitted together: padding into a few shape buckets.

A data set's cross-products are padded with *empty* levels (zero rows of Z): an empty level adds
``M_j = I`` to the blocked factor, so it changes neither ``log|M|`` nor the Schur complement, and the
criterion of the padded problem equals the original one exactly.  Sizes are rounded up to powers of two,
so data sets of similar shape share one compiled call; the number of observations travels as data
(``CrossProducts.n``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .batch import BatchFit, hessian_lanes, run_lanes
from .crossprod import CrossProducts, block_offsets, crossproducts
from .design import Design, ReBlock, Structure, build_design, theta_start
from .errors import DataError
from .formula import parse_formula
from .optimize import positive_inverse

ALL_BATCHED = CrossProducts(*([0] * len(CrossProducts._fields)))


def bucket(k: int, minimum: int = 4) -> int:
    """The next power of two >= k (at least ``minimum``)."""
    return max(minimum, 1 << max(0, int(k) - 1).bit_length())


def padded_structure(structure: Structure) -> Structure:
    blocks = tuple(ReBlock(bucket(b.n_levels), b.q, b.theta_index) for b in structure.blocks)
    return Structure(blocks, structure.n_theta)


def pad_crossproducts(cp: CrossProducts, structure: Structure, target: Structure, nnz: int, npairs: int):
    """``cp`` padded with empty levels to ``target``'s level counts and to ``nnz``/``npairs`` sparse entries."""
    G = target.blocks[0].n_levels
    old, new = block_offsets(structure), block_offsets(target)
    remap = np.concatenate([np.arange(o1, o2) - o1 + n1 for o1, o2, n1 in zip(old, old[1:], new)]).astype(np.int64) \
        if len(old) > 1 else np.zeros(0, dtype=np.int64)
    p2, p2_new = old[-1], new[-1]

    def pad_first(a):
        a = np.asarray(a)
        return np.concatenate([a, np.zeros((G - a.shape[0],) + a.shape[1:])])

    def pad_rest(a, square=False):
        a = np.asarray(a)
        out = np.zeros((p2_new,) * (2 if square else 1) + a.shape[2 if square else 1:])
        out[np.ix_(remap, remap) if square else remap] = a
        return out

    def pad_sparse(a, length):
        a = np.asarray(a)
        return np.concatenate([a, np.zeros(length - a.shape[0], dtype=a.dtype)])

    row = remap[np.asarray(cp.A21_row)] if p2 else np.asarray(cp.A21_row)
    out_idx = np.asarray(cp.pair_out)
    if p2:
        out_idx = remap[out_idx // p2] * p2_new + remap[out_idx % p2]
    return CrossProducts(
        A11=pad_first(cp.A11), A1X=pad_first(cp.A1X), A1y=pad_first(cp.A1y), AXX=np.asarray(cp.AXX),
        AXy=np.asarray(cp.AXy), yy=np.asarray(cp.yy), A22=pad_rest(cp.A22, square=True), A2X=pad_rest(cp.A2X),
        A2y=pad_rest(cp.A2y), A21_row=pad_sparse(row, nnz), A21_col=pad_sparse(cp.A21_col, nnz),
        A21_val=pad_sparse(cp.A21_val, nnz), pair_out=pad_sparse(out_idx, npairs),
        pair_w=pad_sparse(cp.pair_w, npairs), pair_val=pad_sparse(cp.pair_val, npairs), n=np.asarray(cp.n),
    )


def fit_datasets(formula: str, datasets: list[pd.DataFrame], reml: bool = True, chunk_size: int | None = None,
                 progress: bool | None = None) -> BatchFit:
    """Fit ``formula`` to each data set; results in input order (``BatchFit``, replicate = data set)."""
    if not datasets:
        raise DataError("no data sets given")
    parsed = parse_formula(formula)
    designs: list[Design] = []
    for k, data in enumerate(datasets):
        try:
            designs.append(build_design(parsed, data))
        except DataError as err:
            raise DataError(f"data set {k}: {err}") from None
    names = designs[0].fixef_names
    for k, d in enumerate(designs):
        if d.fixef_names != names:
            raise DataError(f"data set {k} has fixed effects {d.fixef_names}, data set 0 has {names}")
    from .model import theta_scale

    groups: dict[tuple, list[int]] = {}
    padded = []
    for k, d in enumerate(designs):
        cp = crossproducts(d.y, d.X, d.codes, d.Z, d.structure)
        target = padded_structure(d.structure)
        nnz, npairs = bucket(cp.A21_val.shape[0], 1), bucket(cp.pair_val.shape[0], 1)
        padded.append(pad_crossproducts(cp, d.structure, target, nnz, npairs))
        groups.setdefault((target, nnz, npairs), []).append(k)
    B, n_theta, p = len(designs), designs[0].structure.n_theta, len(names)
    theta, beta, sigma = np.zeros((B, n_theta)), np.zeros((B, p)), np.zeros(B)
    crit, ok, steps = np.zeros(B), np.zeros(B, dtype=bool), np.zeros(B, dtype=np.int64)
    for (target, _, _), members in groups.items():
        stacked = CrossProducts(*(np.stack([np.asarray(getattr(padded[k], f)) for k in members])
                                  for f in CrossProducts._fields))
        scale = np.stack([theta_scale(designs[k]) for k in members])
        start = np.tile(theta_start(target), (len(members), 1)) * scale
        inv_hessian = positive_inverse(np.asarray(hessian_lanes(start, stacked, target, reml)))

        def lane_cp(lanes, stacked=stacked):
            return CrossProducts(*(a[lanes] for a in stacked))

        out = run_lanes(lane_cp, start, inv_hessian, scale, target, reml, ALL_BATCHED, chunk_size, progress=progress)
        for arr, values in zip((theta, beta, sigma, crit, ok, steps), out):
            arr[members] = values
    return BatchFit(theta, beta, sigma, crit, ok, steps, list(names), reml)
