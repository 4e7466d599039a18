"""The profiled deviance and REML criterion as pure ``jax.numpy`` functions of theta.

Bates et al. (2015), *Fitting Linear Mixed-Effects Models Using lme4*, J. Stat. Softw. 67(1), §3:
with ``M = ΛᵀZᵀZΛ + I`` and the Schur complement ``S = [X y]ᵀ[X y] − [X y]ᵀZΛ M⁻¹ ΛᵀZᵀ[X y]``
factored as ``S = L_XY L_XYᵀ`` (lower, last row ``[r_yᵀ, r]``),

    ML:    d(θ)   = log|M| + n (1 + log(2π r²/n))
    REML:  d_R(θ) = log|M| + log|R_X|² + (n−p)(1 + log(2π r²/(n−p))),

``r²`` being the penalised residual sum of squares.  ``M`` is eliminated block by block
(MixedModels.jl): block 1 is block-diagonal, so with ``W₁ = Λ₁ M₁⁻¹ Λ₁ᵀ`` per level

    S₂₂ = Λ₂ᵀ (Z₂ᵀZ₂ − Z₂ᵀZ₁ W₁ Z₁ᵀZ₂) Λ₂ + I              (dense, Cholesky L₂)
    S   = A_XY − Σⱼ (L₁ⱼ⁻¹Λ₁ᵀA₁XYⱼ)ᵀ(…) − TᵀT,  T = L₂⁻¹ Λ₂ᵀ (A₂XY − Z₂ᵀZ₁ W₁ A₁XY).

Tiny per-level blocks (q ≤ 3 in most models) are factored by unrolled element-wise arithmetic on
(G,)-vectors, which is much faster than batched LAPACK calls under ``vmap`` on CPUs.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .crossprod import CrossProducts, block_offsets
from .design import ReBlock, Structure

LOG_2PI = math.log(2 * math.pi)
UNROLL_MAX = 8  # matrices up to this size are factored by unrolled arithmetic


class Factor(NamedTuple):
    """The blocked Cholesky factor at one theta."""

    logdet_M: jnp.ndarray  # log|ΛᵀZᵀZΛ + I|
    L1: jnp.ndarray  # (G, q, q)  Cholesky of each M₁ⱼ
    V1: jnp.ndarray  # (G, q, q)  L₁ⱼ⁻¹ Λ₁ᵀ, so W₁ⱼ = V₁ⱼᵀV₁ⱼ
    L2: jnp.ndarray  # (p₂, p₂)   Cholesky of S₂₂
    LXY: jnp.ndarray  # (p+1, p+1) Cholesky of the Schur complement of [X y]


def lambda_matrix(theta: jnp.ndarray, block: ReBlock) -> jnp.ndarray:
    """A block's q × q relative covariance factor Λ from theta (zeros where the template says -1).

    Built from static indices (no gather), which keeps its derivatives cheap under ``vmap``.
    """
    zero = jnp.zeros_like(theta[..., 0])
    return jnp.stack([jnp.stack([theta[..., t] if t >= 0 else zero for t in row], -1) for row in block.theta_index], -2)


def _sum(terms, like):
    """Sum of an iterable of arrays; zeros shaped like ``like`` when it is empty."""
    total = None
    for t in terms:
        total = t if total is None else total + t
    return jnp.zeros_like(like) if total is None else total


def _cholesky_entries(M):
    """Cholesky of a small SPD matrix held as nested lists of arrays (lower triangle used)."""
    q = len(M)
    L = [[None] * q for _ in range(q)]
    for j in range(q):
        L[j][j] = jnp.sqrt(M[j][j] - _sum((L[j][k] ** 2 for k in range(j)), M[j][j]))
        for i in range(j + 1, q):
            L[i][j] = (M[i][j] - _sum((L[i][k] * L[j][k] for k in range(j)), M[i][j])) / L[j][j]
    return L


def _stack_lower(L, like):
    q = len(L)
    zero = jnp.zeros_like(like)
    return jnp.stack([jnp.stack([L[i][j] if j <= i else zero for j in range(q)], -1) for i in range(q)], -2)


def cholesky_small(M: jnp.ndarray) -> jnp.ndarray:
    """Cholesky factors of a stack of small SPD matrices (..., q, q), unrolled over q."""
    q = M.shape[-1]
    L = _cholesky_entries([[M[..., i, j] for j in range(q)] for i in range(q)])
    return _stack_lower(L, M[..., 0, 0])


def first_block(theta: jnp.ndarray, block: ReBlock, A11: jnp.ndarray, A1XY: jnp.ndarray):
    """Block 1 of the factor, element-wise over its q × q per-level blocks (no small matmuls).

    Returns ``L₁`` (Cholesky of ``M₁ⱼ = Λ₁ᵀA₁₁ⱼΛ₁ + I``), ``V₁ = L₁⁻¹Λ₁ᵀ``, ``U₁ = V₁A₁XY`` and
    ``log|M₁|``; Λ₁'s structural zeros are skipped at trace time.
    """
    q = block.q
    lam = [[theta[..., t] if t >= 0 else None for t in row] for row in block.theta_index]  # lam[r][c]
    g0 = A11[..., 0, 0]
    AL = [
        [_sum((A11[..., r, s] * lam[s][j] for s in range(q) if lam[s][j] is not None), g0) for j in range(q)]
        for r in range(q)
    ]  # A₁₁Λ₁
    M = [
        [
            _sum((lam[r][i] * AL[r][j] for r in range(q) if lam[r][i] is not None), g0) + (1.0 if i == j else 0.0)
            for j in range(q)
        ]
        for i in range(q)
    ]
    L = _cholesky_entries(M)
    V = [[None] * q for _ in range(q)]
    for c in range(q):  # forward substitution for each column of Λ₁ᵀ
        for i in range(q):
            rhs = lam[c][i] if lam[c][i] is not None else 0.0
            V[i][c] = (rhs - _sum((L[i][k] * V[k][c] for k in range(i)), g0)) / L[i][i]
    U = jnp.stack(
        [_sum((V[k][r][..., None] * A1XY[..., r, :] for r in range(q)), A1XY[..., 0, :]) for k in range(q)], -2
    )
    logdet = 2.0 * _sum((jnp.sum(jnp.log(L[i][i]), -1) for i in range(q)), g0[..., 0])
    V1 = jnp.stack([jnp.stack([V[i][c] for c in range(q)], -1) for i in range(q)], -2)
    return _stack_lower(L, g0), V1, U, logdet


def cholesky(S: jnp.ndarray) -> jnp.ndarray:
    """Cholesky factor: unrolled for small matrices (cheap derivatives under ``vmap``), LAPACK otherwise."""
    return cholesky_small(S) if S.shape[-1] <= UNROLL_MAX else jnp.linalg.cholesky(S)


def solve_lower_small(L: jnp.ndarray, B: jnp.ndarray) -> jnp.ndarray:
    """``L⁻¹ B`` for stacks of small lower-triangular L (..., q, q) and B (..., q, m), unrolled."""
    q = L.shape[-1]
    rows = []
    for i in range(q):
        r = B[..., i, :]
        for k in range(i):
            r = r - L[..., i, k, None] * rows[k]
        rows.append(r / L[..., i, i, None])
    return jnp.stack(rows, -2)


def apply_lambda_rest(theta: jnp.ndarray, structure: Structure, M: jnp.ndarray, transposed: bool = True) -> jnp.ndarray:
    """``Λ₂ᵀ M`` (or ``Λ₂ M``) for M with p₂ rows, Λ₂ = blockdiag over the rest blocks of I_G ⊗ Λ_k.

    When every rest block is a scalar term, Λ₂ is diagonal and this is one row scaling.
    """
    if all(b.q == 1 for b in structure.blocks[1:]):
        return rest_scale(theta, structure).reshape((-1,) + (1,) * (M.ndim - 1)) * M
    offsets = block_offsets(structure)
    spec = "rs,gr...->gs..." if transposed else "rs,gs...->gr..."
    pieces = []
    for b, start, stop in zip(structure.blocks[1:], offsets, offsets[1:]):
        Mb = M[start:stop].reshape((b.n_levels, b.q) + M.shape[1:])
        pieces.append(jnp.einsum(spec, lambda_matrix(theta, b), Mb).reshape((stop - start,) + M.shape[1:]))
    return jnp.concatenate(pieces, axis=0)


@jax.custom_jvp
def spd_terms(S: jnp.ndarray, B: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """``(S⁻¹, log|S|, BᵀS⁻¹B)`` for SPD S (p₂ × p₂) and B (p₂ × k), from one Cholesky factor of S.

    The derivative is written out (``dS⁻¹ = −S⁻¹dS S⁻¹``, ``d log|S| = tr(S⁻¹dS)``,
    ``d(BᵀS⁻¹B) = dBᵀS⁻¹B + BᵀS⁻¹dB − BᵀS⁻¹dS S⁻¹B``): reverse mode then costs one explicit inverse
    instead of the transposed Cholesky (three times as much on a dense 1,000² block), and second
    derivatives are matrix products.  Where S⁻¹ is not used (a criterion value) the compiler drops it.
    """
    L = jax.lax.linalg.cholesky(S, symmetrize_input=False)  # S is symmetric by construction
    T = jax.scipy.linalg.solve_triangular(L, B, lower=True)
    S_inv = jax.scipy.linalg.cho_solve((L, True), jnp.eye(S.shape[-1], dtype=S.dtype))
    return S_inv, 2.0 * jnp.sum(jnp.log(jnp.diagonal(L))), T.T @ T


@spd_terms.defjvp
def _spd_terms_jvp(primals, tangents):
    (S, B), (dS, dB) = primals, tangents
    X, logdet, Q = spd_terms(S, B)
    XB = X @ B
    return (X, logdet, Q), (-X @ dS @ X, jnp.sum(X * dS), dB.T @ XB + XB.T @ dB - XB.T @ dS @ XB)


def rest_scale(theta: jnp.ndarray, structure: Structure) -> jnp.ndarray:
    """The diagonal of Λ₂ (p₂,), for rest blocks that are all scalar terms."""
    return jnp.concatenate([jnp.broadcast_to(theta[b.theta_index[0][0]], (b.n_levels,)) for b in structure.blocks[1:]])


def rest_congruence(theta: jnp.ndarray, structure: Structure, C: jnp.ndarray) -> jnp.ndarray:
    """``Λ₂ᵀ C Λ₂`` for a p₂ × p₂ matrix C: one scaling of rows and columns when Λ₂ is diagonal."""
    if all(b.q == 1 for b in structure.blocks[1:]):
        lam = rest_scale(theta, structure)
        return lam[:, None] * C * lam[None, :]
    return apply_lambda_rest(theta, structure, apply_lambda_rest(theta, structure, C).T)


def _bordered(A_X: jnp.ndarray, A_y: jnp.ndarray) -> jnp.ndarray:
    return jnp.concatenate([A_X, A_y[..., None]], axis=-1)


def factorize(theta: jnp.ndarray, cp: CrossProducts, structure: Structure) -> Factor:
    """Blocked Cholesky factor of ``[ΛᵀZᵀZΛ + I, ΛᵀZᵀ[X y]; ·, [X y]ᵀ[X y]]`` at theta."""
    A1XY = _bordered(cp.A1X, cp.A1y)  # (G, q, p+1)
    L1, V1, U1, logdet = first_block(theta, structure.blocks[0], cp.A11, A1XY)
    AXY = jnp.block([[cp.AXX, cp.AXy[:, None]], [cp.AXy[None, :], cp.yy[None, None]]])
    S = AXY - jnp.sum(U1[..., :, :, None] * U1[..., :, None, :], axis=(0, 1))
    p2 = cp.A22.shape[0]
    if p2:
        W1 = jnp.einsum("gkr,gks->grs", V1, V1)
        W1_terms = W1.reshape(-1).at[cp.pair_w].get(mode="promise_in_bounds")
        P = jax.ops.segment_sum(
            cp.pair_val * W1_terms, cp.pair_out, num_segments=p2 * p2, indices_are_sorted=True
        ).reshape(p2, p2)
        C = cp.A22 - (P + P.T - jnp.diag(jnp.diagonal(P)))  # P holds the upper triangle
        S22 = rest_congruence(theta, structure, C) + jnp.eye(p2)
        L2 = jax.lax.linalg.cholesky(S22, symmetrize_input=False)  # the same factor spd_terms takes
        WA = jnp.einsum("gkr,gkc->grc", V1, U1).reshape(-1, A1XY.shape[-1])  # W₁ A₁XY
        A2XY = _bordered(cp.A2X, cp.A2y) - jax.ops.segment_sum(
            cp.A21_val[:, None] * WA[cp.A21_col], cp.A21_row, num_segments=p2
        )
        _, logdet2, Q = spd_terms(S22, apply_lambda_rest(theta, structure, A2XY))
        S = S - Q
        logdet = logdet + logdet2
    else:
        L2 = jnp.zeros((0, 0))
    return Factor(logdet, L1, V1, L2, cholesky(S))


def logdet_RX(f: Factor) -> jnp.ndarray:
    """``log|R_X|²`` from the diagonal of the [X y] Schur factor (the REML term)."""
    p = f.LXY.shape[0] - 1
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(f.LXY)[:p]))


def residual_df(n, p, reml, xp=jnp):
    """``n − p`` for REML, ``n`` for ML; ``reml`` may be traced (one compiled kernel serves both).
    ``xp=np`` computes it on the host (no JAX dispatch)."""
    return xp.where(reml, n - p, n)


def profiled_weights(n, p, reml, xp=jnp):
    """The :func:`weighted_criterion` weights of the profiled ML deviance or REML criterion (eqs. 34, 41):
    ``ν log r² + ν (1 + log 2π − log ν)``, ν = n (ML) or n − p (REML); ``reml`` may be traced."""
    nu = residual_df(n, p, reml, xp)
    return xp.stack([xp.asarray(reml, dtype=float), nu, 0.0 * nu, nu * (1.0 + LOG_2PI - xp.log(nu))])


def varpar_weights(n, p, reml, sigma, xp=jnp):
    """The :func:`weighted_criterion` weights of the deviance at a given σ (β profiled, σ not; lmerTest's
    ``devfun_vp``): ``r²/σ² + ν log(2πσ²)``."""
    nu = residual_df(n, p, reml, xp)
    return xp.stack([xp.asarray(reml, dtype=float), 0.0 * nu, 1.0 / sigma**2, nu * (LOG_2PI + 2.0 * xp.log(sigma))])


def weighted_criterion(f: Factor, weights: jnp.ndarray) -> jnp.ndarray:
    """``log|M| + w₀ log|R_X|² + w₁ log r² + w₂ r² + w₃`` from the factor, for weights ``w`` (4,).

    With :func:`profiled_weights` it is the profiled deviance or REML criterion, with
    :func:`varpar_weights` the deviance at a fixed σ: one compiled kernel (and one gradient graph) serves
    the fit and the Satterthwaite derivatives, for ML and REML alike.
    """
    return criterion_from_parts(f.logdet_M, logdet_RX(f), f.LXY[-1, -1] ** 2, weights)


def criterion_from_parts(logdet_M, logdet_RX, r2, weights, xp=jnp):
    """``log|M| + w₀ log|R_X|² + w₁ log r² + w₂ r² + w₃`` from its parts (``xp=np`` on the host)."""
    return logdet_M + weights[0] * logdet_RX + weights[1] * xp.log(r2) + weights[2] * r2 + weights[3]


def criterion(f: Factor, cp: CrossProducts, reml) -> jnp.ndarray:
    """-2 log-likelihood (ML) or the REML criterion from the factor (Bates et al. 2015, eqs. 34, 41).

    ``reml`` may be a traced boolean: both criteria come from the same factor at almost no extra cost.
    The counts n and p come from the cross-products (data, so padded shapes keep the real counts).
    """
    return weighted_criterion(f, profiled_weights(cp.n, cp.p, reml))


def profiled_deviance(theta: jnp.ndarray, cp: CrossProducts, structure: Structure, reml) -> jnp.ndarray:
    """θ ↦ profiled ML deviance or REML criterion (NaN where the factor does not exist)."""
    return criterion(factorize(theta, cp, structure), cp, reml)


def varpar_deviance(varpar: jnp.ndarray, cp: CrossProducts, structure: Structure, reml) -> jnp.ndarray:
    """The deviance at (θ, σ) with β profiled out but σ not (lmerTest's ``devfun_vp``)."""
    theta, sigma = varpar[:-1], varpar[-1]
    f = factorize(theta, cp, structure)
    return weighted_criterion(f, varpar_weights(cp.n, cp.p, reml, sigma))


def beta_hat(f: Factor) -> jnp.ndarray:
    """β̂ solving ``R_X β = r_y`` (``R_X = L_Xᵀ``)."""
    p = f.LXY.shape[0] - 1
    return jax.scipy.linalg.solve_triangular(f.LXY[:p, :p].T, f.LXY[p, :p], lower=False)


def sigma_hat(f: Factor, cp: CrossProducts, reml) -> jnp.ndarray:
    """σ̂ = r / √ν (ν = n − p for REML, n for ML)."""
    return jnp.abs(f.LXY[-1, -1]) / jnp.sqrt(residual_df(cp.n, cp.p, reml))


def unscaled_vcov(f: Factor) -> jnp.ndarray:
    """``(R_XᵀR_X)⁻¹``: vcov(β̂) = σ² × this."""
    p = f.LXY.shape[0] - 1
    Linv = jax.scipy.linalg.solve_triangular(f.LXY[:p, :p], jnp.eye(p), lower=True)
    return Linv.T @ Linv


def column_signs(theta: jnp.ndarray, structure: Structure) -> jnp.ndarray:
    """−1 for the theta entries in a Λ column with a negative diagonal, else 1.  The criterion is even in
    each column, so ``signs · theta`` has the same criterion and gradient ``signs · g``."""
    return jnp.where(theta[..., structure.column_diagonal] < 0, -1.0, 1.0)


def canonical_theta(theta: jnp.ndarray, structure: Structure) -> jnp.ndarray:
    """Flip Λ columns with a negative diagonal (the criterion is unchanged) so that θ_ii >= 0."""
    return column_signs(theta, structure) * theta
