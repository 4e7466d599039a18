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
from .crossprod import CrossProducts, crossproducts
from .design import Design, build_design, theta_start
from .errors import DataError
from .formula import parse_formula
from .optimize import positive_inverse
from .shapes import pad_to_bucket

ALL_BATCHED = CrossProducts(*([0] * len(CrossProducts._fields)))


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
        cp, target = pad_to_bucket(cp, d.structure)
        padded.append(cp)
        groups.setdefault((target, cp.A21_val.shape[0], cp.pair_val.shape[0]), []).append(k)
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
