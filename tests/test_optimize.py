"""The optimiser on closed forms: BFGS on quadratics, the bounded driver on and off the bound, a saddle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlmm.optimize import BFGSState, Control, bfgs_start, bfgs_steps, minimize_theta, projected_gradient

A = np.array([[3.0, 1.0], [1.0, 2.0]])
ONES = jnp.ones(2)


def _quadratic(theta, center):
    d = theta - center
    return 0.5 * d @ A @ d


@jax.jit
def _quadratic_value_and_grad(theta, center):
    return jax.value_and_grad(_quadratic)(theta, center)


@jax.jit
def _quadratic_steps(state: BFGSState, center, budget) -> BFGSState:
    return bfgs_steps(jax.value_and_grad(lambda t: _quadratic(t, center)), state, budget, ONES, 1e-10)


def test_bfgs_reaches_the_minimum_of_a_quadratic_and_carries_its_state():
    center = jnp.array([0.7, -1.3])
    whole = _quadratic_steps(bfgs_start(jnp.array([3.0, 2.0]), ONES), center, 50)
    np.testing.assert_allclose(whole.theta, [0.7, -1.3], atol=1e-9)
    assert bool(whole.done) and int(whole.steps) < 20
    # the same descent split over calls (as batch lanes run it) ends at the same point
    state = bfgs_start(jnp.array([3.0, 2.0]), ONES)
    for _ in range(30):
        state = _quadratic_steps(state, center, 2)
    assert isinstance(state, BFGSState) and bool(state.done)
    np.testing.assert_allclose(state.theta, whole.theta, atol=1e-12)
    # BFGS's inverse Hessian converges to A⁻¹ on a quadratic (ibid.'s finite termination)
    np.testing.assert_allclose(whole.inv_hessian, np.linalg.inv(A), rtol=1e-3, atol=1e-6)


def _driver(center, lower):
    center = jnp.asarray(center)

    def value_and_grad(theta):
        f, g = _quadratic_value_and_grad(jnp.asarray(theta), center)
        return float(f), np.asarray(g)

    def search(theta, budget, rescale):
        s = _quadratic_steps(bfgs_start(jnp.asarray(theta), ONES), center, budget)
        return np.asarray(s.theta), float(s.f), np.asarray(s.g), int(s.steps), float(0.5 * s.g @ s.inv_hessian @ s.g)

    return minimize_theta(value_and_grad, search, np.array([2.0, 2.0]), np.asarray(lower), np.ones(2), Control())


def test_interior_optimum():
    opt = _driver([0.7, 1.3], [0.0, -np.inf])
    assert opt.converged
    np.testing.assert_allclose(opt.theta, [0.7, 1.3], atol=1e-7)


def test_optimum_on_the_bound_is_found_exactly():
    """min ½(θ−c)ᵀA(θ−c) with θ₀ >= 0 and c₀ < 0: θ₀ = 0 and θ₁ = c₁ − A₁₀(0 − c₀)/A₁₁ (the KKT point)."""
    center = np.array([-0.5, 1.0])
    opt = _driver(center, [0.0, -np.inf])
    expected = np.array([0.0, center[1] - A[1, 0] * (0.0 - center[0]) / A[1, 1]])
    assert opt.converged
    np.testing.assert_allclose(opt.theta, expected, atol=1e-8)
    assert opt.theta[0] == 0.0  # on the bound, not just near it
    g = A @ (opt.theta - center)
    assert g[0] > 0 and np.max(np.abs(projected_gradient(opt.theta, g, np.array([0.0, -np.inf])))) < 1e-8


def test_a_saddle_on_the_bound_is_escaped():
    """f(θ) = (θ₀² − 1)² + θ₁²: θ₀ = 0 is a stationary point (the gradient vanishes there, as at a zero
    diagonal of Λ) with negative curvature; the minimum is at θ₀ = 1."""

    def f(theta):
        return (theta[0] ** 2 - 1.0) ** 2 + theta[1] ** 2

    vg = jax.jit(jax.value_and_grad(f))
    steps = jax.jit(lambda state, budget: bfgs_steps(jax.value_and_grad(f), state, budget, ONES, 1e-12))

    def value_and_grad(theta):
        v, g = vg(jnp.asarray(theta))
        return float(v), np.asarray(g)

    def search(theta, budget, rescale):  # a descent that cannot leave θ₀ = 0 (the gradient is 0 there)
        s = steps(bfgs_start(jnp.asarray(theta), ONES), budget)
        return np.asarray(s.theta), float(s.f), np.asarray(s.g), int(s.steps), float(0.5 * s.g @ s.inv_hessian @ s.g)

    opt = minimize_theta(value_and_grad, search, np.array([0.0, 0.5]), np.array([0.0, -np.inf]), np.ones(2), Control())
    assert opt.converged
    np.testing.assert_allclose(opt.theta, [1.0, 0.0], atol=1e-7)
    assert opt.fval == pytest.approx(0.0, abs=1e-12)
