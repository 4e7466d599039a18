"""Minimise the profiled criterion over theta with autodiff derivatives (lme4's ``optimizeLmer``).

Two stages: L-BFGS-B with exact gradients (scipy; bounds theta_ii >= 0), then a projected Newton
polish with the exact Hessian on the free coordinates, which lands on the optimum to ~1e-10 in the
criterion, also on the boundary where derivative-free optimisers often stop short.  The optimiser
knows nothing about formulas: it sees a function of theta, its derivatives and the bounds.

theta is optimised in scaled coordinates ``phi = theta / scale`` (``scale`` from the size of the
random-effects columns), because slopes of covariates measured in large units have tiny theta.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.optimize

BIG = 1e100  # stands in for a criterion that is not finite


@dataclass
class OptSummary:
    """What the optimiser did (MixedModels.jl's OptSummary)."""

    theta: np.ndarray
    fval: float
    n_evals: int
    n_newton: int
    converged: bool
    message: str
    projected_gradient: float
    optimizer: str = "L-BFGS-B + projected Newton (autodiff)"


def projected_gradient(theta: np.ndarray, grad: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """The gradient with components that push into an active lower bound set to zero."""
    at_bound = (theta <= lower + 1e-12) & (grad > 0)
    return np.where(at_bound, 0.0, grad)


def minimize_theta(
    value_and_grad: Callable[[np.ndarray], tuple[float, np.ndarray]],
    hessian: Callable[[np.ndarray], np.ndarray],
    theta0: np.ndarray,
    lower: np.ndarray,
    scale: np.ndarray,
    gtol: float = 1e-4,
    max_newton: int = 50,
    max_escapes: int = 5,
) -> OptSummary:
    """Minimise f(theta) subject to theta >= lower, from theta0.

    Converged means max |projected gradient| <= gtol in the scaled coordinates.
    """
    n_evals = 0

    def fg_phi(phi):
        nonlocal n_evals
        n_evals += 1
        f, g = value_and_grad(phi * scale)
        if not np.isfinite(f) or not np.all(np.isfinite(g)):
            return BIG, np.zeros_like(phi)
        return f, g * scale

    bounds = [(lo / s if np.isfinite(lo) else None, None) for lo, s in zip(lower, scale)]

    def lbfgsb(start):
        res = scipy.optimize.minimize(
            fg_phi, start / scale, jac=True, method="L-BFGS-B", bounds=bounds,
            options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-10, "maxcor": 20},
        )
        theta = np.maximum(res.x * scale, lower)
        f, g = value_and_grad(theta)
        return _newton_polish(value_and_grad, hessian, theta, f, g, lower, max_newton)

    theta, f, g, n_newton = lbfgsb(theta0)
    n_evals += 1
    for _ in range(max_escapes):
        escape = _escape_saddle(value_and_grad, hessian, theta, f, lower, scale)
        if escape is None:
            break
        theta2, f2, g2, k = lbfgsb(escape)
        n_newton += k
        if not f2 < f:
            break
        theta, f, g = theta2, f2, g2
    pg = float(np.max(np.abs(projected_gradient(theta, g, lower) * scale), initial=0.0))
    converged = bool(np.isfinite(f)) and pg <= gtol
    message = "converged" if converged else f"not converged: max|projected gradient| = {pg:.3g}"
    return OptSummary(theta, float(f), n_evals, n_newton, converged, message, pg)


def _escape_saddle(value_and_grad, hessian, theta, f, lower, scale):
    """A better start when theta sits on a bound at a saddle, else None.

    A diagonal entry of Lambda at 0 is a stationary point by symmetry (flipping a column's sign leaves
    the deviance unchanged), so the gradient there is 0 and only negative curvature reveals that moving
    off the bound helps.  Each such coordinate is moved to the best of a few trial values.
    """
    at_bound = np.isfinite(lower) & (theta <= lower + 1e-10)
    if not at_bound.any():
        return None
    curvature = np.diag(hessian(theta))
    downhill = at_bound & (curvature < 0)
    if not downhill.any():
        return None
    best, best_f = None, f
    for t in (0.01, 0.03, 0.1, 0.3, 1.0):
        trial = theta.copy()
        trial[downhill] = lower[downhill] + t * scale[downhill]
        ft, _ = value_and_grad(trial)
        if np.isfinite(ft) and ft < best_f:
            best, best_f = trial, ft
    return best


def _newton_polish(value_and_grad, hessian, theta, f, g, lower, max_iter):
    """Projected Newton on the free set with a backtracking line search; stops when no step helps."""
    it = 0
    for it in range(1, max_iter + 1):
        pg = projected_gradient(theta, g, lower)
        if np.max(np.abs(pg), initial=0.0) < 1e-10:
            break
        free = (theta > lower + 1e-12) | (g < 0)
        H = hessian(theta)[np.ix_(free, free)]
        gf = g[free]
        step = np.zeros_like(theta)
        evals, evecs = np.linalg.eigh(H)
        if np.all(np.isfinite(evals)) and evals.min() > 1e-10 * max(1.0, evals.max()):
            step[free] = -evecs @ ((evecs.T @ gf) / evals)
        else:  # not positive definite: a regularised (Levenberg) step
            shift = abs(min(evals.min(), 0.0)) + 1e-6 * max(1.0, np.abs(evals).max())
            step[free] = -evecs @ ((evecs.T @ gf) / (evals + shift))
        improved = False
        t = 1.0
        for _ in range(30):
            trial = np.maximum(theta + t * step, lower)
            ft, gt = value_and_grad(trial)
            if np.isfinite(ft) and ft < f:
                improved = True
                break
            t *= 0.5
        if not improved:
            break
        theta, f, g = trial, ft, gt
    return theta, f, g, it
