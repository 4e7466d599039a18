"""Batched refits: B response vectors sharing one design, fitted in one compiled, vmapped call.

The fixed-design cross-products are computed once; per replicate only the y-dependent pieces
(``A1y``, ``A2y``, ``AXy``, ``yy``) differ, so a batch is a batch of those arrays.  Each lane runs a
saddle-free damped Newton method (|eigenvalues| of the exact Hessian plus Levenberg damping) inside a
``lax.while_loop`` with a per-lane done flag.  theta is optimised without bounds: the criterion is even
in each column of Λ (flipping a column's sign changes nothing), so the bound ``θ_ii >= 0`` is restored
afterwards by flipping the columns whose diagonal came out negative, and the saddle at ``θ_ii = 0`` is
never a stopping point.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .crossprod import CrossProducts, response_products
from .design import Structure
from .deviance import beta_hat, criterion, factorize, sigma_hat

Y_FIELDS = ("A1y", "A2y", "AXy", "yy")
CP_AXES = CrossProducts(*(0 if f in Y_FIELDS else None for f in CrossProducts._fields))


def column_diagonal(structure: Structure) -> np.ndarray:
    """For each theta entry, the theta index of the diagonal entry of its Λ column."""
    out = np.arange(structure.n_theta)
    for b in structure.blocks:
        for c in range(b.q):
            for r in range(b.q):
                if b.theta_index[r][c] >= 0:
                    out[b.theta_index[r][c]] = b.theta_index[c][c]
    return out


def canonical_theta(theta: jnp.ndarray, structure: Structure) -> jnp.ndarray:
    """Flip Λ columns with a negative diagonal (the criterion is unchanged) so that θ_ii >= 0."""
    diag = theta[..., column_diagonal(structure)]
    return jnp.where(diag < 0, -theta, theta)


@partial(jax.jit, static_argnames=("structure", "reml", "max_iter"))
def newton_fit(theta0, scale, cp: CrossProducts, structure: Structure, reml: bool, max_iter: int = 100,
               gtol: float = 1e-7):
    """Fit one response (vmap this): returns theta, beta, sigma, criterion, iterations, converged."""
    def dev(theta):
        return criterion(factorize(theta, cp, structure), cp.n, reml)

    def fgh(theta):
        f, g = jax.value_and_grad(dev)(theta)
        return f, g, jax.jacfwd(jax.grad(dev))(theta)

    def step(state):
        theta, f, g, H, lam, it, done = state
        e, V = jnp.linalg.eigh(H)
        e_abs = jnp.maximum(jnp.abs(e), 1e-10 * jnp.max(jnp.abs(e)))
        delta = -V @ ((V.T @ g) / (e_abs + lam * jnp.max(e_abs)))
        trial = theta + delta
        ft, gt, Ht = fgh(trial)
        accept = jnp.isfinite(ft) & (ft <= f) & jnp.all(jnp.isfinite(gt))
        theta = jnp.where(accept, trial, theta)
        small_change = jnp.abs(ft - f) <= 1e-13 * (1.0 + jnp.abs(f))
        f, g, H = jnp.where(accept, ft, f), jnp.where(accept, gt, g), jnp.where(accept, Ht, H)
        lam = jnp.where(accept, jnp.maximum(lam * 0.2, 1e-12), lam * 10.0)
        converged = jnp.max(jnp.abs(g * scale)) < gtol
        done = converged | (accept & small_change) | (lam > 1e8)
        return theta, f, g, H, lam, it + 1, done

    f0, g0, H0 = fgh(theta0)
    init = (theta0, f0, g0, H0, jnp.asarray(1e-4), jnp.asarray(0), jnp.asarray(False))
    theta, f, g, _, _, it, _ = jax.lax.while_loop(lambda s: (~s[-1]) & (s[-2] < max_iter), step, init)
    fac = factorize(theta, cp, structure)
    converged = jnp.isfinite(f) & (jnp.max(jnp.abs(g * scale)) < 1e-3) & (it < max_iter)
    return {
        "theta": canonical_theta(theta, structure), "beta": beta_hat(fac), "sigma": sigma_hat(fac, cp.n, reml),
        "criterion": f, "iterations": it, "converged": converged,
    }


@partial(jax.jit, static_argnames=("structure", "reml", "max_iter"))
def _fit_lanes(theta0, scale, cp: CrossProducts, structure: Structure, reml: bool, max_iter: int = 100):
    return jax.vmap(lambda c: newton_fit(theta0, scale, c, structure, reml, max_iter), in_axes=(CP_AXES,))(cp)


def warm_start(theta: np.ndarray, structure: Structure, scale: np.ndarray, floor: float = 0.1) -> np.ndarray:
    """The fitted theta with each Λ diagonal entry kept at least ``floor`` × its scale away from 0."""
    theta = np.array(theta, dtype=float)
    low = structure.lower
    diag = np.isfinite(low)
    theta[diag] = np.maximum(theta[diag], floor * scale[diag])
    return theta


@dataclass
class BatchFit:
    """Results of B fits: arrays with the replicate on the first axis."""

    theta: np.ndarray  # (B, n_theta)
    beta: np.ndarray  # (B, p)
    sigma: np.ndarray  # (B,)
    criterion: np.ndarray  # (B,) deviance (ML) or REML criterion
    converged: np.ndarray  # (B,) bool
    iterations: np.ndarray  # (B,)
    fixef_names: list[str]
    reml: bool

    @property
    def loglik(self) -> np.ndarray:
        return -0.5 * self.criterion

    @property
    def n_failed(self) -> int:
        return int((~self.converged).sum())

    def to_frame(self) -> pd.DataFrame:
        """Long tidy table: replicate, term, estimate (fixed effects, theta, sigma, logLik, converged)."""
        B = self.beta.shape[0]
        frames = [pd.DataFrame({"replicate": np.arange(B), "term": name, "estimate": self.beta[:, j]})
                  for j, name in enumerate(self.fixef_names)]
        frames += [pd.DataFrame({"replicate": np.arange(B), "term": f"theta{j + 1}", "estimate": self.theta[:, j]})
                   for j in range(self.theta.shape[1])]
        frames.append(pd.DataFrame({"replicate": np.arange(B), "term": "sigma", "estimate": self.sigma}))
        frames.append(pd.DataFrame({"replicate": np.arange(B), "term": "logLik", "estimate": self.loglik}))
        out = pd.concat(frames, ignore_index=True).sort_values(["replicate"], kind="stable").reset_index(drop=True)
        out["converged"] = self.converged[out.replicate.values]
        return out


def fit_responses(model, Y: np.ndarray, reml: bool | None = None, chunk_size: int = 1000,
                  progress: bool | None = None) -> BatchFit:
    """Fit ``model``'s formula to each column of ``Y`` (n, B), warm-started at the model's theta."""
    from .errors import DataError
    from .model import theta_scale

    d = model.design
    Y = np.asarray(Y, dtype=float)
    if Y.ndim == 1:
        Y = Y[:, None]
    if Y.shape[0] != d.n:
        raise DataError(f"responses have {Y.shape[0]} rows; the model has {d.n} observations")
    if not np.all(np.isfinite(Y)):
        raise DataError("responses contain missing or infinite values")
    reml = model.reml if reml is None else reml
    scale = theta_scale(d)
    theta0 = jnp.asarray(warm_start(model.theta, d.structure, scale))
    results = []
    B = Y.shape[1]
    starts = range(0, B, chunk_size)
    for start in _progress(starts, progress, total=len(starts), desc="fitting"):
        block = Y[:, start:start + chunk_size]
        width = block.shape[1]
        if width < chunk_size and B > chunk_size:  # pad the last chunk: one compiled shape
            block = np.concatenate([block, np.repeat(block[:, :1], chunk_size - width, axis=1)], axis=1)
        A1y, A2y, AXy, yy = response_products(block, d.X, d.codes, d.Z, d.structure)
        cp = model.cp._replace(A1y=jnp.asarray(A1y), A2y=jnp.asarray(A2y), AXy=jnp.asarray(AXy), yy=jnp.asarray(yy))
        out = jax.device_get(_fit_lanes(theta0, jnp.asarray(scale), cp, d.structure, reml))
        results.append({k: np.asarray(v)[:width] for k, v in out.items()})
    cat = {k: np.concatenate([r[k] for r in results]) for k in results[0]}
    return BatchFit(cat["theta"], cat["beta"], cat["sigma"], cat["criterion"], cat["converged"].astype(bool),
                    cat["iterations"], list(d.fixef_names), reml)


def fit_batch(formula: str, data: pd.DataFrame, responses: np.ndarray, reml: bool = True,
              chunk_size: int = 1000, progress: bool | None = None) -> BatchFit:
    """Fit ``formula`` to each column of ``responses`` (n, B), all sharing ``data``'s design.

    The model is first fitted to ``data``'s own response; its theta warm-starts every lane.
    """
    from .model import lmer

    return fit_responses(lmer(formula, data, reml=reml), responses, reml=reml, chunk_size=chunk_size,
                         progress=progress)


def _progress(iterable, enabled: bool | None, total: int, desc: str):
    """A tqdm bar when enabled (default: only on a terminal and for more than one chunk)."""
    import sys

    if enabled is None:
        enabled = sys.stderr.isatty() and total > 1
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc)
