"""Minimise the profiled criterion over theta with autodiff derivatives (lme4's ``optimizeLmer``).

Two stages: BFGS with exact gradients, compiled whole (one call per fit), unconstrained because the
criterion is even in each column of Λ; then, where the descent ends on or near a bound or short of the
optimum, a projected Newton polish on the free coordinates, which lands on the optimum to ~1e-10 in the
criterion, also on the boundary where derivative-free optimisers often stop short.  Saddles on the
boundary are escaped, and L-BFGS-B is the fallback.  The optimiser knows nothing about formulas: it sees a
function of theta with its gradient, and the bounds.  Its Hessian is the central difference of the exact
gradient (2 × len(theta) gradients): one compiled function serves a whole fit, which keeps a first fit's
compile time short, and on large models it costs less than a second-order autodiff pass.

theta is optimised in scaled coordinates ``phi = theta / scale`` (``scale`` from the size of the
random-effects columns), because slopes of covariates measured in large units have tiny theta.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

BIG = 1e100  # stands in for a criterion that is not finite
START_FACTORS = (4.0, 2.0, 1.0, 0.5, 0.25, 0.125, 0.0625)  # overall scales tried for the start


@dataclass(frozen=True)
class Control:
    """Every tolerance and budget of a single fit (lme4's ``lmerControl``; MixedModels.jl's OptSummary
    settings).  θ is measured in scaled units (θ / scale, see :func:`minimize_theta`)."""

    gtol: float = 1e-4  # converged: max |projected scaled gradient| at most this, or ...
    decrement_tol: float = 1e-8  # ... a Newton step could gain at most this (½gᵀH⁻¹g)
    max_iter: int = 2000  # steps of each stage (compiled descent, L-BFGS-B, Newton polish)
    max_newton: int = 50  # Newton polish steps (at most max_iter)
    max_escapes: int = 5  # restarts from saddles on the boundary
    search_gtol: float = 1e-8  # the compiled BFGS descent stops below this max |scaled gradient|
    polish_gain: float = 1e-13  # the polish stops when a step would gain less than this × (1 + |f|)
    snap_tol: float = 1e-7  # entries this close to their bound are tried on it
    hessian_step: float = 1e-4  # central differences of the gradient, in scaled units


@dataclass(frozen=True)
class BatchControl:
    """Tolerances and budgets of batched refits (:func:`jaxlmm.batch.run_lanes`)."""

    budget: int = 12  # BFGS steps per lane per compiled call
    max_iter: int = 300  # a lane still not done after this many steps is a failure
    gtol: float = 1e-6  # a lane is done below this max |scaled gradient| (or when f stops changing)
    converged_gtol: float = 1e-3  # ... and counts as converged below this one


@dataclass(frozen=True)
class OptSummary:
    """What the optimiser did, and with which settings (MixedModels.jl's OptSummary)."""

    theta: np.ndarray
    fval: float
    n_evals: int
    n_newton: int
    converged: bool
    message: str
    projected_gradient: float
    optimizer: str
    control: Control


class BFGSState(NamedTuple):
    """The state of :func:`bfgs_steps` (a pytree: batch lanes carry it between compiled calls)."""

    theta: jnp.ndarray
    f: jnp.ndarray  # criterion at theta; inf: theta not evaluated yet (g is then 0)
    g: jnp.ndarray  # its gradient
    inv_hessian: jnp.ndarray  # B, BFGS's estimate of the inverse Hessian
    step_length: jnp.ndarray  # the next trial step's length (1 after an accepted step)
    steps: jnp.ndarray  # steps taken (each one evaluation)
    fresh: jnp.ndarray  # B is still the diagonal guess, to be rescaled at the first curvature pair
    done: jnp.ndarray


def projected_gradient(theta: np.ndarray, grad: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """The gradient with components that push into an active lower bound set to zero."""
    at_bound = (theta <= lower + 1e-12) & (grad > 0)
    return np.where(at_bound, 0.0, grad)


def minimize_theta(
    value_and_grad: Callable[[np.ndarray], tuple[float, np.ndarray]],
    search: Callable[[np.ndarray, int, bool], tuple[np.ndarray, float, np.ndarray, int, float]],
    theta0: np.ndarray,
    lower: np.ndarray,
    scale: np.ndarray,
    control: Control = Control(),
) -> OptSummary:
    """Minimise f(theta) subject to theta >= lower, from theta0.

    ``search(theta, budget, rescale)`` runs the whole unconstrained descent in one compiled call (BFGS
    from a diagonal guess, :func:`bfgs_steps`; from :func:`best_scaled` of theta when ``rescale``, which
    the first descent asks for) and returns (theta, f, g, steps, ½gᵀBg) with theta's Λ columns flipped
    to θ_ii >= 0: the criterion is even in each column, so the bounds need no other care there.  A
    projected Newton polish then lands on the optimum, on the bound where it is there.  The polish is
    skipped when the descent ended clear of the bounds and BFGS's own curvature estimate says a Newton
    step would gain less than the polish's stopping threshold.  Should the descent fail, L-BFGS-B
    (scipy, with the bounds) is the fallback.

    Converged means max |projected gradient| <= ``control.gtol`` in the scaled coordinates, or a Newton
    decrement ``½gᵀH⁻¹g`` <= ``control.decrement_tol`` on the free coordinates (H by differences, or
    BFGS's estimate where the polish was skipped): for a criterion of size 1e5 the gradient cannot get
    below ~1e-4 in floating point even at the optimum.  ``control.max_iter`` bounds the steps of each
    stage (descent, L-BFGS-B, Newton).  The summary names the stages that ran.
    """
    n_evals = 0
    stages = ["BFGS (compiled, autodiff gradient)"]
    max_newton = min(control.max_newton, control.max_iter)
    hessian = _remember_last(lambda theta: difference_hessian(value_and_grad, theta, scale, control.hessian_step))

    def descend(start, rescale=False):
        """(theta, f, g, Newton steps, BFGS's decrement estimate where the polish was skipped else None)."""
        nonlocal n_evals
        theta, f, g, steps, estimate = search(start, control.max_iter, rescale)
        n_evals += steps
        if np.any(theta < lower):
            theta = np.maximum(theta, lower)
            f, g = value_and_grad(theta)
        if not (np.isfinite(f) and np.all(np.isfinite(g))):
            theta, estimate = lbfgsb(start), np.inf
            f, g = value_and_grad(theta)
        if np.all(theta - lower > control.snap_tol * scale) and estimate <= control.polish_gain * (1.0 + abs(f)):
            return theta, f, g, 0, estimate
        theta, f, g = _snap_to_bounds(value_and_grad, theta, f, g, lower, scale, control.snap_tol)
        return (*polish(theta, f, g), None)

    def polish(theta, f, g):
        if "projected Newton" not in stages[-1]:
            stages.append("projected Newton (difference Hessian)")
        return _newton_polish(value_and_grad, hessian, theta, f, g, lower, max_newton, control.polish_gain)

    def optimal(theta, g, estimate) -> bool:
        if projected_scaled_gradient(theta, g) <= control.gtol:
            return True
        if estimate is not None:
            return estimate <= control.decrement_tol
        return newton_decrement(hessian, theta, g, lower) <= control.decrement_tol

    def projected_scaled_gradient(theta, g) -> float:
        return float(np.max(np.abs(projected_gradient(theta, g, lower) * scale), initial=0.0))

    def fg_phi(phi):
        nonlocal n_evals
        n_evals += 1
        f, g = value_and_grad(phi * scale)
        if not np.isfinite(f) or not np.all(np.isfinite(g)):
            return BIG, np.zeros_like(phi)
        return f, g * scale

    def lbfgsb(start):
        import scipy.optimize  # only on this fallback path (it takes a fifth of a second to import)

        stages.append("L-BFGS-B (fallback)")
        bounds = [(lo / s if np.isfinite(lo) else None, None) for lo, s in zip(lower, scale)]
        res = scipy.optimize.minimize(
            fg_phi,
            start / scale,
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": control.max_iter, "ftol": 1e-15, "gtol": 1e-10, "maxcor": 20},
        )
        return np.maximum(res.x * scale, lower)

    theta, f, g, n_newton, estimate = descend(theta0, rescale=True)
    for _ in range(control.max_escapes):
        escape = _escape_saddle(value_and_grad, hessian, theta, f, lower, scale)
        if escape is None:
            break
        theta2, f2, g2, k, estimate2 = descend(escape)
        n_newton += k
        if not f2 < f:
            break
        theta, f, g, estimate = theta2, f2, g2, estimate2
    if not optimal(theta, g, estimate):  # last resort: the bounded quasi-Newton method from the start
        theta2 = lbfgsb(theta0)
        f2, g2 = value_and_grad(theta2)
        theta2, f2, g2, k = polish(theta2, f2, g2)
        n_newton += k
        if f2 < f:
            theta, f, g, estimate = theta2, f2, g2, None
    pg = projected_scaled_gradient(theta, g)
    converged = bool(np.isfinite(f)) and optimal(theta, g, estimate)
    message = "converged" if converged else f"not converged: max|projected gradient| = {pg:.3g}"
    return OptSummary(theta, float(f), n_evals, n_newton, converged, message, pg, " + ".join(stages), control)


def difference_hessian(
    value_and_grad, theta: np.ndarray, scale: np.ndarray, step: float = Control.hessian_step
) -> np.ndarray:
    """The Hessian by central differences of the exact gradient, steps ``step × scale``, symmetrised.

    Its error, O(step²) relative, is far below what the Newton steps and the convergence test need.
    """
    columns = []
    for i, h in enumerate(step * scale):
        e = np.zeros_like(theta)
        e[i] = h
        columns.append((value_and_grad(theta + e)[1] - value_and_grad(theta - e)[1]) / (2.0 * h))
    H = np.stack(columns, axis=1)
    return 0.5 * (H + H.T)


def _remember_last(hessian):
    """``hessian`` that returns its last result again when asked at the same theta (the polish and the
    convergence test often ask twice; on large models one Hessian costs a second)."""
    last = {}

    def cached(theta):
        key = np.asarray(theta, dtype=float).tobytes()
        if key not in last:
            last.clear()
            last[key] = hessian(theta)
        return last[key]

    return cached


def best_scaled(criterion: Callable, theta: jnp.ndarray) -> jnp.ndarray:
    """``c · theta`` for the c in ``START_FACTORS`` with the lowest criterion; theta if none is finite.

    Pure JAX (jit this).  lme4 starts at Λ = I; the relative scale of the random effects is often far
    from 1, and on large models a descent from a start of the right overall size takes half the steps.
    """
    factors = jnp.asarray(START_FACTORS)
    values = jax.lax.map(lambda c: criterion(c * theta), factors)
    values = jnp.where(jnp.isfinite(values), values, jnp.inf)
    return jnp.where(jnp.isfinite(jnp.min(values)), factors[jnp.argmin(values)] * theta, theta)


def _snap_to_bounds(value_and_grad, theta, f, g, lower, scale, tol: float):
    """Put entries within ``tol`` × scale of their bound on it, when that does not raise the criterion.

    The unconstrained descent approaches a boundary optimum (a variance of 0) only asymptotically.
    """
    near = np.isfinite(lower) & (theta - lower < tol * scale) & (theta != lower)
    if not near.any():
        return theta, f, g
    trial = np.where(near, lower, theta)
    ft, gt = value_and_grad(trial)
    if np.isfinite(ft) and ft <= f + 1e-12 * (1.0 + abs(f)):
        return trial, ft, gt
    return theta, f, g


def newton_decrement(hessian, theta, g, lower) -> float:
    """``½ gᵀH⁻¹g`` on the free coordinates: how much a Newton step could still gain (inf if H is not PD).

    A scale-free convergence test for large problems, where the gradient of a criterion of size 1e5
    cannot get below about 1e-4 in floating point even at the optimum.
    """
    free = (theta > lower + 1e-12) | (g < 0)
    if not free.any():
        return 0.0
    H = hessian(theta)[np.ix_(free, free)]
    evals, evecs = np.linalg.eigh(H)
    if not (np.all(np.isfinite(evals)) and evals.min() > 0):
        return float("inf")
    return float(0.5 * np.sum((evecs.T @ g[free]) ** 2 / evals))


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


def _newton_polish(value_and_grad, hessian, theta, f, g, lower, max_iter, min_gain):
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
        if -0.5 * (gf @ step[free]) < min_gain * (1.0 + abs(f)):  # nothing left to gain at this precision
            break
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


def positive_inverse(H: np.ndarray) -> np.ndarray:
    """``|H|⁻¹`` for (..., k, k) symmetric H: eigenvalues replaced by their absolute values (floored)."""
    e, V = np.linalg.eigh(H)
    e = np.abs(e)
    e = np.maximum(e, 1e-8 * np.maximum(e.max(axis=-1, keepdims=True), 1e-300))
    return (V / e[..., None, :]) @ np.swapaxes(V, -1, -2)


def bfgs_start(theta: jnp.ndarray, inv_hessian: jnp.ndarray) -> BFGSState:
    """A :class:`BFGSState` at theta, not yet evaluated, with ``B = inv_hessian``; given a vector ``v``
    instead (a guess of the inverse Hessian's diagonal, up to a factor), ``B = diag(v)``, rescaled by the
    first steps (see :func:`bfgs_steps`)."""
    guess = inv_hessian.ndim == theta.ndim
    return BFGSState(
        theta,
        jnp.asarray(jnp.inf, dtype=theta.dtype),
        jnp.zeros_like(theta),
        jnp.diag(inv_hessian) if guess else inv_hessian,
        jnp.ones((), dtype=theta.dtype),
        jnp.zeros((), dtype=jnp.int32),
        jnp.asarray(guess),
        jnp.asarray(False),
    )


def small_gradient(g: jnp.ndarray, scale: jnp.ndarray, tol) -> jnp.ndarray:
    """max |g · scale| < tol: the gradient in the scaled coordinates θ / scale is small."""
    return jnp.max(jnp.abs(g * scale)) < tol


def bfgs_steps(value_and_grad, state: BFGSState, budget, scale, gtol) -> BFGSState:
    """Up to ``budget`` more BFGS steps minimising ``value_and_grad``'s function, pure JAX (jit/vmap this).

    Each step costs one criterion-and-gradient evaluation: ``d = −B g``, Armijo backtracking (a rejected
    trial quarters the step and counts as a step), then the BFGS update of ``B`` (Nocedal & Wright 2006,
    eq. 6.17).  ``f = inf`` (with ``g = 0``) means theta is not evaluated yet: the first step evaluates it
    (so the criterion appears once in the compiled loop, and a batch lane carries its state between
    calls).  Started from a good Hessian (for refits, the fitted model's, which every replicate of the same
    design shares closely) it converges in about as many steps as Newton's method.  While ``fresh`` (B
    still a diagonal guess D, :func:`bfgs_start`), the first evaluation sets ``B = γD``, γ making the first
    step half the size of theta, and the first curvature pair replaces B by ``(sᵀy / yᵀDy) D`` before
    the first update (ibid., eq. 6.20, preconditioned).  Done when the scaled gradient is below ``gtol``,
    a trial point changes the criterion by at most 1e-12 relative (accepted or not), or the step length
    collapses.
    """
    eye = jnp.eye(state.theta.shape[0])

    def step(s: BFGSState) -> BFGSState:
        d = -s.inv_hessian @ s.g
        d = jnp.where(s.g @ d < 0, d, -s.g * scale**2)  # not a descent direction: scaled steepest descent
        slope = s.g @ d
        trial = s.theta + s.step_length * d
        ft, gt = value_and_grad(trial)
        accept = jnp.isfinite(ft) & jnp.all(jnp.isfinite(gt)) & (ft <= s.f + 1e-4 * s.step_length * slope)
        dx, dg = trial - s.theta, gt - s.g
        sy = dx @ dg
        curved = accept & (sy > 1e-14) & jnp.isfinite(s.f)
        B = s.inv_hessian
        size = jnp.maximum(jnp.max(jnp.abs(s.theta / scale)), 0.1)
        first_step = 0.5 * size / jnp.maximum(jnp.max(jnp.abs(B @ gt / scale)), 1e-300) * B
        B = jnp.where(s.fresh & accept & ~jnp.isfinite(s.f), first_step, B)
        B = jnp.where(s.fresh & curved, sy / (dg @ B @ dg) * B, B)
        rho = 1.0 / jnp.where(sy > 1e-14, sy, 1.0)
        updated = (eye - rho * jnp.outer(dx, dg)) @ B @ (eye - rho * jnp.outer(dg, dx)) + rho * jnp.outer(dx, dx)
        B = jnp.where(curved, updated, B)
        # done when the criterion no longer changes, also on a rejected trial: at the optimum every Armijo
        # trial fails by rounding, and quartering the step down to 1e-10 would cost ~16 more evaluations
        small_change = jnp.isfinite(s.f) & jnp.isfinite(ft) & (jnp.abs(ft - s.f) <= 1e-12 * (1.0 + jnp.abs(s.f)))
        theta, f, g = (jnp.where(accept, new, old) for new, old in ((trial, s.theta), (ft, s.f), (gt, s.g)))
        t = jnp.where(accept, 1.0, s.step_length * 0.25)
        done = small_gradient(g, scale, gtol) | small_change | (t < 1e-10)
        return BFGSState(theta, f, g, B, t, s.steps + 1, s.fresh & ~curved, done)

    stop = state.steps + budget
    state = state._replace(done=jnp.isfinite(state.f) & small_gradient(state.g, scale, gtol))
    return jax.lax.while_loop(lambda s: (~s.done) & (s.steps < stop), step, state)
