"""Profile-likelihood confidence intervals: lme4's ``confint(m, method = "profile")``.

lme4's ``profile.merMod`` (Bates et al. 2015, §5.1) profiles the *ML* deviance (a REML fit is refitted by
ML first, as its ``devfun2`` does) against each parameter on lme4's scale, the others re-optimised:

* the random-effects standard deviations and correlations of each term and σ (``sd_x|g``,
  ``cor_x.z|g``, ``sigma``; the deviance at (θ, σ) with β profiled, :func:`~jaxlmm.deviance.varpar_deviance`);
* each fixed effect βⱼ: with βⱼ = v held, the other β and σ² profiled out in closed form,
  ``d = log|M| + n (1 + log(2π (r² + (v − β̂ⱼ)²/Uⱼⱼ)/n))`` (U = (R_XᵀR_X)⁻¹: the minimum of the penalised
  residual sum of squares on the hyperplane βⱼ = v), which lme4 obtains by refitting with ``Xⱼv`` as offset.

``ζ(v) = sign(v − v̂) √(d(v) − d̂)`` and the interval solves ``ζ = ±z_{(1+level)/2}``.  Here every grid point
of every parameter is one lane of a single vmapped BFGS (:func:`~jaxlmm.optimize.bfgs_steps`; the free
parameters in an unconstrained form: log sd, log σ, atanh cor), first on a grid of multiples of each
parameter's standard error, then on finer grids inside the bracket of each crossing (again while ζ changes
by more than 0.25 across it, geometrically spaced over a bracket spanning orders of magnitude: at a singular
fit the Wald errors that set the first grid can be far too large); the limit is the
root of the cubic spline through (v, ζ), as lme4 inverts its interpolating spline.  At a singular fit each
sd/cor/σ profile point is also optimised from two starts inside the boundary (sd ≥ 0.3σ̂, cor = ±0.9) and the
lowest deviance kept: from the estimate alone BFGS in log sd / atanh cor can stall at the boundary.  A profile that stays
inside ±z up to a bound (sd 0, correlation ±1) gives the bound, as lme4 does.
"""

from __future__ import annotations

import functools
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.interpolate
import scipy.optimize
import scipy.special

from .deviance import beta_hat, cholesky_small, factorize, unscaled_vcov, varpar_deviance
from .kernel import SizedKernel
from .optimize import bfgs_start, bfgs_steps

COARSE_STEPS = np.array([0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.5, 8.0, 11.0, 16.0])  # × standard error
FINE_POINTS = 6  # points inside each bracket in each refinement round
MAX_REFINEMENTS = 6  # rounds of finer grids inside the brackets
REFINED_ZETA_STEP = 0.25  # a bracket is refined again while ζ changes more than this across it
SINGULAR_START_SD = 0.3  # at a singular fit, also start each profile from sd ≥ 0.3σ̂ and cor = ±0.9
GEOMETRIC_RATIO = 8.0  # a positive bracket [a, b] with b > 8a gets geometrically spaced points
BFGS_BUDGET = 400
BFGS_GTOL = 1e-7
COR_LIMIT = 1.0 - 1e-9  # correlations are held strictly inside (−1, 1)


class SdCorLayout(NamedTuple):
    """Static: per random-effects term its number of columns and its offsets in θ and in lme4's
    sd/cor vector (per term the lower triangle column by column: sd on the diagonal, cor below)."""

    terms: tuple[tuple[int, int, int], ...]  # (q, theta offset, sdcor offset)
    kinds: tuple[str, ...]  # "sd", "cor" or "sigma" for each entry of the vector (σ last)


def sdcor_layout(design) -> tuple[SdCorLayout, list[str]]:
    """The layout and lme4's names (``confint(m, oldNames = FALSE)``) of the sd/cor/σ vector."""
    terms, kinds, names, offset = [], [], [], 0
    for t in design.terms:
        q = len(t.columns)
        terms.append((q, t.theta_offset, offset))
        for c in range(q):
            for r in range(c, q):
                kinds.append("sd" if r == c else "cor")
                names.append(
                    f"sd_{t.columns[r]}|{t.group}" if r == c else f"cor_{t.columns[r]}.{t.columns[c]}|{t.group}"
                )
        offset += q * (q + 1) // 2
    return SdCorLayout(tuple(terms), tuple(kinds + ["sigma"])), names + ["sigma"]


def _lower_entries(q: int) -> list[tuple[int, int]]:
    return [(r, c) for c in range(q) for r in range(c, q)]


def sdcor_from_theta(layout: SdCorLayout, theta: np.ndarray, sigma: float) -> np.ndarray:
    """lme4's ``Cv_to_Sv``: θ, σ → (sd, cor per term; σ)."""
    out = []
    for q, t0, _ in layout.terms:
        Lam = np.zeros((q, q))
        for k, (r, c) in enumerate(_lower_entries(q)):
            Lam[r, c] = theta[t0 + k]
        S = sigma**2 * Lam @ Lam.T
        sd = np.sqrt(np.diag(S))
        for r, c in _lower_entries(q):
            out.append(sd[r] if r == c else (S[r, c] / (sd[r] * sd[c]) if sd[r] * sd[c] > 0 else 0.0))
    return np.array(out + [sigma])


def theta_from_sdcor(layout: SdCorLayout, u: jnp.ndarray, n_theta: int) -> jnp.ndarray:
    """lme4's ``Sv_to_Cv`` in JAX: Λ = diag(sd) chol(C) / σ per term (smooth in sd, also at sd = 0)."""
    sigma = u[-1]
    theta = jnp.zeros(n_theta, dtype=u.dtype)
    for q, t0, s0 in layout.terms:
        entries = _lower_entries(q)
        value = {rc: u[s0 + k] for k, rc in enumerate(entries)}
        C = jnp.stack(
            [
                jnp.stack([1.0 if r == c else value[(max(r, c), min(r, c))] for c in range(q)]).astype(u.dtype)
                for r in range(q)
            ]
        )
        Lam = jnp.stack([value[(r, r)] for r in range(q)])[:, None] * cholesky_small(C) / sigma
        theta = theta.at[t0 : t0 + len(entries)].set(jnp.stack([Lam[r, c] for r, c in entries]))
    return theta


def _to_free(kinds, u: np.ndarray) -> np.ndarray:
    """The unconstrained coordinates: log sd, log σ, atanh cor (sd floored to stay finite)."""
    scale = u[-1]
    out = []
    for kind, v in zip(kinds, u):
        if kind == "cor":
            out.append(np.arctanh(np.clip(v, -0.99, 0.99)))
        else:
            out.append(np.log(max(v, 1e-3 * scale)))
    return np.array(out)


def _from_free(kinds, x: jnp.ndarray) -> jnp.ndarray:
    return jnp.stack([jnp.tanh(x[i]) if k == "cor" else jnp.exp(x[i]) for i, k in enumerate(kinds)])


def _variance_lanes(x0, which, value, layout: SdCorLayout, cp, structure):
    """Per lane: min over the other coordinates of the ML deviance with sd/cor/σ entry ``which`` = ``value``."""

    def solve(x_start, w, v):
        def objective(x):
            u = _from_free(layout.kinds, x).at[w].set(v)
            psi = jnp.append(theta_from_sdcor(layout, u, structure.n_theta), u[-1])
            return varpar_deviance(psi, cp, structure, False)

        guess = jnp.where(jnp.arange(x_start.shape[0]) == w, 0.0, 1.0)
        state = bfgs_steps(
            jax.value_and_grad(objective), bfgs_start(x_start, guess), BFGS_BUDGET, jnp.ones_like(x_start), BFGS_GTOL
        )
        return state.f

    return jax.vmap(solve)(x0, which, value)


def _fixed_lanes(theta0, which, value, cp, structure):
    """Per lane: min over θ of the ML deviance with β_``which`` = ``value`` (β's others and σ profiled)."""
    n = cp.n

    def solve(w, v):
        def objective(theta):
            f = factorize(theta, cp, structure)
            r2 = f.LXY[-1, -1] ** 2 + (v - beta_hat(f)[w]) ** 2 / unscaled_vcov(f)[w, w]
            return f.logdet_M + n * (1.0 + jnp.log(2.0 * jnp.pi * r2 / n))

        state = bfgs_steps(
            jax.value_and_grad(objective), bfgs_start(theta0, jnp.ones_like(theta0)), BFGS_BUDGET,
            jnp.ones_like(theta0), BFGS_GTOL,
        )  # fmt: skip
        return state.f

    return jax.vmap(solve)(which, value)


_fixed_kernel = SizedKernel(_fixed_lanes)


@functools.cache
def _variance_kernel(layout: SdCorLayout) -> SizedKernel:
    def lanes(x0, which, value, cp, structure):
        return _variance_lanes(x0, which, value, layout, cp, structure)

    return SizedKernel(lanes)


class Profile(NamedTuple):
    """The profile traces: per parameter the values tried and their ζ."""

    names: list[str]
    estimates: np.ndarray
    values: list[np.ndarray]
    zeta: list[np.ndarray]
    lower_bounds: np.ndarray
    upper_bounds: np.ndarray


@partial(jax.jit, static_argnames=("structure", "layout"))
def _sdcor_gradients(points, cp, structure, layout: SdCorLayout):
    """The gradient of the ML deviance in the sd/cor/σ vector (β profiled) at each row of ``points``."""

    def deviance(u):
        psi = jnp.append(theta_from_sdcor(layout, u, structure.n_theta), u[-1])
        return varpar_deviance(psi, cp, structure, False)

    return jax.vmap(jax.grad(deviance))(points)


def _standard_errors(ml, layout, u_hat) -> np.ndarray:
    """Wald standard errors of the sd/cor/σ entries (from the Hessian of the ML deviance in them) and
    of the fixed effects: the first grid's unit."""
    u_safe = np.array(u_hat)
    for i, kind in enumerate(layout.kinds):
        if kind == "sd":
            u_safe[i] = max(u_safe[i], 1e-3 * u_hat[-1])
        elif kind == "cor":
            u_safe[i] = np.clip(u_safe[i], -0.99, 0.99)
    h = 1e-4 * np.maximum(np.abs(u_safe), 1e-2 * u_hat[-1])
    shifts = np.diag(h)
    g = np.asarray(_sdcor_gradients(np.concatenate([u_safe + shifts, u_safe - shifts]), ml.cp, ml.structure, layout))
    H = (g[: len(h)] - g[len(h) :]) / (2.0 * h[:, None])  # row i: ∂g/∂uᵢ (central differences)
    evals, evecs = np.linalg.eigh(0.5 * (H + H.T))
    cov = 2.0 * (evecs / np.maximum(evals, 1e-12 * np.max(np.abs(evals)))) @ evecs.T
    se_var = np.sqrt(np.maximum(np.diag(cov), 1e-12))
    se_var = np.where(np.array(layout.kinds) == "cor", np.minimum(se_var, 0.5), se_var)
    return np.concatenate([se_var, np.sqrt(np.diag(ml.vcov.values))])


def profile(model, cutoff: float) -> Profile:
    """lme4's ``profile(m, signames = FALSE)``: ζ traces of every sd/cor/σ entry and fixed effect, refined
    where they cross ±``cutoff``."""
    ml = model.refit_ml()
    layout, var_names = sdcor_layout(ml.design)
    u_hat = sdcor_from_theta(layout, ml.theta, ml.sigma)
    beta = ml.fixef.values
    estimates = np.concatenate([u_hat, beta])
    m = len(u_hat)
    low = np.array([0.0 if k != "cor" else -COR_LIMIT for k in layout.kinds] + [-np.inf] * len(beta))
    high = np.array([np.inf if k != "cor" else COR_LIMIT for k in layout.kinds] + [np.inf] * len(beta))
    se = _standard_errors(ml, layout, u_hat)
    base = ml.deviance
    x_hat = _to_free(layout.kinds, u_hat)
    starts = [x_hat]
    if ml.singular:  # the others' optimum may lie across the boundary from the estimate: also start inside
        kinds = np.array(layout.kinds)
        for cor in (-0.9, 0.9):
            inside = np.where(kinds == "sd", np.maximum(u_hat, SINGULAR_START_SD * u_hat[-1]), u_hat)
            starts.append(_to_free(layout.kinds, np.where(kinds == "cor", cor, inside)))
    # fixed-effect profiles start at θ̂, a zero diagonal entry (singular fit) nudged off the point where the
    # criterion's symmetry in it makes its gradient vanish
    on_diagonal = np.isfinite(ml.structure.lower)
    nudge = 1e-3 * ml.theta_scale
    theta_start = np.where(on_diagonal & (np.abs(ml.theta) < nudge), nudge, np.asarray(ml.theta, dtype=float))

    steps = np.concatenate([-COARSE_STEPS[::-1], COARSE_STEPS])
    lanes = {"var": m * steps.size, "fixed": len(beta) * steps.size}  # every call pads to these (one compile)

    def padded(a: np.ndarray, size: int) -> np.ndarray:
        return np.concatenate([a, np.repeat(a[-1:], size - len(a), axis=0)])

    def evaluate(which: np.ndarray, value: np.ndarray) -> np.ndarray:
        out = np.empty(len(which))
        var = which < m
        if var.any():
            count, size = int(var.sum()), lanes["var"]
            kernel = _variance_kernel(layout)
            f = np.min(
                [
                    jax.device_get(kernel(np.tile(x0, (size, 1)), padded(which[var], size), padded(value[var], size),
                                          ml.cp, ml.structure))[:count]
                    for x0 in starts
                ],
                axis=0,
            )  # fmt: skip
            out[var] = f
        if (~var).any():
            count, size = int((~var).sum()), lanes["fixed"]
            f = _fixed_kernel(
                theta_start,
                padded(which[~var] - m, size),
                padded(value[~var], size),
                ml.cp,
                ml.structure,
            )
            out[~var] = jax.device_get(f)[:count]
        with np.errstate(invalid="ignore"):
            return np.sign(value - estimates[which]) * np.sqrt(np.maximum(out - base, 0.0))

    k = len(estimates)
    which = np.repeat(np.arange(k), steps.size)
    grid_low = low.copy()
    grid_low[m - 1] = 1e-2 * u_hat[-1]  # σ itself: the deviance is infinite at 0
    value = np.clip(estimates[which] + np.tile(steps, k) * se[which], grid_low[which], high[which])
    zeta = evaluate(which, value)
    values = [np.append(value[which == i], estimates[i]) for i in range(k)]
    zetas = [np.append(zeta[which == i], 0.0) for i in range(k)]
    # then finer grids inside each bracket of |ζ| = cutoff, until ζ changes by at most REFINED_ZETA_STEP across
    # it (several rounds where the first grid's unit was too coarse: Wald errors at a singular fit)
    for round_ in range(MAX_REFINEMENTS):
        fine_which, fine_value = [], []
        for i in range(k):
            v, z = _unique_sorted(values[i], zetas[i])
            for side in (-1, 1):
                bracket = _bracket(v, z, side * cutoff, with_zeta=True)
                if bracket is None:
                    continue
                (a, za), (b, zb) = bracket
                if round_ > 0 and abs(zb - za) <= REFINED_ZETA_STEP:
                    continue
                if a > 0 and b > GEOMETRIC_RATIO * a:  # a bracket over orders of magnitude: geometric points
                    points = np.geomspace(a, b, FINE_POINTS + 2)[1:-1]
                else:
                    points = np.linspace(a, b, FINE_POINTS + 2)[1:-1]
                fine_value.append(points)
                fine_which.append(np.full(FINE_POINTS, i))
        if not fine_which:
            break
        fw, fv = np.concatenate(fine_which), np.concatenate(fine_value)
        fz = evaluate(fw, fv)
        for i in range(k):
            values[i] = np.append(values[i], fv[fw == i])
            zetas[i] = np.append(zetas[i], fz[fw == i])
    names = var_names + list(ml.design.fixef_names)
    ordered = [_unique_sorted(v, z) for v, z in zip(values, zetas)]
    return Profile(names, estimates, [v for v, _ in ordered], [z for _, z in ordered], low, high)


def _unique_sorted(v: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v, idx = np.unique(v, return_index=True)
    return v, z[idx]


def _bracket(v: np.ndarray, z: np.ndarray, target: float, with_zeta: bool = False):
    """Neighbouring grid values between which ζ crosses ``target`` (the crossing nearest the estimate);
    ``with_zeta``: ((a, ζ(a)), (b, ζ(b)))."""
    if target > 0:
        above = np.nonzero((z >= target) & np.isfinite(z))[0]
        if above.size == 0 or above[0] == 0:
            return None
        j0, j1 = above[0] - 1, above[0]
    else:
        below = np.nonzero((z <= target) & np.isfinite(z))[0]
        if below.size == 0 or below[-1] == len(v) - 1:
            return None
        j0, j1 = below[-1], below[-1] + 1
    if with_zeta:
        return (float(v[j0]), float(z[j0])), (float(v[j1]), float(z[j1]))
    return float(v[j0]), float(v[j1])


def limits(v: np.ndarray, z: np.ndarray, cut: float, low: float, high: float) -> tuple[float, float]:
    """Where the interpolating cubic spline of ζ(v) crosses ∓cut; the bound where it does not."""
    ok = np.isfinite(z)
    spline = scipy.interpolate.CubicSpline(v[ok], z[ok], bc_type="natural")
    out = []
    for side, bound in ((-1, low), (1, high)):
        bracket = _bracket(v[ok], z[ok], side * cut)
        if bracket is None:
            out.append(bound if np.isfinite(bound) else np.nan)
            continue
        out.append(scipy.optimize.brentq(lambda t, target=side * cut: spline(t) - target, *bracket, xtol=1e-12))
    return out[0], out[1]


def confint_profile(model, level: float = 0.95) -> pd.DataFrame:
    """lme4's ``confint(m, method = "profile", level, oldNames = FALSE)``."""
    cut = float(scipy.special.ndtri(0.5 + level / 2))
    prof = profile(model, cut)
    rows = [
        limits(v, z, cut, lo, hi) for v, z, lo, hi in zip(prof.values, prof.zeta, prof.lower_bounds, prof.upper_bounds)
    ]
    alpha = (1 - level) / 2
    return pd.DataFrame(rows, index=prof.names, columns=[f"{100 * alpha:.1f} %", f"{100 * (1 - alpha):.1f} %"])
