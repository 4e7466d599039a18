"""Conditional modes and conditional variances of the random effects at a fitted theta.

With ``M = ΛᵀZᵀZΛ + I`` the spherical modes solve ``M u = ΛᵀZᵀ(y − Xβ̂)`` and ``b = Λu``;
``Var(b | y) = σ² Λ M⁻¹ Λᵀ`` (lme4's ``ranef(condVar = TRUE)``; Bates et al. 2015, §3.3, §5.1).
M is eliminated block-wise as in :mod:`jaxlmm.deviance`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .crossprod import CrossProducts, block_offsets
from .design import Structure
from .deviance import Factor, apply_lambda_rest, lambda_matrix, solve_lower_small


def _M1_inverse(f: Factor) -> jnp.ndarray:
    """``M₁ⱼ⁻¹ = L₁ⱼ⁻ᵀ L₁ⱼ⁻¹`` per level."""
    Linv = solve_lower_small(f.L1, jnp.broadcast_to(jnp.eye(f.L1.shape[-1]), f.L1.shape))
    return jnp.swapaxes(Linv, -1, -2) @ Linv


def conditional_modes(theta, cp: CrossProducts, structure: Structure, f: Factor, beta) -> list[jnp.ndarray]:
    """``b = Λu`` per block, each (levels, q)."""
    b1 = structure.blocks[0]
    Lam1 = lambda_matrix(theta, b1)
    Minv1 = _M1_inverse(f)
    c1 = jnp.einsum("rs,gr->gs", Lam1, cp.A1y - cp.A1X @ beta)
    p2 = cp.A22.shape[0]
    if not p2:
        u1 = jnp.einsum("grs,gs->gr", Minv1, c1)
        return [u1 @ Lam1.T]
    c2 = apply_lambda_rest(theta, structure, cp.A2y - cp.A2X @ beta)
    z1 = jnp.einsum("grs,gs->gr", Minv1, c1)
    Lz1 = (z1 @ Lam1.T).reshape(-1)
    rhs2 = c2 - apply_lambda_rest(
        theta, structure, jax.ops.segment_sum(cp.A21_val * Lz1[cp.A21_col], cp.A21_row, num_segments=p2)
    )
    u2 = jax.scipy.linalg.cho_solve((f.L2, True), rhs2)
    Lu2 = apply_lambda_rest(theta, structure, u2, transposed=False)
    t = jax.ops.segment_sum(cp.A21_val * Lu2[cp.A21_row], cp.A21_col, num_segments=b1.n_levels * b1.q)
    u1 = jnp.einsum("grs,gs->gr", Minv1, c1 - t.reshape(b1.n_levels, b1.q) @ Lam1)
    out = [u1 @ Lam1.T]
    offsets = block_offsets(structure)
    for b, start, stop in zip(structure.blocks[1:], offsets, offsets[1:]):
        out.append(Lu2[start:stop].reshape(b.n_levels, b.q))
    return out


def conditional_variances(theta, cp: CrossProducts, structure: Structure, f: Factor, sigma) -> list[jnp.ndarray]:
    """``Var(b | y)`` diagonal blocks per block, each (levels, q, q)."""
    b1 = structure.blocks[0]
    G, q = b1.n_levels, b1.q
    Lam1 = lambda_matrix(theta, b1)
    Minv1 = _M1_inverse(f)
    p2 = cp.A22.shape[0]
    blocks_Minv = [Minv1]
    if p2:
        A21 = jnp.zeros((p2, G * q)).at[cp.A21_row, cp.A21_col].add(cp.A21_val)
        B21 = apply_lambda_rest(theta, structure, (A21.reshape(p2, G, q) @ Lam1))  # Λ₂ᵀA₂₁Λ₁ (p₂, G, q)
        E = jnp.einsum("agr,grs->ags", B21, Minv1).reshape(p2, G * q)
        F = jax.scipy.linalg.solve_triangular(f.L2, E, lower=True).reshape(p2, G, q)
        blocks_Minv[0] = Minv1 + jnp.einsum("agr,ags->grs", F, F)
        L2inv = jax.scipy.linalg.solve_triangular(f.L2, jnp.eye(p2), lower=True)
        offsets = block_offsets(structure)
        for b, start, stop in zip(structure.blocks[1:], offsets, offsets[1:]):
            cols = L2inv[:, start:stop].reshape(p2, b.n_levels, b.q)
            blocks_Minv.append(jnp.einsum("agr,ags->grs", cols, cols))
    out = []
    for b, Minv in zip(structure.blocks, blocks_Minv):
        Lam = lambda_matrix(theta, b)
        out.append(sigma**2 * jnp.einsum("ir,grs,js->gij", Lam, Minv, Lam))
    return out
