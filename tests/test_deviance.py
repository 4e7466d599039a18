"""The blocked criterion against the textbook dense formula, and its hand-written derivatives.

The reference builds the whole ``Z`` and ``Λ`` and solves the penalised least squares problem of Bates et
al. (2015, eqs. 14-17, 34, 41) with dense matrices; its derivatives are JAX's own (through a plain
Cholesky), so they check ``deviance.spd_terms``'s custom JVP, the merged pair terms and the diagonal-Λ₂
shortcut of the blocked code independently.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from jaxlmm.crossprod import _argsort, crossproducts, sparse_Z
from jaxlmm.design import build_design
from jaxlmm.deviance import lambda_matrix, profiled_deviance, spd_terms
from jaxlmm.formula import parse_formula
from jaxlmm.optimize import difference_hessian

LOG_2PI = np.log(2 * np.pi)


def crossed_data(seed: int = 0, n: int = 150) -> pd.DataFrame:
    """Three crossed factors, a second-level factor with few levels and equal-size levels of ``a``."""
    rng = np.random.default_rng(seed)
    a = np.repeat(np.arange(25), n // 25)  # 25 levels of 6 rows: equal A11 blocks for (1 | a)
    b = rng.integers(0, 9, n)
    c = rng.integers(0, 4, n)
    x = rng.normal(size=n)
    y = 1 + 0.5 * x + rng.normal(size=25)[a] + rng.normal(size=9)[b] + 0.7 * rng.normal(size=n)
    return pd.DataFrame(
        {"y": y, "x": x, "a": [f"a{k}" for k in a], "b": [f"b{k}" for k in b], "c": [f"c{k}" for k in c]}
    )


FORMULAS = [  # 6 s each (six compiles): three run in the slow tier, to keep the default one under 4 minutes
    pytest.param("y ~ x + (1 | a) + (1 | b)", marks=pytest.mark.slow),
    pytest.param("y ~ x + (1 | a) + (1 | b) + (1 | c)", marks=pytest.mark.slow),
    "y ~ x + (1 + x | a) + (1 | b)",
    pytest.param("y ~ x + (1 | a) + (1 + x | b)", marks=pytest.mark.slow),
    "y ~ x + (1 | a/b)",
]


def dense_criterion(design, reml: bool):
    """θ ↦ the criterion with whole dense matrices (jnp, differentiable by JAX's own rules)."""
    blocks = design.structure.blocks
    Z = jnp.asarray(
        np.hstack([sparse_Z(c, z, b.n_levels).toarray() for c, z, b in zip(design.codes, design.Z, blocks)])
    )
    X, y = jnp.asarray(design.X), jnp.asarray(design.y)
    n, p = X.shape

    def criterion(theta):
        Lam = jax.scipy.linalg.block_diag(*[jnp.kron(jnp.eye(b.n_levels), lambda_matrix(theta, b)) for b in blocks])
        ZL = Z @ Lam
        M = ZL.T @ ZL + jnp.eye(ZL.shape[1])
        A = jnp.block([[M, ZL.T @ X], [X.T @ ZL, X.T @ X]])
        sol = jnp.linalg.solve(A, jnp.concatenate([ZL.T @ y, X.T @ y]))
        u, beta = sol[: ZL.shape[1]], sol[ZL.shape[1] :]
        r2 = jnp.sum((y - X @ beta - ZL @ u) ** 2) + jnp.sum(u**2)
        logdet_M = 2 * jnp.sum(jnp.log(jnp.diagonal(jnp.linalg.cholesky(M))))
        if not reml:
            return logdet_M + n * (1 + LOG_2PI + jnp.log(r2 / n))
        RX2 = X.T @ X - X.T @ ZL @ jnp.linalg.solve(M, ZL.T @ X)
        logdet_RX = 2 * jnp.sum(jnp.log(jnp.diagonal(jnp.linalg.cholesky(RX2))))
        return logdet_M + logdet_RX + (n - p) * (1 + LOG_2PI + jnp.log(r2 / (n - p)))

    return criterion


@pytest.mark.parametrize("formula", FORMULAS)
@pytest.mark.parametrize("reml", [pytest.param(False, marks=pytest.mark.slow), True])  # the ML term is a subset
def test_blocked_criterion_and_derivatives_equal_the_dense_formula(formula, reml):
    design = build_design(parse_formula(formula), crossed_data())
    cp = crossproducts(design.y, design.X, design.codes, design.Z, design.structure)
    reference = dense_criterion(design, reml)
    rng = np.random.default_rng(1)
    theta = jnp.asarray(
        rng.uniform(0.2, 1.5, design.structure.n_theta) * np.where(np.isfinite(design.structure.lower), 1.0, 0.3)
    )
    blocked = jax.jit(lambda t: profiled_deviance(t, cp, design.structure, reml))
    reference = jax.jit(reference)
    np.testing.assert_allclose(blocked(theta), reference(theta), rtol=1e-11)
    np.testing.assert_allclose(
        jax.jit(jax.grad(blocked))(theta), jax.jit(jax.grad(reference))(theta), rtol=1e-7, atol=1e-7
    )
    np.testing.assert_allclose(
        jax.jit(jax.hessian(blocked))(theta), jax.jit(jax.hessian(reference))(theta), rtol=1e-6, atol=1e-6
    )


def test_spd_terms_and_their_first_and_second_derivatives():
    rng = np.random.default_rng(2)
    A = rng.normal(size=(12, 12))
    S = jnp.asarray(A @ A.T + 12 * np.eye(12))
    B = jnp.asarray(rng.normal(size=(12, 3)))

    def plain(S, B):  # the same quantities through JAX's own Cholesky and solve
        L = jnp.linalg.cholesky(S)
        T = jax.scipy.linalg.solve_triangular(L, B, lower=True)
        return jnp.linalg.inv(S), 2 * jnp.sum(jnp.log(jnp.diagonal(L))), T.T @ T

    for got, want in zip(spd_terms(S, B), plain(S, B)):
        np.testing.assert_allclose(got, want, rtol=1e-12)

    W = jnp.asarray(rng.normal(size=(3, 3)))

    def scalar(f):
        def g(S, B):
            X, logdet, Q = f(0.5 * (S + S.T), B)
            return logdet + jnp.sum(W * Q) + jnp.sum(X[:3, :3])

        return g

    for derivative in (jax.grad, jax.hessian):
        got = jax.jit(derivative(scalar(spd_terms), argnums=(0, 1)))(S, B)
        want = jax.jit(derivative(scalar(plain), argnums=(0, 1)))(S, B)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-12)


def test_difference_hessian_matches_autodiff():
    design = build_design(parse_formula("y ~ x + (1 + x | a) + (1 | b)"), crossed_data(3))
    cp = crossproducts(design.y, design.X, design.codes, design.Z, design.structure)
    theta = np.array([0.8, 0.1, 0.4, 0.6])

    criterion = jax.jit(lambda t: profiled_deviance(t, cp, design.structure, False))
    gradient = jax.jit(jax.value_and_grad(criterion))

    def value_and_grad(t):
        f, g = gradient(jnp.asarray(t))
        return float(f), np.asarray(g)

    exact = np.asarray(jax.jit(jax.hessian(criterion))(jnp.asarray(theta)))
    np.testing.assert_allclose(
        difference_hessian(value_and_grad, theta, np.ones(4)), exact, rtol=1e-6, atol=1e-6 * np.abs(exact).max()
    )


def test_argsort_by_packed_sort_equals_stable_argsort():
    rng = np.random.default_rng(4)
    keys = rng.integers(0, 50, 10_000)  # many ties: the order among them must be the stable one
    np.testing.assert_array_equal(_argsort(keys), np.argsort(keys, kind="stable"))
    big = rng.integers(0, 2**62, 1000)  # too wide to pack: falls back to argsort
    np.testing.assert_array_equal(big[_argsort(big)], np.sort(big))
    assert _argsort(np.zeros(0, dtype=np.int64)).size == 0
