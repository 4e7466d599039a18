"""Polynomial and spline bases as R builds them: ``stats::poly`` and ``splines::bs`` / ``splines::ns``.

Each basis is a function of the values and a ``state(learn, *args)`` callback (see
:class:`jaxlmm.expressions.Evaluation`): on the training data ``learn`` computes what the basis keeps
(``poly``'s recurrence coefficients ``alpha``/``norm2``; the knots and boundary knots of a spline), on new
data the training state comes back, so a prediction evaluates the fitted basis (R's ``makepredictcall``).
The columns are named ``1``, ``2``, ... as R's.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from .errors import DataError


def _values(x, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype == object or arr.dtype.kind in "USO" or hasattr(x, "categories"):
        raise DataError(f"{what} needs a numeric variable")
    return arr.astype(float)


def _whole(value, what: str, low: int) -> int:
    v = float(np.squeeze(value))
    if not v.is_integer() or v < low:
        raise DataError(f"{what} must be a whole number >= {low}, not {v:g}")
    return int(v)


# --------------------------------------------------------------------------- poly


def poly_coefficients(x: np.ndarray, degree: int) -> tuple[np.ndarray, np.ndarray]:
    """``attr(poly(x, degree), "coefs")``: the three-term recurrence of the polynomials orthogonal over x
    (Kennedy & Gentle 1980, as R's ``poly``): from the QR decomposition of ``outer(x - mean(x), 0:degree, ^)``,
    ``Z = Q diag(R)``, ``norm2 = c(1, colSums(Z^2))``, ``alpha = colSums(x Z^2) / colSums(Z^2) + mean(x)``."""
    if np.isnan(x).any():
        raise DataError("missing values are not allowed in 'poly'")
    if degree >= np.unique(x).size:
        raise DataError(f"poly(): 'degree' ({degree}) must be less than number of unique points ({np.unique(x).size})")
    xbar = x.mean()
    xc = x - xbar
    Q, R = np.linalg.qr(np.vander(xc, degree + 1, increasing=True))
    Z = Q * np.diag(R)
    norm2 = np.sum(Z**2, axis=0)
    alpha = (np.sum(xc[:, None] * Z**2, axis=0) / norm2 + xbar)[:degree]
    return alpha, np.concatenate([[1.0], norm2])


def poly_basis(x: np.ndarray, alpha: np.ndarray, norm2: np.ndarray) -> np.ndarray:
    """R's ``poly(x, coefs = list(alpha, norm2))``: the recurrence ``Z[, i+1] = (x - alpha[i]) Z[, i] -
    (norm2[i+1] / norm2[i]) Z[, i-1]``, columns scaled by ``sqrt(norm2[-1])``, the constant dropped."""
    degree = alpha.size
    Z = np.ones((x.size, degree + 1))
    Z[:, 1] = x - alpha[0]
    for i in range(1, degree):
        Z[:, i + 1] = (x - alpha[i]) * Z[:, i] - (norm2[i + 1] / norm2[i]) * Z[:, i - 1]
    return (Z / np.sqrt(norm2[1:]))[:, 1:]


def poly(state, x, *rest, degree=1, raw=False, coefs=None, simple=False):
    """R's ``poly(x, degree, raw = FALSE)``: orthogonal polynomials (raw powers when ``raw = TRUE``)."""
    if len(rest) > 1 or (rest and np.size(rest[0]) != 1):
        raise DataError("poly() of several variables (R's polym) is not supported; use one variable")
    degree = _whole(rest[0] if rest else degree, "poly()'s degree", 1)
    x = _values(x, "poly()")
    if raw:
        return x[:, None] ** np.arange(1, degree + 1)
    alpha, norm2 = state(poly_coefficients, x, degree)
    return poly_basis(x, alpha, norm2)


# --------------------------------------------------------------------------- B-splines


def spline_design(knots: np.ndarray, x: np.ndarray, order: int, deriv: int = 0) -> np.ndarray:
    """R's ``splines::splineDesign(knots, x, ord, derivs)``: the ``len(knots) - order`` B-splines of the
    given order (and their ``deriv``-th derivatives) at x, by the Cox–de Boor recursion (de Boor 1978);
    intervals are closed on the left, and the last one on the right too."""
    t = np.asarray(knots, dtype=float)
    n_basis = t.size - order
    interval = np.clip(np.searchsorted(t, x, side="right") - 1, order - 1, n_basis - 1)
    B = np.zeros((x.size, t.size - 1))
    B[np.arange(x.size), interval] = 1.0

    def ratio(num, den):
        return np.divide(num, den, out=np.zeros(np.broadcast_shapes(np.shape(num), np.shape(den))), where=den != 0)

    for k in range(2, order - deriv + 1):  # values of order k from order k - 1
        i = np.arange(t.size - k)
        left = ratio(x[:, None] - t[i], t[i + k - 1] - t[i]) * B[:, i]
        right = ratio(t[i + k] - x[:, None], t[i + k] - t[i + 1]) * B[:, i + 1]
        B = left + right
    for k in range(order - deriv + 1, order + 1):  # derivatives: d/dx B_{i,k} from order k - 1
        i = np.arange(t.size - k)
        B = (k - 1) * (ratio(B[:, i], t[i + k - 1] - t[i]) - ratio(B[:, i + 1], t[i + k] - t[i + 1]))
    return B[:, :n_basis]


def _interior_knots(x: np.ndarray, n_knots: int) -> np.ndarray:
    """``quantile(x, seq(0, 1, length = n + 2)[-c(1, n + 2)])`` (R's type 7 quantiles)."""
    if n_knots <= 0:
        return np.zeros(0)
    return np.quantile(x, np.linspace(0, 1, n_knots + 2)[1:-1])


def _spline_state(x, df, knots, boundary, n_knots_of_df):
    """The knots of a spline basis learnt from the training values: interior knots at quantiles of x when
    only ``df`` is given, boundary knots at the range of x unless given."""
    x = x[~np.isnan(x)]
    if x.size == 0:
        raise DataError("a spline basis needs non-missing values")
    boundary = np.sort(np.asarray(boundary, dtype=float)) if boundary is not None else np.array([x.min(), x.max()])
    if knots is None and df is not None:
        inside = x[(x >= boundary[0]) & (x <= boundary[1])]
        knots = _interior_knots(inside, n_knots_of_df(_whole(df, "df", 1)))
    knots = np.zeros(0) if knots is None else np.sort(np.atleast_1d(np.asarray(knots, dtype=float)))
    return knots, boundary


def _with_missing(x: np.ndarray, build) -> np.ndarray:
    ok = ~np.isnan(x)
    basis = build(x[ok])
    out = np.full((x.size, basis.shape[1]), np.nan)
    out[ok] = basis
    return out


def bs(state, x, df=None, knots=None, degree=3, intercept=False, Boundary_knots=None):
    """R's ``splines::bs``: the B-spline basis of the given degree; interior knots at quantiles of x for
    ``df``, boundary knots at its range; values outside the boundary knots are extended by the Taylor
    polynomial at a pivot a quarter of the way into the end interval, as R does."""
    degree = _whole(degree, "bs()'s degree", 1)
    order = degree + 1
    x = _values(x, "bs()")

    def n_knots(df):
        n = df - order + (1 - bool(intercept))
        if n < 0:
            warnings.warn(f"'df' was too small; have used {order - (1 - bool(intercept))}", stacklevel=8)
        return max(n, 0)

    knots, boundary = state(_spline_state, x, df, knots, Boundary_knots, n_knots)
    all_knots = np.sort(np.concatenate([np.repeat(boundary, order), knots]))
    scale = np.array([math.factorial(d) for d in range(order)])

    def build(v):
        basis = np.zeros((v.size, all_knots.size - order))
        low, high = v < boundary[0], v > boundary[1]
        for mask, pivot in (
            (low, 0.75 * boundary[0] + 0.25 * all_knots[order]),
            (high, 0.75 * boundary[1] + 0.25 * all_knots[all_knots.size - order - 1]),
        ):
            if mask.any():
                derivs = np.vstack([spline_design(all_knots, np.array([pivot]), order, d) for d in range(order)])
                basis[mask] = ((v[mask, None] - pivot) ** np.arange(order)) @ (derivs / scale[:, None])
        inside = ~(low | high)
        basis[inside] = spline_design(all_knots, v[inside], order)
        return basis if intercept else basis[:, 1:]

    return _with_missing(x, build)


def ns(state, x, df=None, knots=None, intercept=False, Boundary_knots=None):
    """R's ``splines::ns``: the natural cubic spline basis (cubic B-splines constrained to zero second
    derivatives at the boundary knots, through the QR decomposition of the constraints), linear beyond
    the boundary knots."""
    x = _values(x, "ns()")
    knots, boundary = state(_spline_state, x, df, knots, Boundary_knots, lambda df: max(df - 1 - bool(intercept), 0))
    all_knots = np.sort(np.concatenate([np.repeat(boundary, 4), knots]))
    const = np.vstack([spline_design(all_knots, boundary[[j]], 4, 2) for j in (0, 1)])
    if not intercept:
        const = const[:, 1:]
    Q, _ = np.linalg.qr(const.T, mode="complete")

    def build(v):
        basis = np.zeros((v.size, all_knots.size - 4))
        low, high = v < boundary[0], v > boundary[1]
        for mask, pivot in ((low, boundary[0]), (high, boundary[1])):
            if mask.any():
                values = spline_design(all_knots, np.array([pivot]), 4, 0)
                slopes = spline_design(all_knots, np.array([pivot]), 4, 1)
                basis[mask] = values + (v[mask, None] - pivot) * slopes
        inside = ~(low | high)
        basis[inside] = spline_design(all_knots, v[inside], 4)
        if not intercept:
            basis = basis[:, 1:]
        return (basis @ Q)[:, 2:]

    return _with_missing(x, build)
