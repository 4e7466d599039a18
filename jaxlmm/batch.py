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


def newton_steps(theta, lam, budget, scale, cp: CrossProducts, structure: Structure, reml: bool,
                 gtol: float = 1e-6):
    """Up to ``budget`` damped Newton steps for one response from (theta, lam); vmap this.

    Step: ``δ = −V (|Λ| + λ max|Λ|)⁻¹ Vᵀ g`` from the eigendecomposition ``H = VΛVᵀ`` (saddle-free
    Newton); a step is taken only if it does not increase the criterion, and λ shrinks (×0.2) after a
    success and grows (×10) after a failure.  Returns theta, lam, criterion, steps taken, done, and
    whether the scaled gradient is below ``gtol``.
    """
    def dev(t):
        return criterion(factorize(t, cp, structure), cp.n, reml)

    def fgh(t):
        f, g = jax.value_and_grad(dev)(t)
        return f, g, jax.hessian(dev)(t)

    def small_gradient(g):
        return jnp.max(jnp.abs(g * scale)) < gtol

    def step(state):
        theta, f, g, H, lam, it, done = state
        e, V = jnp.linalg.eigh(H)
        e_abs = jnp.maximum(jnp.abs(e), 1e-10 * jnp.max(jnp.abs(e)))
        trial = theta - V @ ((V.T @ g) / (e_abs + lam * jnp.max(e_abs)))
        ft, gt, Ht = fgh(trial)
        accept = jnp.isfinite(ft) & (ft <= f) & jnp.all(jnp.isfinite(gt)) & jnp.all(jnp.isfinite(Ht))
        small_change = jnp.abs(ft - f) <= 1e-12 * (1.0 + jnp.abs(f))
        theta = jnp.where(accept, trial, theta)
        f, g, H = jnp.where(accept, ft, f), jnp.where(accept, gt, g), jnp.where(accept, Ht, H)
        lam = jnp.where(accept, jnp.maximum(lam * 0.2, 1e-12), lam * 10.0)
        done = small_gradient(g) | (accept & small_change) | (lam > 1e8)
        return theta, f, g, H, lam, it + 1, done

    f0, g0, H0 = fgh(theta)
    init = (theta, f0, g0, H0, lam, jnp.asarray(0), small_gradient(g0) | ~jnp.isfinite(f0))
    theta, f, g, _, lam, it, done = jax.lax.while_loop(lambda s: (~s[-1]) & (s[-2] < budget), step, init)
    return theta, lam, f, it, done, jnp.isfinite(f) & (jnp.max(jnp.abs(g * scale)) < 1e-3)


@partial(jax.jit, static_argnames=("structure", "reml"))
def _newton_lanes(theta, lam, budget, scale, cp: CrossProducts, structure: Structure, reml: bool):
    return jax.vmap(lambda t, lm, c: newton_steps(t, lm, budget, scale, c, structure, reml),
                    in_axes=(0, 0, CP_AXES))(theta, lam, cp)


@partial(jax.jit, static_argnames=("structure", "reml"))
def _estimates_lanes(theta, cp: CrossProducts, structure: Structure, reml: bool):
    """Canonical theta, β̂ and σ̂ per lane at the final theta."""
    def one(t, c):
        fac = factorize(t, c, structure)
        return canonical_theta(t, structure), beta_hat(fac), sigma_hat(fac, c.n, reml)

    return jax.vmap(one, in_axes=(0, CP_AXES))(theta, cp)


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
                  budget: int = 6, max_iter: int = 200, progress: bool | None = None) -> BatchFit:
    """Fit ``model``'s formula to each column of ``Y`` (n, B), warm-started at the model's theta.

    Lanes are scheduled in calls of ``chunk_size`` (one compiled shape): each call gives every lane up to
    ``budget`` Newton steps; lanes that are not done return to the pool and fill the next call first, so
    no call waits on a few slow lanes.  A lane still not done after ``max_iter`` steps is a failure.
    """
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
    B = Y.shape[1]
    scale = theta_scale(d)
    products = dict(zip(Y_FIELDS, response_products(Y, d.X, d.codes, d.Z, d.structure)))
    theta = np.tile(warm_start(model.theta, d.structure, scale), (B, 1))
    lam = np.full(B, 1e-4)
    steps = np.zeros(B, dtype=np.int64)
    done = np.zeros(B, dtype=bool)
    ok = np.zeros(B, dtype=bool)
    crit = np.full(B, np.nan)
    size = min(chunk_size, B)
    bar = _progress(enabled=progress, total=B, desc="fitting")
    while not done.all():
        todo = np.flatnonzero(~done)
        lanes = todo[np.argsort(steps[todo] == 0, kind="stable")][:size]  # started lanes first
        padded = np.concatenate([lanes, np.repeat(lanes[:1], size - lanes.size)])
        cp = model.cp._replace(**{k: jnp.asarray(v[padded]) for k, v in products.items()})
        out = jax.device_get(_newton_lanes(jnp.asarray(theta[padded]), jnp.asarray(lam[padded]), budget,
                                           jnp.asarray(scale), cp, d.structure, reml))
        th, lm, f, it, dn, good = (np.asarray(a)[: lanes.size] for a in out)
        theta[lanes], lam[lanes], crit[lanes], ok[lanes] = th, lm, f, good
        steps[lanes] += it
        finished = dn | (steps[lanes] >= max_iter)
        done[lanes] = finished
        if bar is not None:
            bar.update(int(finished.sum()))
    if bar is not None:
        bar.close()
    ok &= steps < max_iter
    cp_all = model.cp._replace(**{k: jnp.asarray(v) for k, v in products.items()})
    theta_c, beta, sigma = (np.asarray(a) for a in jax.device_get(
        _estimates_lanes(jnp.asarray(theta), cp_all, d.structure, reml)))
    return BatchFit(theta_c, beta, sigma, crit, ok, steps, list(d.fixef_names), reml)


def fit_batch(formula: str, data: pd.DataFrame, responses: np.ndarray, reml: bool = True,
              chunk_size: int = 1000, progress: bool | None = None) -> BatchFit:
    """Fit ``formula`` to each column of ``responses`` (n, B), all sharing ``data``'s design.

    The model is first fitted to ``data``'s own response; its theta warm-starts every lane.
    """
    from .model import lmer

    return fit_responses(lmer(formula, data, reml=reml), responses, reml=reml, chunk_size=chunk_size,
                         progress=progress)


def _progress(enabled: bool | None, total: int, desc: str):
    """A tqdm bar over ``total`` items when enabled (default: only on a terminal, for large batches)."""
    import sys

    if enabled is None:
        enabled = sys.stderr.isatty() and total > 1000
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="fit")
