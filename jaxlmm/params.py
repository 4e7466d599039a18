"""A model's parameters (β, θ, σ) and the covariance tables read from them.

:class:`Params` is what simulation, batched refits and power take: a fitted model's estimates or values
a user specifies.  :func:`term_covariances` gives each random-effects term's ``σ²ΛΛᵀ`` for any number of
replicates at once; lme4's ``VarCorr`` table (:func:`varcorr_rows`), broom.mixed's ``ran_pars`` rows
(:func:`ran_pars`) and the bootstrap's per-replicate table are orderings of the same standard
deviations and correlations (:func:`sd_cor`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .design import Design
from .errors import DataError


class Params(NamedTuple):
    """The parameters of a linear mixed model: fixed effects β (p,), relative covariance factor θ in
    lme4's layout (n_theta,), residual standard deviation σ."""

    beta: np.ndarray
    theta: np.ndarray
    sigma: float


class TermCovariance(NamedTuple):
    group: str  # unique name: g, then g.1, g.2 for further terms of the same factor
    columns: tuple[str, ...]
    covariance: np.ndarray  # (..., q, q) σ²ΛΛᵀ


def term_covariances(design: Design, theta: np.ndarray, sigma) -> list[TermCovariance]:
    """σ²ΛΛᵀ per random-effects term in lme4's order; leading axes of ``theta`` (…, n_theta) and
    ``sigma`` (…) are replicates."""
    out, seen = [], {}
    sigma = np.asarray(sigma, dtype=float)[..., None, None]
    for term in design.terms:
        cols = np.array(term.block_columns)
        Lam = design.structure.blocks[term.block].lambda_of(theta)[..., cols[:, None], cols[None, :]]
        k = seen.get(term.group, 0)
        seen[term.group] = k + 1
        out.append(
            TermCovariance(
                term.group if k == 0 else f"{term.group}.{k}", term.columns, sigma**2 * Lam @ np.swapaxes(Lam, -1, -2)
            )
        )
    return out


def sd_cor(S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Standard deviations (…, q) and correlations (…, q, q) of covariance matrices S (…, q, q); a
    correlation with a zero standard deviation is NaN, as lme4 reports it."""
    sd = np.sqrt(np.diagonal(S, axis1=-2, axis2=-1))
    outer = sd[..., :, None] * sd[..., None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        return sd, np.where(outer > 0, S / np.where(outer > 0, outer, 1.0), np.nan)


def varcorr_rows(covariances: list[TermCovariance], sigma: float) -> list[tuple]:
    """R's ``as.data.frame(VarCorr(m))`` rows (grp, var1, var2, vcov, sdcor) of one fit: each term's
    variances, then its covariances column by column, then the residual."""
    rows = []
    for group, cols, S in covariances:
        sd, cor = sd_cor(S)
        rows += [(group, c, None, S[i, i], sd[i]) for i, c in enumerate(cols)]
        rows += [
            (group, cols[j], cols[i], S[i, j], cor[i, j]) for j in range(len(cols)) for i in range(j + 1, len(cols))
        ]
    rows.append(("Residual", None, None, sigma**2, sigma))
    return rows


def ran_pars(covariances: list[TermCovariance], sigma) -> list[tuple[str, str, np.ndarray]]:
    """broom.mixed's ``ran_pars`` rows (group, term, estimate): per term ``sd__x`` each followed by its
    ``cor__x.z``, then ``sd__Observation``; estimates batched like ``sigma``."""
    rows = []
    for group, cols, S in covariances:
        sd, cor = sd_cor(S)
        for i, c in enumerate(cols):
            rows.append((group, f"sd__{c}", sd[..., i]))
            rows += [(group, f"cor__{c}.{cols[j]}", cor[..., i, j]) for j in range(i + 1, len(cols))]
    rows.append(("Residual", "sd__Observation", np.asarray(sigma, dtype=float)))
    return rows


def theta_from_covariance(design: Design, covariance: dict[str, np.ndarray], sigma: float) -> np.ndarray:
    """lme4's theta from per-grouping-factor covariance matrices Σ (Λ = chol(Σ)/σ, terms as the formula
    has them; covariances between uncorrelated terms must be 0)."""
    theta = np.zeros(design.structure.n_theta)
    for name, block in zip(design.group_names, design.structure.blocks):
        if name not in covariance:
            raise DataError(f"no covariance given for grouping factor {name!r}")
        S = np.atleast_2d(np.asarray(covariance[name], dtype=float))
        if S.shape != (block.q, block.q):
            raise DataError(f"covariance for {name!r} must be {block.q} x {block.q}, got {S.shape}")
        index = np.array(block.theta_index)
        if np.any(np.abs(S[index < 0]) > 1e-12 * np.abs(S).max()):
            raise DataError(f"covariance for {name!r} has covariances between uncorrelated terms")
        try:
            Lam = np.linalg.cholesky(S + 1e-300 * np.eye(block.q)) / sigma
        except np.linalg.LinAlgError:
            raise DataError(f"covariance for {name!r} is not positive semi-definite") from None
        theta[index[index >= 0]] = Lam[index >= 0]
    return theta
