"""Penalised iteratively reweighted least squares (PIRLS): the conditional modes of a GLMM, pure JAX.

For fixed (θ, β) the spherical random effects ``u`` minimise the penalised deviance (Bates et al. 2015,
§ on GLMMs; lme4's ``pwrssUpdate``)

    pdev(u) = Σᵢ devresidᵢ(yᵢ, μᵢ) + ‖u‖²,   η = offset + Xβ + ZΛu,   μ = g⁻¹(η).

With a canonical link ``½∇pdev = u − ΛᵀZᵀ wt(y − μ)`` and ``½∇²pdev = H = ΛᵀZᵀWZΛ + I`` with
``W = wt·V(μ)``: PIRLS is Newton's method, with lme4's step halving when a step raises pdev.

H is factored block-wise as the LMM's ``M`` is (:mod:`jaxlmm.deviance`): the first random-effects block
(the factor with the most levels) is block-diagonal, ``G₁`` blocks of ``q₁ × q₁``, factored element-wise;
the other blocks (``p₂ = Σ_{k≥2} G_k q_k`` columns) are held dense, with their Schur complement
``S = H₂₂ − H₂₁H₁₁⁻¹H₁₂ = L₂L₂ᵀ``.  A single grouping factor therefore costs O(n q₁²) per iteration;
crossed factors cost O(n q² + p₂³), which :data:`MAX_DENSE` bounds.

Everything here is a pure function of arrays with static shapes: ``jit`` and ``vmap`` apply (the loop
is a ``while_loop`` whose lanes stop one by one; step halving is masked arithmetic).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .design import Structure
from .deviance import cholesky_small, lambda_matrix
from .family import Family

MAX_DENSE = 4000  # columns of the dense (non-first) random-effects blocks PIRLS accepts
MAX_PIRLS = 60  # Newton steps per mode search
MAX_HALVINGS = 20  # lme4's maxstephalfit
PIRLS_TOL = 1e-10  # stop when the Newton decrement gᵀH⁻¹g of pdev falls below this


class GlmmData(NamedTuple):
    """The arrays of one GLMM fit (a pytree; batch lanes vary ``y``)."""

    y: jnp.ndarray  # (n,) proportion of successes (binomial) or count (Poisson)
    wt: jnp.ndarray  # (n,) prior weights: the binomial's number of trials
    offset: jnp.ndarray  # (n,)
    X: jnp.ndarray  # (n, p)
    Z: tuple  # per block (n, q_k)
    codes: tuple  # per block (n,) level index


class HFactor(NamedTuple):
    """The blocked Cholesky factor of ``H = ΛᵀZᵀWZΛ + I``: ``[[L₁, 0], [Vᵀ, L₂]]``."""

    L1: jnp.ndarray  # (G₁, q₁, q₁) per-level Cholesky factors of H₁₁
    V: jnp.ndarray  # (G₁, q₁, p₂) L₁⁻¹H₁₂
    L2: jnp.ndarray  # (p₂, p₂) Cholesky factor of the Schur complement
    logdet: jnp.ndarray  # log|H| (lme4's ldL2)


def u_sizes(structure: Structure) -> list[int]:
    return [b.n_levels * b.q for b in structure.blocks]


def split_u(u: jnp.ndarray, structure: Structure) -> list[jnp.ndarray]:
    """The flat u (level-major within each block, blocks in order) as per-block (G_k, q_k) arrays."""
    out, start = [], 0
    for b in structure.blocks:
        out.append(u[..., start : start + b.n_levels * b.q].reshape(*u.shape[:-1], b.n_levels, b.q))
        start += b.n_levels * b.q
    return out


def scaled_z(theta: jnp.ndarray, data: GlmmData, structure: Structure) -> list[jnp.ndarray]:
    """Per block the rows of ZΛ, (n, q_k): row i's random part is ``ZΛ[i] · u[level(i)]``."""
    return [Z @ lambda_matrix(theta, b) for Z, b in zip(data.Z, structure.blocks)]


def random_part(A: list[jnp.ndarray], u: jnp.ndarray, data: GlmmData, structure: Structure) -> jnp.ndarray:
    """ZΛu, (n,)."""
    return sum(jnp.sum(a * uk[c], axis=-1) for a, uk, c in zip(A, split_u(u, structure), data.codes))


def _rest_columns(A: list[jnp.ndarray], data: GlmmData, structure: Structure):
    """Values and column indices (n, r) of the rows of ZΛ in the dense blocks (all but the first)."""
    vals, idx, start = [], [], 0
    for a, c, b in zip(A[1:], data.codes[1:], structure.blocks[1:]):
        vals.append(a)
        idx.append(start + c[:, None] * b.q + jnp.arange(b.q)[None, :])
        start += b.n_levels * b.q
    return jnp.concatenate(vals, axis=1), jnp.concatenate(idx, axis=1), start


def forward_small(L: jnp.ndarray, B: jnp.ndarray) -> jnp.ndarray:
    """L⁻¹B for per-level lower-triangular L (G, q, q) and B (G, q, m), unrolled over q."""
    q = L.shape[-1]
    rows = []
    for i in range(q):
        acc = B[:, i, :]
        for k in range(i):
            acc = acc - L[:, i, k, None] * rows[k]
        rows.append(acc / L[:, i, i, None])
    return jnp.stack(rows, axis=1)


def backward_small(L: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """L⁻ᵀb for per-level lower-triangular L (G, q, q) and b (G, q), unrolled over q."""
    q = L.shape[-1]
    x = [None] * q
    for i in reversed(range(q)):
        acc = b[:, i]
        for k in range(i + 1, q):
            acc = acc - L[:, k, i] * x[k]
        x[i] = acc / L[:, i, i]
    return jnp.stack(x, axis=1)


def factor_h(A: list[jnp.ndarray], w: jnp.ndarray, data: GlmmData, structure: Structure) -> HFactor:
    """The blocked Cholesky factor of ``H = ΛᵀZᵀ diag(w) ZΛ + I``."""
    b1 = structure.blocks[0]
    A1, c1 = A[0], data.codes[0]
    outer = w[:, None, None] * A1[:, :, None] * A1[:, None, :]
    D = jax.ops.segment_sum(outer, c1, b1.n_levels) + jnp.eye(b1.q)
    L1 = cholesky_small(D)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L1, axis1=-2, axis2=-1)))
    if len(structure.blocks) == 1:
        return HFactor(L1, jnp.zeros((b1.n_levels, b1.q, 0)), jnp.zeros((0, 0)), logdet)
    R, idx, p2 = _rest_columns(A, data, structure)
    wR = w[:, None] * R
    H22 = jnp.zeros((p2, p2)).at[idx[:, :, None], idx[:, None, :]].add(wR[:, :, None] * R[:, None, :]) + jnp.eye(p2)
    H12 = (
        jnp.zeros((b1.n_levels, b1.q, p2))
        .at[c1[:, None, None], jnp.arange(b1.q)[None, :, None], idx[:, None, :]]
        .add(A1[:, :, None] * wR[:, None, :])
    )
    V = forward_small(L1, H12)
    L2 = jnp.linalg.cholesky(H22 - jnp.einsum("gqa,gqb->ab", V, V))
    logdet = logdet + 2.0 * jnp.sum(jnp.log(jnp.diagonal(L2)))
    return HFactor(L1, V, L2, logdet)


def solve_h(f: HFactor, g: jnp.ndarray, structure: Structure) -> jnp.ndarray:
    """H⁻¹g for a flat g (u's layout), by forward and back substitution through the blocked factor."""
    b1 = structure.blocks[0]
    n1 = b1.n_levels * b1.q
    y1 = forward_small(f.L1, g[:n1].reshape(b1.n_levels, b1.q)[:, :, None])[:, :, 0]
    if len(structure.blocks) == 1:
        return backward_small(f.L1, y1).reshape(-1)
    y2 = jax.scipy.linalg.solve_triangular(f.L2, g[n1:] - jnp.einsum("gqa,gq->a", f.V, y1), lower=True)
    d2 = jax.scipy.linalg.solve_triangular(f.L2.T, y2, lower=False)
    d1 = backward_small(f.L1, y1 - jnp.einsum("gqa,a->gq", f.V, d2))
    return jnp.concatenate([d1.reshape(-1), d2])


def half_gradient(A, u, r, data: GlmmData, structure: Structure) -> jnp.ndarray:
    """½∇pdev = u − ΛᵀZᵀr (flat), r = wt(y − μ)."""
    parts = [
        jax.ops.segment_sum(a * r[:, None], c, b.n_levels).reshape(-1)
        for a, c, b in zip(A, data.codes, structure.blocks)
    ]
    return u - jnp.concatenate(parts)


class NewtonPieces(NamedTuple):
    """What one PIRLS step computes at u."""

    eta: jnp.ndarray
    grad: jnp.ndarray  # ½∇pdev
    factor: HFactor  # of ½∇²pdev
    step: jnp.ndarray  # the Newton step H⁻¹ ½∇pdev


def newton_pieces(A, eta_fixed, u, data: GlmmData, structure: Structure, family: Family) -> NewtonPieces:
    eta = eta_fixed + random_part(A, u, data, structure)
    mu = family.mean(eta)
    grad = half_gradient(A, u, data.wt * (data.y - mu), data, structure)
    factor = factor_h(A, data.wt * family.variance(mu), data, structure)
    return NewtonPieces(eta, grad, factor, solve_h(factor, grad, structure))


def penalised_deviance(A, eta_fixed, u, data: GlmmData, structure: Structure, family: Family) -> jnp.ndarray:
    """pdev(u) less the saturated constant (which depends on y alone)."""
    eta = eta_fixed + random_part(A, u, data, structure)
    return jnp.sum(family.deviance_kernel(data.y, data.wt, eta)) + jnp.sum(u**2)


class PirlsState(NamedTuple):
    u: jnp.ndarray
    pdev: jnp.ndarray
    iterations: jnp.ndarray
    done: jnp.ndarray


def conditional_modes(
    theta, beta, data: GlmmData, structure: Structure, family: Family, u0: jnp.ndarray | None = None
) -> PirlsState:
    """The mode u*(θ, β) of the penalised deviance by PIRLS (Newton steps with step halving).

    A lane stops after a Newton step whose decrement ``gᵀH⁻¹g`` was below :data:`PIRLS_TOL` (the
    decrement left is then of order its square), when a step no longer lowers pdev, or after
    :data:`MAX_PIRLS` steps (``done`` False then).  A step that raises pdev (or makes it NaN) is halved up
    to :data:`MAX_HALVINGS` times, as lme4's ``pwrssUpdate`` does; pdev never increases.
    """
    A = scaled_z(theta, data, structure)
    eta_fixed = data.offset + data.X @ beta
    u0 = jnp.zeros(sum(u_sizes(structure))) if u0 is None else u0

    def pdev(u):
        value = penalised_deviance(A, eta_fixed, u, data, structure, family)
        return jnp.where(jnp.isfinite(value), value, jnp.inf)

    def step(s: PirlsState) -> PirlsState:
        pieces = newton_pieces(A, eta_fixed, s.u, data, structure, family)
        decrement = pieces.grad @ pieces.step

        def halve(c):
            t, _, k = c
            return t * 0.5, pdev(s.u - 0.5 * t * pieces.step), k + 1

        t, new_pdev, _ = jax.lax.while_loop(
            lambda c: (c[1] > s.pdev) & (c[2] < MAX_HALVINGS), halve, (1.0, pdev(s.u - pieces.step), 0)
        )
        improved = new_pdev <= s.pdev
        u = jnp.where(improved, s.u - t * pieces.step, s.u)
        # a full step of decrement d leaves a decrement of O(d²): done after it
        done = (decrement < PIRLS_TOL) | ~improved
        return PirlsState(u, jnp.where(improved, new_pdev, s.pdev), s.iterations + 1, done)

    start = PirlsState(u0, pdev(u0), jnp.zeros((), jnp.int32), jnp.asarray(False))
    return jax.lax.while_loop(lambda s: ~s.done & (s.iterations < MAX_PIRLS), step, start)
