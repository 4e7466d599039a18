"""Many data sets fitted together: a vectorised front end, and padding into a few shape buckets.

The data sets arrive as one long DataFrame with a column naming the data set (``by``), or as a list of
DataFrames concatenated once.  For a model with one grouping factor (one random-effects block, any q)
the formula is parsed once, the columns and model matrices are evaluated once on the long frame, the
grouping factor is coded within each data set (unused levels dropped), and every data set's
cross-products are segment sums (``np.add.reduceat``) over rows sorted by (data set, level): no Python
loop runs over data sets or groups.  Models with several grouping factors, and the rare inputs whose
per-data-set designs could differ from the long frame's (a rank-deficient X, a factor level absent
from a data set, ``scale()``, data sets with different columns or dtypes), take the per-data-set path
(``build_design`` and ``crossproducts`` for each).

A data set's cross-products are padded with *empty* levels (zero rows of Z): an empty level adds
``M_j = I`` to the blocked factor, so it changes neither ``log|M|`` nor the Schur complement, and the
criterion of the padded problem equals the original one exactly.  Level counts are rounded up to the
bucket grid (:mod:`jaxlmm.shapes`), so data sets of similar shape share one compiled call; the number of
observations travels as data (``CrossProducts.n``).  Each lane starts at lme4's start times the data set's
theta scale, rescaled to the best point of a grid (:func:`start_lanes`), with its exact Hessian's inverse.

Results are in input order (``by``: the order of each data set's first row), with the data sets' labels
(:class:`DatasetFit`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .batch import BatchFit, default_chunk_size, run_lanes
from .cache import bound_executables
from .crossprod import CrossProducts, crossproducts
from .design import (
    MAX_ABS,
    Design,
    ReBlock,
    Structure,
    VariableSpec,
    build_design,
    check_numeric,
    check_response,
    clean_column,
    evaluate,
    factor_codes,
    factor_levels,
    group_values,
    has_data_statistics,
    independent_columns,
    is_factor,
    model_matrix,
    theta_scale,
    theta_start,
    used_as_covariate,
    variable_spec,
)
from .deviance import profiled_deviance
from .errors import DataError
from .formula import Formula, parse_formula
from .optimize import positive_inverse
from .shapes import BATCH_FINE_FROM, bucket, columns_bucket, pad_to_bucket, padded_structure

ALL_BATCHED = CrossProducts(*([0] * len(CrossProducts._fields)))
NOT_ELEMENTWISE = ("scale(",)  # functions of a whole column: evaluated per data set (per-data-set path)
RANK_TOL = 1e-7  # design.independent_columns' tolerance on a column's relative residual norm
SUSPECT = 1e-8  # a relative residual sum of squares below this is re-checked exactly on the data set's rows


@dataclass
class DatasetFit(BatchFit):
    """A :class:`BatchFit` of data sets: ``labels[k]`` names data set k (its ``by`` value, or its position
    in the list), ``n_obs``/``n_dropped`` count its rows used and its rows dropped for missing values,
    ``n_levels`` its levels of the (first) grouping factor."""

    labels: np.ndarray | None = None
    n_obs: np.ndarray | None = None
    n_dropped: np.ndarray | None = None
    n_levels: np.ndarray | None = None
    by: str | None = None

    def to_frame(self) -> pd.DataFrame:
        """:meth:`BatchFit.to_frame` with the data set's label (column ``by``, or ``dataset``) after replicate."""
        out = super().to_frame()
        if self.labels is not None:
            out.insert(1, self.by or "dataset", self.labels[out.replicate.to_numpy()])
        return out


@dataclass
class StackedDesigns:
    """The cross-products of B data sets sharing one grouping factor, stacked.

    Levels of all data sets are concatenated: data set k owns levels ``level_start[k]:level_start[k+1]``
    of ``A11``/``A1X``/``A1y`` (its own levels in R's order, unused ones dropped).
    """

    fixef_names: list[str]
    q: int
    theta_index: tuple[tuple[int, ...], ...]
    n_theta: int
    n_obs: np.ndarray  # (B,) complete rows
    n_dropped: np.ndarray  # (B,) rows dropped for missing values
    n_levels: np.ndarray  # (B,)
    level_start: np.ndarray  # (B + 1,)
    A11: np.ndarray  # (S, q, q) over all data sets' levels
    A1X: np.ndarray  # (S, q, p)
    A1y: np.ndarray  # (S, q)
    AXX: np.ndarray  # (B, p, p)
    AXy: np.ndarray  # (B, p)
    yy: np.ndarray  # (B,)
    scale: np.ndarray  # (B, n_theta) theta_scale of each data set

    def structure(self, k: int) -> Structure:
        """Data set k's (unpadded) structure."""
        return Structure((ReBlock(int(self.n_levels[k]), self.q, self.theta_index),), self.n_theta)

    def crossproducts(self, k: int) -> CrossProducts:
        """Data set k's unpadded cross-products, as :func:`~jaxlmm.crossprod.crossproducts` gives them."""
        s = slice(self.level_start[k], self.level_start[k + 1])
        p = self.AXX.shape[-1]
        i32, f64 = np.zeros(0, dtype=np.int32), np.zeros(0)
        return CrossProducts(
            self.A11[s],
            self.A1X[s],
            self.A1y[s],
            self.AXX[k],
            self.AXy[k],
            np.asarray(self.yy[k]),
            np.zeros((0, 0)),
            np.zeros((0, p)),
            f64,
            i32,
            i32,
            f64,
            i32,
            i32,
            f64,
            np.asarray(float(self.n_obs[k])),
            np.asarray(float(p)),
        )


# --------------------------------------------------------------------------- entry points


def fit_datasets(
    formula: str,
    datasets: list[pd.DataFrame],
    reml: bool = True,
    chunk_size: int | None = None,
    progress: bool | None = None,
    weights: str | None = None,
    offset: str | None = None,
) -> DatasetFit:
    """Fit ``formula`` to each data set of the list; results in input order (replicate = position).
    ``weights``/``offset``: column names of each data set (lmer's), fitted on the per-data-set path."""
    if isinstance(datasets, pd.DataFrame) or not isinstance(datasets, (list, tuple)):
        raise DataError("datasets must be a list of DataFrames (for one long frame use fit_batch(f, data, by=...))")
    if not datasets:
        raise DataError("no data sets given")
    if not all(isinstance(d, pd.DataFrame) for d in datasets):
        k = next(k for k, d in enumerate(datasets) if not isinstance(d, pd.DataFrame))
        raise DataError(f"data set {k}: data must be a pandas DataFrame, not {type(datasets[k]).__name__}")
    parsed = parse_formula(formula)
    labels = np.arange(len(datasets))
    shapes = np.array([d.shape for d in datasets], dtype=np.int64).reshape(-1, 2)
    empty = np.flatnonzero(shapes[:, 0] == 0)
    if empty.size:
        raise DataError(f"data set {empty[0]}: the data have no rows")
    first = datasets[0]
    columns = {"weights": weights, "offset": offset}
    if (
        _vectorisable(parsed, columns)
        and (shapes[:, 1] == first.shape[1]).all()
        and not first.columns.duplicated().any()
    ):
        try:
            long = pd.concat(datasets, ignore_index=True)
        except (ValueError, TypeError):  # e.g. duplicated column names in some data set
            long = None
        # the same columns in every data set (the union has no more columns than each), and the same dtypes
        # except in grouping factors (say, a Categorical of each data set's own groups): those are only compared
        if long is not None and long.shape[1] == first.shape[1] and _same_dtypes(parsed, long, first):
            ids = np.repeat(labels, shapes[:, 0])
            stacked = stack_designs(parsed, long, ids, len(datasets), "data set {}".format)
            if stacked is not None:
                return _finish(fit_stacked(stacked, reml, chunk_size, progress), stacked, labels, None)
    return _fit_frames(
        parsed, list(datasets), [f"data set {k}" for k in labels], labels, None, reml, chunk_size, progress, columns
    )


def fit_by(
    formula: str,
    data: pd.DataFrame,
    by: str,
    reml: bool = True,
    chunk_size: int | None = None,
    progress: bool | None = None,
    weights: str | None = None,
    offset: str | None = None,
) -> DatasetFit:
    """Fit ``formula`` to each data set of one long frame, ``data[by]`` naming the data set.

    Results are in the order of the data sets' first appearance in ``data``; ``labels`` holds their
    ``by`` values (and ``to_frame()`` a ``by`` column).
    """
    if not isinstance(data, pd.DataFrame):
        raise DataError(f"data must be a pandas DataFrame, not {type(data).__name__}")
    if by not in data.columns:
        raise DataError(f"unknown column {by!r} given as by= (columns are: {', '.join(map(str, data.columns))})")
    if data.shape[0] == 0:
        raise DataError("the data have no rows")
    parsed = parse_formula(formula)
    ids, labels = _dataset_ids(data[by])
    if (ids < 0).any():
        raise DataError(f"the column {by!r} given as by= is missing (NaN/None) in {int((ids < 0).sum())} rows")
    B = labels.size

    def name(k: int) -> str:
        return f"data set {by} = {labels[k]}"

    columns = {"weights": weights, "offset": offset}
    if _vectorisable(parsed, columns):
        stacked = stack_designs(parsed, data, ids, B, name)
        if stacked is not None:
            return _finish(fit_stacked(stacked, reml, chunk_size, progress), stacked, labels, by)
    order = np.argsort(ids, kind="stable")
    frames = [data.iloc[rows] for rows in np.split(order, np.cumsum(np.bincount(ids, minlength=B))[:-1])]
    return _fit_frames(parsed, frames, [name(k) for k in range(B)], labels, by, reml, chunk_size, progress, columns)


def _dataset_ids(values: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """The data set of each row (0, 1, ... in order of first appearance; -1 where missing) and the labels.

    Rows of each data set in one block (a simulation's usual output) are numbered from the block boundaries
    without hashing; otherwise ``pd.factorize``.
    """
    v = values.to_numpy()
    if v.dtype.kind in "iub" and v.size:
        ids = np.concatenate([[0], np.cumsum(v[1:] != v[:-1])])
        labels = v[np.flatnonzero(np.concatenate([[True], v[1:] != v[:-1]]))]
        if np.unique(labels).size == labels.size:
            return ids, labels
    ids, uniques = pd.factorize(values)
    return ids.astype(np.int64), np.asarray(uniques)


def _same_dtypes(parsed: Formula, long: pd.DataFrame, first: pd.DataFrame) -> bool:
    """Whether the concatenated frame has the first data set's dtypes, grouping-only columns aside."""
    grouping = {v for r in parsed.random for v in r.group if not used_as_covariate(v, parsed)}
    return all(c in grouping for c, a, b in zip(long.columns, long.dtypes, first.dtypes[long.columns]) if a != b)


def _vectorisable(parsed: Formula, columns: dict[str, str | None]) -> bool:
    """One grouping factor and only elementwise functions: the long frame's designs are the data sets'.
    Prior weights and offsets (``columns``, or offset terms) take the per-data-set path."""
    return (
        len({r.group_name for r in parsed.random}) == 1
        and not any(f in v for v in parsed.variables for f in NOT_ELEMENTWISE)
        and not parsed.offsets
        and all(v is None for v in columns.values())
    )


def _finish(fit: BatchFit, stacked: StackedDesigns, labels: np.ndarray, by: str | None) -> DatasetFit:
    return DatasetFit(
        *(getattr(fit, f) for f in BatchFit.__dataclass_fields__),
        labels=labels,
        n_obs=stacked.n_obs,
        n_dropped=stacked.n_dropped,
        n_levels=stacked.n_levels,
        by=by,
    )


# --------------------------------------------------------------------------- the vectorised front end


def stack_designs(parsed: Formula, long: pd.DataFrame, ids: np.ndarray, B: int, name) -> StackedDesigns | None:
    """Every data set's cross-products from the long frame (``ids``: data set of each row, ``name(k)``: how
    errors name data set k), checked as :func:`~jaxlmm.design.build_design` checks each data set.

    Returns None where a data set's own design could differ from its rows of the long frame's (a
    rank-deficient X, a factor level absent from a data set): the per-data-set path handles those.
    """

    def fail(k, message):
        raise DataError(f"{name(int(k))}: {message}")

    if parsed.response is None:
        raise DataError("the formula has no response (left of '~')")
    if not parsed.random:
        raise DataError("the formula has no random-effects term such as (1 | group); use a linear model")
    duplicated = sorted({str(c) for c in long.columns[long.columns.duplicated()]})
    if duplicated:
        raise DataError(f"the data have more than one column named {', '.join(map(repr, duplicated))}")
    n_rows = np.bincount(ids, minlength=B)
    resp = parsed.response
    raw = {}
    if has_data_statistics(parsed):  # scale(x), poly(x, 2), ...: each data set's own statistics
        return None
    for v in parsed.variables:
        role = "response" if v == resp else "covariate" if used_as_covariate(v, parsed) else "grouping"
        values = evaluate(v, long)[0]
        if isinstance(values, pd.DataFrame):  # a matrix variable (raw poly): the per-data-set path
            return None
        raw[v] = clean_column(v, values, role)

    # rows with a missing value in a used column are dropped, per data set
    missing = {v: pd.isna(values).to_numpy() for v, values in raw.items()}
    incomplete = np.logical_or.reduce(list(missing.values()))
    complete = ~incomplete
    n_obs = np.bincount(ids[complete], minlength=B) if incomplete.any() else n_rows
    if (n_obs == 0).any():
        k = int(np.argmax(n_obs == 0))
        rows_k = ids == k
        empty = [v for v, m in missing.items() if m[rows_k].all()]
        if empty:
            fail(
                k,
                f"no complete rows: {', '.join(map(repr, empty))} {'is' if len(empty) == 1 else 'are'} "
                "missing (NaN/None) in every row",
            )
        fail(k, "no complete rows: every row has a missing value in a used column")
    if incomplete.any():
        raw = {v: values[complete] for v, values in raw.items()}
        ids = ids[complete]

    y_values = raw[resp]
    check_response(resp, y_values)
    _numeric_checks(resp, y_values, ids, fail)
    specs: dict[str, VariableSpec] = {}
    group_vars = {v for r in parsed.random for v in r.group}
    for v, values in raw.items():
        if v == resp or (v in group_vars and not used_as_covariate(v, parsed)):
            continue
        if is_factor(values):
            specs[v] = variable_spec(v, values)
            L = len(specs[v].levels)
            present = np.bincount(ids * L + factor_codes(values, specs[v].levels), minlength=B * L)
            if not present.reshape(B, L).all():  # a level absent from a data set: its X has other columns
                return None
        else:
            _numeric_checks(v, values, ids, fail)
            specs[v] = VariableSpec(v)

    X, names = model_matrix(parsed.fixed, raw, specs)
    y = y_values.to_numpy(dtype=float)
    bar_Z = [model_matrix(bar.effects, raw, specs) for bar in parsed.random]
    gcodes, n_global = _group_codes(parsed.random[0].group, raw)

    # the distinct row vectors: X's columns, y, then Z's columns (a Z column equal to one of those shares it)
    columns = [X[:, j] for j in range(X.shape[1])] + [y]
    ones = [bool((c == 1).all()) for c in columns]
    z_of = []
    for zc in (z[:, j] for z, _ in bar_Z for j in range(z.shape[1])):
        one = bool((zc == 1).all())
        same = [i for i, c in enumerate(columns) if one == ones[i] and (one or np.array_equal(c, zc))]
        z_of.append(same[0] if same else len(columns))
        if not same:
            columns.append(zc)
            ones.append(one)
    p, q, iy = X.shape[1], len(z_of), X.shape[1]

    # rows sorted by (data set, level): segments are (data set, level) pairs, runs of segments are data sets
    key = ids * n_global + gcodes
    if key.size > 1 and (key[1:] < key[:-1]).any():
        order = np.argsort(key, kind="stable")
        key, ids = key[order], ids[order]
        columns = [c if one else c[order] for c, one in zip(columns, ones)]
    seg_start = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
    S = seg_start.size
    n_levels = np.bincount(ids[seg_start], minlength=B)
    level_start = np.concatenate([[0], np.cumsum(n_levels)])
    counts = np.diff(np.append(seg_start, key.size)).astype(float)
    memo: dict[tuple[int, int], np.ndarray] = {}

    def level_sums(i: int, j: int) -> np.ndarray:
        """Per (data set, level) sums of the product of row vectors i and j (one pass over the rows)."""
        i, j = min(i, j), max(i, j)
        if (i, j) not in memo:
            a, b = columns[i], columns[j]
            memo[i, j] = (
                counts if ones[i] and ones[j] else np.add.reduceat(b if ones[i] else a if ones[j] else a * b, seg_start)
            )
        return memo[i, j]

    def set_sums(v: np.ndarray) -> np.ndarray:
        return np.add.reduceat(v, level_start[:-1], axis=0)

    A11, A1X, A1y = np.zeros((S, q, q)), np.zeros((S, q, p)), np.zeros((S, q))
    for r in range(q):
        for s in range(r, q):
            A11[:, r, s] = A11[:, s, r] = level_sums(z_of[r], z_of[s])
        for j in range(p):
            A1X[:, r, j] = level_sums(z_of[r], j)
        A1y[:, r] = level_sums(z_of[r], iy)
    AXX, AXy = np.zeros((B, p, p)), np.zeros((B, p))
    for a in range(p):
        for b in range(a, p):
            AXX[:, a, b] = AXX[:, b, a] = set_sums(level_sums(a, b))
        AXy[:, a] = set_sums(level_sums(a, iy))
    yy = set_sums(level_sums(iy, iy))
    ds_start = np.concatenate([[0], np.cumsum(n_obs)[:-1]])
    y = columns[iy]

    def rows_of(k):
        return slice(ds_start[k], ds_start[k] + n_obs[k])

    def X_of(k):  # data set k's X (rare exact checks)
        return np.column_stack([c[rows_of(k)] for c in columns[:p]]) if p else np.zeros((n_obs[k], 0))

    # rank deficiency: build_design drops aliased columns, so such data sets take the per-data-set path
    M = np.zeros((B, p + 1, p + 1))
    M[:, :p, :p], M[:, :p, p], M[:, p, :p], M[:, p, p] = AXX, AXy, AXy, yy
    ratio = _residual_ratios(M)  # (B, p + 1): each column's relative residual sum of squares on earlier ones
    for k in np.flatnonzero((ratio[:, :p] < SUSPECT).any(axis=1)):  # rare: exact check on the data set's rows
        if independent_columns(X_of(k)).size < p:
            return None

    # build_design's checks, each data set named; the first data set failing any check is reported
    ymax = np.maximum.reduceat(y, ds_start)
    constant = ymax == np.minimum.reduceat(y, ds_start)
    exact = np.zeros(B, dtype=bool)
    for k in np.flatnonzero((ratio[:, p] < SUSPECT) & ~constant & (n_obs > p)):
        yk, Xk = y[rows_of(k)], X_of(k)
        exact[k] = p and np.linalg.norm(yk - Xk @ np.linalg.lstsq(Xk, yk, rcond=None)[0]) <= 1e-10 * np.linalg.norm(yk)
    g = parsed.random[0].group_name
    checks = [
        (
            constant,
            lambda k: (
                f"the response {resp!r} is constant (= {ymax[k]:g} in all {n_obs[k]} complete rows): "
                "there is nothing to model"
            ),
        ),
        (
            n_obs <= p,
            lambda k: (
                f"{p} fixed-effect coefficients ({', '.join(names[:5])}{', ...' if p > 5 else ''}) "
                f"for {n_obs[k]} observations: no residual is left"
            ),
        ),
        (
            exact,
            lambda k: (
                f"the response {resp!r} is an exact linear function of the fixed effects "
                f"({', '.join(names)}): the residual variance is 0"
            ),
        ),
        (n_levels < 2, lambda k: f"grouping factor {g!r} has only one level; a random effect needs at least 2"),
        (
            n_levels >= n_obs,
            lambda k: (
                f"grouping factor {g!r} has {n_levels[k]} levels for {n_obs[k]} observations: "
                "the number of levels of each grouping factor must be < number of observations"
            ),
        ),
    ]
    for _, cols in bar_Z:
        label = f"({' + '.join(cols)} | {g})"
        checks.append(
            (
                len(cols) * n_levels >= n_obs,
                lambda k, cols=cols, label=label: (
                    f"number of observations (={n_obs[k]}) <= number of random effects (={len(cols) * n_levels[k]}) for "
                    f"term {label}; the random-effects parameters and the residual variance are probably unidentifiable"
                ),
            )
        )
    failed = np.stack([mask for mask, _ in checks])
    if failed.any():
        k = int(np.argmax(failed.any(axis=0)))
        fail(k, checks[int(np.argmax(failed[:, k]))][1](k))

    # theta's layout: the bars' lower triangles, column-major, in formula order (one block)
    theta_index = [[-1] * q for _ in range(q)]
    t = start = 0
    for _, cols in bar_Z:
        for c in range(len(cols)):
            for r in range(c, len(cols)):
                theta_index[start + r][start + c] = t
                t += 1
        start += len(cols)
    row_of_theta = np.array([i for i in range(q) for j in range(q) if theta_index[i][j] >= 0])
    row_of_theta = row_of_theta[
        np.argsort([theta_index[i][j] for i in range(q) for j in range(q) if theta_index[i][j] >= 0])
    ]
    # model.theta_scale per data set: 1 / root mean square of each Z column
    ms = np.add.reduceat(np.diagonal(A11, axis1=1, axis2=2), level_start[:-1], axis=0) / n_obs[:, None]
    with np.errstate(divide="ignore"):
        scale = np.where(ms > 0, 1.0 / np.sqrt(ms), 1.0)[:, row_of_theta]
    return StackedDesigns(
        list(names),
        q,
        tuple(map(tuple, theta_index)),
        t,
        n_obs,
        n_rows - n_obs,
        n_levels,
        level_start,
        A11,
        A1X,
        A1y,
        AXX,
        AXy,
        yy,
        scale,
    )


def _numeric_checks(v: str, values: pd.Series, ids: np.ndarray, fail) -> None:
    """design's ``check_numeric`` (infinite or overflowing values), naming the first data set failing it."""
    arr = values.to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        bad = ~(np.abs(arr) <= MAX_ABS)
    if bad.any():
        k = int(ids[bad].min())
        try:
            check_numeric(v, values[ids == k])
        except DataError as err:
            fail(k, str(err))


def _group_codes(group: tuple[str, ...], frame: dict[str, pd.Series]) -> tuple[np.ndarray, int]:
    """Codes of the grouping factor over the whole long frame in R's level order, and the number of levels.

    Within one data set the order of its levels is the same, so coding by (data set, code) gives each data
    set's own levels.  One hashing pass for a plain column (the levels are found from its unique values).
    """
    values = frame[group[0]]
    if len(group) == 1 and not isinstance(values.dtype, pd.CategoricalDtype):
        repeats = _repeated_chunk(values)
        if repeats:  # data sets sharing one design: hash one copy of the column
            codes, n_levels = _group_codes(group, {group[0]: values.iloc[: len(values) // repeats]})
            return np.tile(codes, repeats), n_levels
        codes, uniques = pd.factorize(values)
        uniques = pd.Series(uniques)
        levels = factor_levels(uniques)
        return factor_codes(uniques, levels)[codes], len(levels)
    codes, levels = group_values(group, frame)
    return codes, len(levels)


def _repeated_chunk(values: pd.Series) -> int:
    """How many times an Arrow-backed column repeats its first chunk (the concatenation of data sets whose
    grouping column is the same, as in simulation studies); 0 when it does not (one buffer comparison each)."""
    chunked = getattr(values.array, "_pa_array", None)
    if chunked is None or chunked.num_chunks < 2:
        return 0
    first = chunked.chunk(0)
    same = all(len(c) == len(first) and c.equals(first) for c in chunked.iterchunks())
    return chunked.num_chunks if same else 0


def _residual_ratios(M: np.ndarray) -> np.ndarray:
    """For Gram matrices ``M`` (B, k, k): each column's residual sum of squares on the earlier kept columns,
    relative to its own sum of squares (Cholesky pivots without pivoting; a column whose ratio is below
    ``RANK_TOL²`` is aliased and skipped, as :func:`~jaxlmm.design.independent_columns` skips it)."""
    A = np.array(M, dtype=float)
    B, k = A.shape[0], A.shape[1]
    diag = np.diagonal(M, axis1=1, axis2=2).copy()
    ratio = np.zeros((B, k))
    for j in range(k):  # over columns, vectorised over data sets
        d = A[:, j, j]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio[:, j] = np.where(diag[:, j] > 0, d / diag[:, j], 0.0)
        keep = ratio[:, j] > RANK_TOL**2
        inv = np.where(keep, 1.0 / np.where(keep, d, 1.0), 0.0)
        A[:, j + 1 :, j + 1 :] -= A[:, j + 1 :, j, None] * A[:, None, j, j + 1 :] * inv[:, None, None]
    return ratio


# --------------------------------------------------------------------------- fitting


DATASET_LANES_PER_CPU_DEVICE = 256  # data-set batches are hundreds, not thousands: narrower calls
MERGE_RATIO = 16  # level buckets within this factor of a larger one are fitted in it


def merged_buckets(sizes: np.ndarray) -> np.ndarray:
    """Each of the sorted level buckets ``sizes`` replaced by the largest one at most ``MERGE_RATIO`` times
    its size: a bucket compiles three kernels (seconds each), while padding a data set's levels costs
    microseconds per lane, so a batch of data sets with 5 to 60 groups runs in one bucket, not four."""
    merged = sizes.copy()
    top = sizes[-1] if sizes.size else 0
    for i in reversed(range(sizes.size)):
        if top > MERGE_RATIO * sizes[i]:
            top = sizes[i]
        merged[i] = top
    return merged


def fit_stacked(
    stacked: StackedDesigns, reml: bool, chunk_size: int | None = None, progress: bool | None = None
) -> BatchFit:
    """Fit every data set of ``stacked``: the stacked arrays of each bucket of level counts built at once
    (each data set's levels first, then empty ones), one ``run_lanes`` per bucket (see :func:`_fit_bucket`)."""
    B, p, q = stacked.AXX.shape[0], stacked.AXX.shape[-1], stacked.q
    sizes = np.unique(stacked.n_levels)
    targets = {
        int(G): padded_structure(
            Structure((ReBlock(int(G), q, stacked.theta_index),), stacked.n_theta), BATCH_FINE_FROM
        )
        for G in sizes
    }  # over distinct sizes only
    padded_sizes = merged_buckets(np.array([targets[int(G)].blocks[0].n_levels for G in sizes]))
    target_G = padded_sizes[np.searchsorted(sizes, stacked.n_levels)]
    seg_ds = np.repeat(np.arange(B), stacked.n_levels)
    within = np.arange(seg_ds.size) - stacked.level_start[seg_ds]
    nnz = npairs = bucket(0)  # no rest block: the sparse lists hold only padding (pad_crossproducts's lengths)
    pp = columns_bucket(p)  # X padded with inert unit columns, as pad_crossproducts pads it
    AXX = np.tile(np.eye(pp), (B, 1, 1))
    AXX[:, :p, :p] = stacked.AXX
    AXy = np.zeros((B, pp))
    AXy[:, :p] = stacked.AXy
    theta, beta = np.zeros((B, stacked.n_theta)), np.zeros((B, p))
    sigma, crit = np.zeros(B), np.zeros(B)
    ok, steps = np.zeros(B, dtype=bool), np.zeros(B, dtype=np.int64)
    for G in np.unique(padded_sizes):
        members = np.flatnonzero(target_G == G)
        m = members.size
        target = Structure((ReBlock(int(G), q, stacked.theta_index),), stacked.n_theta)
        lane = np.full(B, -1)
        lane[members] = np.arange(m)
        segs = np.flatnonzero(target_G[seg_ds] == G)
        at = (lane[seg_ds[segs]], within[segs])
        A11 = np.zeros((m, G, q, q))
        A1X = np.zeros((m, G, q, pp))
        A1y = np.zeros((m, G, q))
        A11[at], A1X[at + (slice(None), slice(0, p))], A1y[at] = stacked.A11[segs], stacked.A1X[segs], stacked.A1y[segs]
        i32, f64 = np.zeros((m, nnz), dtype=np.int32), np.zeros((m, nnz))
        cp = CrossProducts(
            A11,
            A1X,
            A1y,
            AXX[members],
            AXy[members],
            stacked.yy[members],
            np.zeros((m, 0, 0)),
            np.zeros((m, 0, pp)),
            np.zeros((m, 0)),
            i32,
            i32,
            f64,
            np.zeros((m, npairs), dtype=np.int32),
            np.zeros((m, npairs), dtype=np.int32),
            np.zeros((m, npairs)),
            stacked.n_obs[members].astype(float),
            np.full(m, float(p)),
        )
        out = _fit_bucket(cp, stacked.scale[members], target, reml, chunk_size, progress)
        for arr, values in zip((theta, beta, sigma, crit, ok, steps), out):
            arr[members] = values
    return BatchFit(theta, beta, sigma, crit, ok, steps, list(stacked.fixef_names), reml)


START_LOG2 = np.linspace(-5.0, 2.0, 15)  # the start's overall scales: a half-octave grid from 1/32 to 4


@partial(jax.jit, static_argnames=("structure",))
def start_lanes(theta, cp: CrossProducts, structure: Structure, reml):
    """Per lane (every cross-product batched): ``c · theta`` for the best c on the grid ``2^START_LOG2``,
    moved to the vertex of the parabola in log c through the best point and its neighbours where that
    lowers the criterion, and the exact Hessian of the criterion there (BFGS's start)."""
    logs = jnp.asarray(START_LOG2) * np.log(2.0)
    h = logs[1] - logs[0]

    def one(t, c):
        def criterion(u):
            return profiled_deviance(u, c, structure, reml)

        values = jax.lax.map(lambda x: criterion(jnp.exp(x) * t), logs)
        values = jnp.where(jnp.isfinite(values), values, jnp.inf)
        best = jnp.argmin(values)
        k = jnp.clip(best, 1, logs.size - 2)
        y0, y1, y2 = values[k - 1], values[k], values[k + 1]
        curvature = y2 - 2.0 * y1 + y0
        vertex = logs[k] - 0.5 * h * (y2 - y0) / jnp.where(curvature > 0, curvature, 1.0)
        refined = jnp.exp(jnp.clip(vertex, logs[k] - h, logs[k] + h))
        use = (curvature > 0) & jnp.isfinite(curvature) & (criterion(refined * t) < values[best])
        t = jnp.where(use, refined, jnp.where(jnp.isfinite(values[best]), jnp.exp(logs[best]), 1.0)) * t
        return t, jax.hessian(criterion)(t)

    return jax.vmap(one)(theta, cp)


def _fit_bucket(
    cp: CrossProducts, scale: np.ndarray, target: Structure, reml: bool, chunk_size: int | None, progress: bool | None
):
    """``run_lanes`` over one bucket's stacked cross-products (every field batched), each lane started at
    lme4's start times the data set's scale, rescaled by :func:`start_lanes`, with its exact Hessian's inverse."""
    bound_executables()
    start, hessian = np.tile(theta_start(target), (scale.shape[0], 1)) * scale, None
    # calls of a fixed number of lanes (the last one padded with copies), as run_lanes makes them: one
    # compiled shape per structure whatever the number of data sets in the bucket
    width = chunk_size or default_chunk_size(target, cp.AXX.shape[-1], DATASET_LANES_PER_CPU_DEVICE)
    for first in range(0, scale.shape[0], width):
        lanes = np.arange(first, min(first + width, scale.shape[0]))
        padded = np.concatenate([lanes, np.repeat(lanes[:1], width - lanes.size)])
        t, H = jax.device_get(start_lanes(start[padded], CrossProducts(*(a[padded] for a in cp)), target, reml))
        hessian = np.zeros((scale.shape[0],) + H.shape[1:]) if hessian is None else hessian
        start[lanes], hessian[lanes] = t[: lanes.size], H[: lanes.size]
    inv_hessian = positive_inverse(hessian)

    def lane_cp(lanes):
        return CrossProducts(*(a[lanes] for a in cp))

    theta, beta, sigma, crit, ok, steps = run_lanes(
        lane_cp, start, inv_hessian, scale, target, reml, ALL_BATCHED, width, progress=progress
    )
    return theta, beta[:, : int(cp.p[0])], sigma, crit, ok, steps  # the real coefficients, not the inert ones


def _fit_frames(
    parsed: Formula,
    frames: list[pd.DataFrame],
    names: list[str],
    labels: np.ndarray,
    by: str | None,
    reml: bool,
    chunk_size: int | None,
    progress: bool | None,
    columns: dict[str, str | None] | None = None,
) -> DatasetFit:
    """The per-data-set path: ``build_design`` and ``crossproducts`` for each data set, then shape buckets
    (``columns``: the weights and offset column names, if any)."""
    designs: list[Design] = []
    for k, data in enumerate(frames):
        try:
            designs.append(build_design(parsed, data, **(columns or {})))
        except DataError as err:
            raise DataError(f"{names[k]}: {err}") from None
        d, d0 = designs[-1], designs[0]
        if d.fixef_names != d0.fixef_names:
            raise DataError(f"{names[k]} has fixed effects {d.fixef_names}, {names[0]} has {d0.fixef_names}")
        if d.structure.n_theta != d0.structure.n_theta:
            raise DataError(
                f"{names[k]} has {d.structure.n_theta} random-effects parameters, {names[0]} has {d0.structure.n_theta}"
            )
    groups: dict[tuple, list[int]] = {}
    padded = []
    for k, d in enumerate(designs):
        X, Z = d.model_matrices  # √w-scaled rows of [Z X y − offset] (lme4's weights and offset)
        cp, target = pad_to_bucket(crossproducts(d.model_response(d.y), X, d.codes, Z, d.structure), d.structure)
        padded.append(cp)
        groups.setdefault((target, cp.A21_val.shape[0], cp.pair_val.shape[0]), []).append(k)
    B, n_theta, p = len(designs), designs[0].structure.n_theta, len(designs[0].fixef_names)
    theta, beta, sigma = np.zeros((B, n_theta)), np.zeros((B, p)), np.zeros(B)
    crit, ok, steps = np.zeros(B), np.zeros(B, dtype=bool), np.zeros(B, dtype=np.int64)
    for (target, _, _), members in groups.items():
        stacked = CrossProducts(
            *(np.stack([np.asarray(getattr(padded[k], f)) for k in members]) for f in CrossProducts._fields)
        )
        scale = np.stack([theta_scale(designs[k]) for k in members])
        out = _fit_bucket(stacked, scale, target, reml, chunk_size, progress)
        for arr, values in zip((theta, beta, sigma, crit, ok, steps), out):
            arr[members] = values
    crit -= np.array([d.sum_log_weights for d in designs])  # lme4's −Σ log wᵢ (Design.sum_log_weights)
    return DatasetFit(
        theta,
        beta,
        sigma,
        crit,
        ok,
        steps,
        list(designs[0].fixef_names),
        reml,
        labels=labels,
        n_obs=np.array([d.n for d in designs]),
        n_dropped=np.array([d.n_dropped for d in designs]),
        n_levels=np.array([d.structure.blocks[0].n_levels for d in designs]),
        by=by,
    )
