"""t and F tests of fixed-effect contrasts: lmerTest's ``contest1D``/``contestMD``, its type III ``anova(m)``,
and pbkrtest's ``KRmodcomp``.

* Satterthwaite (lmerTest, Kuznetsova et al. 2017, §3): for a q-row L, ``L V Lᵀ = P D Pᵀ``,
  ``F = Σₘ (pₘᵀLβ̂)²/dₘ / q``, each direction's df ``νₘ`` by :func:`~jaxlmm.inference.satterthwaite_df`,
  ``E = Σ νₘ/(νₘ − 2)`` and ``ddf = 2E/(E − q)`` (2 when some νₘ ≤ 2; their mean when all are equal).
* Kenward–Roger (pbkrtest, :mod:`jaxlmm.kenward_roger`): ``F = (Lβ̂)ᵀ(LΦ_ALᵀ)⁻¹Lβ̂ / q`` scaled by
  KR's factor, with KR's ddf (:func:`kr_f_test`, which :func:`jaxlmm.compare.krtest` shares); one row:
  ``t = lᵀβ̂ / √(lᵀΦ_A l)`` with ``Lb_ddf``.

Tables follow lmerTest: ``Sum Sq = F q σ²``, ``Mean Sq = F σ²`` (F before KR's scaling).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.special

from .errors import JaxlmmError
from .inference import satterthwaite_df
from .kenward_roger import KRAdjusted, KRStatistics, kr_statistics
from .type3 import type3_contrasts

DDF_METHODS = ("Satterthwaite", "Kenward-Roger")
EIGEN_TOL = np.sqrt(np.finfo(float).eps)  # lmerTest's contestMD eps
EQUAL_DF_TOL = 1e-8  # lmerTest's get_Fstat_ddf


def check_ddf(model, ddf: str) -> None:
    """A known method; Kenward–Roger only for REML fits (lmerTest's error)."""
    if ddf not in DDF_METHODS:
        raise JaxlmmError(f"ddf must be one of {DDF_METHODS}, not {ddf!r}")
    if ddf == "Kenward-Roger" and not model.reml:
        raise JaxlmmError("Kenward-Roger's method is only available for REML model fits")


def combined_ddf(nu: np.ndarray) -> float:
    """lmerTest's ``get_Fstat_ddf``: one F denominator df from the per-direction Satterthwaite df."""
    nu = np.asarray(nu, dtype=float)
    if nu.size == 1:
        return float(nu[0])
    if np.all(np.abs(np.diff(nu)) < EQUAL_DF_TOL):
        return float(np.mean(nu))
    if np.any(nu <= 2):
        return 2.0
    E = np.sum(nu / (nu - 2.0))
    return float(2.0 * E / (E - nu.size))


def _t_table(estimate, se, df, rhs) -> pd.DataFrame:
    t = (estimate - rhs) / se
    return pd.DataFrame(
        {
            "Estimate": estimate,
            "Std. Error": se,
            "df": df,
            "t value": t,
            "Pr(>|t|)": 2.0 * scipy.special.stdtr(df, -np.abs(t)),
        }
    )


def _f_row(F_unscaled, ndf, ddf, sigma, scaling=1.0) -> dict:
    F = F_unscaled * scaling
    return {
        "Sum Sq": F_unscaled * sigma**2 * ndf,
        "Mean Sq": F_unscaled * sigma**2,
        "NumDF": ndf,
        "DenDF": ddf,
        "F value": F,
        "Pr(>F)": scipy.special.fdtrc(ndf, ddf, F),
    }


def t_tests(model, L: np.ndarray, ddf: str = "Satterthwaite", rhs=0.0) -> pd.DataFrame:
    """lmerTest's ``contest1D`` for each row l of L (c, p): Estimate, Std. Error, df, t value, Pr(>|t|)."""
    L = np.atleast_2d(np.asarray(L, dtype=float))
    estimate = L @ model.fixef.values
    if ddf == "Kenward-Roger":
        kr = model.kenward_roger
        se = np.sqrt(np.einsum("ci,ij,cj->c", L, kr.vcov_adjusted, L))
        df = np.array([kr_statistics(row, kr.vcov, kr.P, kr.W).ddf for row in L])
    else:
        df, var = satterthwaite_df(
            model.theta, model.sigma, L, model.cp, model.structure, model.reml, model.theta_scale
        )
        df, se = np.asarray(df), np.sqrt(np.asarray(var))
    return _t_table(estimate, se, df, rhs)


def _eigen_directions(L: np.ndarray, vcov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows Pᵀ L and eigenvalues d > tol of ``L V Lᵀ`` (lmerTest's contestMD), largest first."""
    d, P = np.linalg.eigh(L @ vcov @ L.T)
    d, P = d[::-1], P[:, ::-1]
    keep = d > max(EIGEN_TOL * d[0], 0.0)
    return (P.T @ L)[keep], d[keep]


def f_tests(model, Ls: dict[str, np.ndarray], ddf: str = "Satterthwaite") -> pd.DataFrame:
    """lmerTest's ``contestMD`` for each named hypothesis matrix (rows × p): one F table row each."""
    beta, sigma = model.fixef.values, model.sigma
    rows = {}
    if ddf == "Kenward-Roger":
        kr = model.kenward_roger
        for name, L in Ls.items():
            if len(L) == 0:
                continue
            stats, F_unscaled = kr_f_test(_full_rank(L), beta, kr)
            rows[name] = _f_row(F_unscaled, stats.ndf, stats.ddf, sigma, stats.scaling)
        return _f_frame(rows)
    directions = {name: _eigen_directions(L, model.vcov.values) for name, L in Ls.items() if len(L)}
    stacked = np.concatenate([PtL for PtL, _ in directions.values()]) if directions else np.zeros((0, len(beta)))
    if len(stacked):
        nu, _ = satterthwaite_df(
            model.theta, model.sigma, stacked, model.cp, model.structure, model.reml, model.theta_scale
        )
        nu = np.asarray(nu)
    start = 0
    for name, (PtL, d) in directions.items():
        q = len(d)
        if q == 0:
            continue
        F = float(np.sum((PtL @ beta) ** 2 / d) / q)
        rows[name] = _f_row(F, q, combined_ddf(nu[start : start + q]), sigma)
        start += q
    return _f_frame(rows)


def kr_f_test(L: np.ndarray, beta: np.ndarray, kr: KRAdjusted) -> tuple[KRStatistics, float]:
    """KR's df and scaling for ``Lβ = 0`` and the unscaled F ``(Lβ̂)ᵀ(LΦ_ALᵀ)⁻¹Lβ̂ / q``."""
    stats = kr_statistics(L, kr.vcov, kr.P, kr.W)
    Lb = L @ beta
    return stats, float(Lb @ np.linalg.solve(L @ kr.vcov_adjusted @ L.T, Lb) / stats.ndf)


def _f_frame(rows: dict) -> pd.DataFrame:
    columns = ["Sum Sq", "Mean Sq", "NumDF", "DenDF", "F value", "Pr(>F)"]
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns).astype(float)


def _full_rank(L: np.ndarray) -> np.ndarray:
    """pbkrtest's ``force_full_rank``: an orthonormal basis of L's rows when they are dependent."""
    rank = np.linalg.matrix_rank(L)
    if rank < len(L):
        Q, _ = np.linalg.qr(L.T)
        return Q[:, :rank].T
    return L


def contest(model, L, ddf: str = "Satterthwaite", rhs=0.0) -> pd.DataFrame:
    """lmerTest's ``contest``: one row of L → the t table (``contest1D``), several → the F table (``contestMD``)."""
    check_ddf(model, ddf)
    L = np.asarray(L, dtype=float)
    p = model.design.p
    if L.ndim == 1:
        L = L[None, :]
    if L.ndim != 2 or L.shape[1] != p:
        raise JaxlmmError(f"L must have {p} columns (one per fixed effect), got shape {L.shape}")
    if not np.all(np.isfinite(L)):
        raise JaxlmmError("L has missing or infinite entries")
    rhs = np.broadcast_to(np.asarray(rhs, dtype=float), (L.shape[0],))
    if L.shape[0] == 1:
        return t_tests(model, L, ddf, rhs[0])
    if np.any(rhs != 0):
        raise JaxlmmError("a non-zero rhs is only supported for one-row contrasts")
    return f_tests(model, {"": L}, ddf).reset_index(drop=True)


def type3_anova(model, ddf: str = "Satterthwaite") -> pd.DataFrame:
    """lmerTest's ``anova(m)``: the type III F test of each fixed term (``Sum Sq``, ``Mean Sq``, ``NumDF``,
    ``DenDF``, ``F value``, ``Pr(>F)``); with lme4's aliased columns dropped, a term with nothing left to
    test is an all-NaN row at the end, as in lmerTest."""
    check_ddf(model, ddf)
    Ls = type3_contrasts(model.design)
    table = f_tests(model, Ls, ddf)
    untested = [name for name in Ls if name not in table.index]  # all its columns aliased: NA, last (lmerTest)
    return pd.concat([table, pd.DataFrame(np.nan, index=untested, columns=table.columns)]) if untested else table
