"""Kenward–Roger: the adjusted covariance of β̂ and the F test's scaling and denominator df.

Kenward & Roger (1997), *Small sample inference for fixed effects from restricted maximum likelihood*,
Biometrics 53; as pbkrtest computes them (Halekoh & Højsgaard 2014, J. Stat. Softw. 59(9):
``vcovAdj``, ``.KR_adjust``, ``Lb_ddf``).  The marginal covariance is parametrised *linearly*, as pbkrtest's
``get_SigmaG`` does,

    Σ(φ) = Σᵢ φᵢ Gᵢ,   φ = (the variances and covariances of each term, lower triangles; σ²),
    Gᵢ = Z (I_levels ⊗ Sᵢ) Zᵀ (Sᵢ = eᵣeₛᵀ + eₛeᵣᵀ, or eᵣeᵣᵀ),   G_σ² = I,

so ∂Σ/∂φᵢ = Gᵢ exactly and the second derivatives vanish (the adjusted covariance depends on this
choice: in θ, the Cholesky parametrisation, it would not be the same).  With Φ = (XᵀΣ⁻¹X)⁻¹,

    Pᵢ = −XᵀΣ⁻¹GᵢΣ⁻¹X,   Qᵢⱼ = XᵀΣ⁻¹GᵢΣ⁻¹GⱼΣ⁻¹X,
    Iᵢⱼ = tr(Σ⁻¹GᵢΣ⁻¹Gⱼ) − 2 tr(ΦQᵢⱼ) + tr(ΦPᵢΦPⱼ),   W = 2 I⁻¹,
    Φ_A = Φ + 2 Φ (Σᵢⱼ Wᵢⱼ (Qᵢⱼ − PᵢΦPⱼ)) Φ.

No n × n matrix is formed: with A = ZᵀZ, B = ZᵀX, σ² = s, M = ΛᵀAΛ + I = L Lᵀ, the Woodbury form
Σ⁻¹ = s⁻¹(I − ZΛM⁻¹ΛᵀZᵀ) gives every product in the random-effects dimension q:
with W = L⁻¹ΛᵀA, U = L⁻ᵀW (and W_X, U_X, V_X the same for B),

    ZᵀΣ⁻¹Z = (A − WᵀW)/s,  ZᵀΣ⁻²Z = (A − WᵀW − UᵀU)/s²,
    XᵀΣ⁻ᵏX = (XᵀX − W_XᵀW_X − … )/sᵏ (k = 1, 2, 3 terms),   tr Σ⁻² = (n − 2 tr(ΛU) + tr((ΛU)²))/s²,

and the traces tr(Σ⁻¹GᵢΣ⁻¹Gⱼ) = tr((I⊗Sᵢ) N (I⊗Sⱼ) N) are sums over the level pairs of N = ZᵀΣ⁻¹Z.
The cost is a few dense q × q products (q = total random effects), memory q²: fine for InstEval's
q ≈ 4,100; models with more than ``MAX_DENSE_Q`` random effects are refused with a clear error.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from .crossprod import sparse_Z
from .design import Design, Structure
from .deviance import lambda_matrix
from .errors import JaxlmmError

MAX_DENSE_Q = 20_000  # q × q dense products beyond this need more memory than a workstation has
SINGULAR_INFORMATION = 1e-10  # pbkrtest: below this smallest |eigenvalue| W is a generalised inverse


class KRAdjusted(NamedTuple):
    """pbkrtest's ``vcovAdj``: Φ_A with its attributes P and W, and the unadjusted Φ."""

    vcov_adjusted: np.ndarray  # (p, p) Φ_A
    vcov: np.ndarray  # (p, p) Φ = (XᵀΣ⁻¹X)⁻¹
    P: np.ndarray  # (k, p, p)
    W: np.ndarray  # (k, k) 2 × the inverse expected REML information of φ


def variance_parameters(structure: Structure) -> list[tuple[int, int, int]]:
    """pbkrtest's φ without σ²: (block, row, column) of each variance/covariance that is not a structural
    zero, block by block, lower triangle column by column."""
    out = []
    for k, b in enumerate(structure.blocks):
        index = np.array(b.theta_index)
        pattern = index >= 0
        cover = (pattern.astype(int) @ pattern.T.astype(int)) > 0  # where ΛΛᵀ can be non-zero
        out += [(k, r, c) for c in range(b.q) for r in range(c, b.q) if cover[r, c]]
    return out


def unit_matrices(structure: Structure) -> tuple[np.ndarray, ...]:
    """Per block, the Sᵢ (mᵢ, q, q) of its variance parameters (∂D/∂φᵢ on one level)."""
    params = variance_parameters(structure)
    out = []
    for k, b in enumerate(structure.blocks):
        mine = [(r, c) for kk, r, c in params if kk == k]
        S = np.zeros((len(mine), b.q, b.q))
        for i, (r, c) in enumerate(mine):
            S[i, r, c] = S[i, c, r] = 1.0
        out.append(S)
    return tuple(out)


def dense_products(design: Design) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``A = ZᵀZ`` (q × q, dense), ``B = ZᵀX`` and ``XᵀX``, blocks in the design's order, level-major."""
    q = sum(b.n_levels * b.q for b in design.structure.blocks)
    if q > MAX_DENSE_Q:
        raise JaxlmmError(
            f"Kenward-Roger here needs dense {q} x {q} products of the random effects (more than "
            f"{MAX_DENSE_Q}); use ddf='Satterthwaite' for models this large"
        )
    Z = sp.hstack(
        [sparse_Z(c, z, b.n_levels) for c, z, b in zip(design.codes, design.Z, design.structure.blocks)]
    ).tocsc()
    return (Z.T @ Z).toarray(), np.asarray(Z.T @ design.X), design.X.T @ design.X


def _block_slices(structure: Structure) -> list[tuple[int, int]]:
    out, start = [], 0
    for b in structure.blocks:
        out.append((start, start + b.n_levels * b.q))
        start += b.n_levels * b.q
    return out


def _apply_blocks(mats, structure: Structure, M: jnp.ndarray, transpose: bool) -> jnp.ndarray:
    """``blockdiag(I ⊗ matsₖ)ᵀ M`` (or without the transpose) for per-block q × q matrices."""
    pieces = []
    for Mk, b, (a, z) in zip(mats, structure.blocks, _block_slices(structure)):
        rows = M[a:z].reshape((b.n_levels, b.q) + M.shape[1:])
        spec = "rs,gr...->gs..." if transpose else "sr,gr...->gs..."
        pieces.append(jnp.einsum(spec, Mk, rows).reshape((z - a,) + M.shape[1:]))
    return jnp.concatenate(pieces, axis=0)


def _apply_units(units, structure: Structure, M: jnp.ndarray) -> jnp.ndarray:
    """``(I ⊗ Sᵢ) M`` for every variance parameter i: (k, q, m)."""
    out = []
    for S, b, (a, z) in zip(units, structure.blocks, _block_slices(structure)):
        for Si in S:
            rows = M[a:z].reshape(b.n_levels, b.q, -1)
            piece = jnp.einsum("rs,gsm->grm", Si, rows).reshape(z - a, -1)
            out.append(jnp.zeros_like(M).at[a:z].set(piece))
    return jnp.stack(out) if out else jnp.zeros((0,) + M.shape)


def kr_ingredients(theta, sigma, A, B, XtX, n, structure: Structure):
    """Φ, the Pᵢ and the expected REML information Iᵢⱼ (module docstring), σ² last.  Pure JAX."""
    s = sigma**2
    lams = [lambda_matrix(theta, b) for b in structure.blocks]
    units = unit_matrices(structure)
    q = A.shape[0]
    LtA = _apply_blocks(lams, structure, A, transpose=True)  # ΛᵀA
    M = _apply_blocks(lams, structure, LtA.T, transpose=True) + jnp.eye(q)  # ΛᵀAΛ + I
    L = jnp.linalg.cholesky(M)
    tri = jax.scipy.linalg.solve_triangular
    W = tri(L, LtA, lower=True)  # L⁻¹ΛᵀA
    U = tri(L, W, lower=True, trans=1)  # M⁻¹ΛᵀA
    LtB = _apply_blocks(lams, structure, B, transpose=True)
    WX = tri(L, LtB, lower=True)
    UX = tri(L, WX, lower=True, trans=1)
    VX = tri(L, UX, lower=True)
    N = (A - W.T @ W) / s  # ZᵀΣ⁻¹Z
    R = (B - W.T @ WX) / s  # ZᵀΣ⁻¹X
    R2 = (B - W.T @ WX - U.T @ UX) / s**2  # ZᵀΣ⁻²X
    XSX = (XtX - WX.T @ WX) / s
    XS2X = (XtX - WX.T @ WX - UX.T @ UX) / s**2
    XS3X = (XtX - WX.T @ WX - UX.T @ UX - VX.T @ VX) / s**3
    TA = _apply_blocks(lams, structure, U, transpose=False)  # ΛM⁻¹ΛᵀA
    trace_S2 = (n - 2.0 * jnp.trace(TA) + jnp.sum(TA * TA.T)) / s**2  # tr((I − ZTZᵀ)²)/s²
    Phi = jnp.linalg.inv(XSX)
    Phi = 0.5 * (Phi + Phi.T)

    ER = _apply_units(units, structure, R)  # (k, q, p): (I⊗Sᵢ) ZᵀΣ⁻¹X
    NER = jnp.einsum("ab,kbp->kap", N, ER)
    P = jnp.concatenate([-jnp.einsum("ap,kaq->kpq", R, ER), -XS2X[None]])
    Q_rr = jnp.einsum("iap,jaq->ijpq", ER, NER)
    Q_rs = jnp.einsum("iap,aq->ipq", ER, R2)
    k = ER.shape[0]
    Q = jnp.zeros((k + 1, k + 1) + XSX.shape)
    Q = Q.at[:k, :k].set(Q_rr).at[:k, k].set(Q_rs).at[k, :k].set(jnp.swapaxes(Q_rs, -1, -2)).at[k, k].set(XS3X)

    # tr(Σ⁻¹GᵢΣ⁻¹Gⱼ): per pair of blocks, Ψ[b,c,a,d] = Σ_gh N[g,b,h,c] N[g,a,h,d]
    slices = _block_slices(structure)
    offsets = np.cumsum([0] + [len(S) for S in units])
    K = jnp.zeros((k + 1, k + 1))
    for kb, (Sk, bk, (a1, z1)) in enumerate(zip(units, structure.blocks, slices)):
        # the level-diagonal blocks of ZᵀΣ⁻²Z = (A − WᵀW − UᵀU)/s², summed over the levels
        Nk = N[a1:z1, a1:z1].reshape(bk.n_levels, bk.q, bk.n_levels, bk.q)
        Uk = U[:, a1:z1].reshape(-1, bk.n_levels, bk.q)
        diag = (s * jnp.einsum("gagb->ab", Nk) - jnp.einsum("igb,iga->ab", Uk, Uk)) / s**2
        K = K.at[offsets[kb] : offsets[kb + 1], k].set(jnp.einsum("iab,ba->i", Sk, diag))
        for lb, (Sl, bl, (a2, z2)) in enumerate(zip(units, structure.blocks, slices)):
            Nkl = N[a1:z1, a2:z2].reshape(bk.n_levels, bk.q, bl.n_levels, bl.q)
            psi = jnp.einsum("gbhc,gahd->bcad", Nkl, Nkl)
            K = K.at[offsets[kb] : offsets[kb + 1], offsets[lb] : offsets[lb + 1]].set(
                jnp.einsum("iab,jcd,bcad->ij", Sk, Sl, psi)
            )
    K = K.at[k, :k].set(K[:k, k]).at[k, k].set(trace_S2)
    PhiP = jnp.einsum("ab,kbc->kac", Phi, P)
    information = K - 2.0 * jnp.einsum("pq,ijqp->ij", Phi, Q) + jnp.einsum("iab,jba->ij", PhiP, PhiP)
    return Phi, P, Q, 0.5 * (information + information.T)


def adjust(Phi, P, Q, information) -> KRAdjusted:
    """Φ_A = Φ + 2Φ(Σᵢⱼ Wᵢⱼ(Qᵢⱼ − PᵢΦPⱼ))Φ with W = 2I⁻¹ (a generalised inverse when I is near singular,
    as pbkrtest).  Pure JAX."""
    smallest = jnp.min(jnp.abs(jnp.linalg.eigvalsh(information)))
    W = 2.0 * jnp.where(smallest > SINGULAR_INFORMATION, jnp.linalg.inv(information), jnp.linalg.pinv(information))
    W = 0.5 * (W + W.T)
    U = jnp.einsum("ij,ijab->ab", W, Q) - jnp.einsum("ij,iab,bc,jcd->ad", W, P, Phi, P)
    U = 0.5 * (U + U.T)
    return KRAdjusted(Phi + 2.0 * Phi @ U @ Phi, Phi, P, W)


def adjusted_vcov(theta, sigma, design: Design) -> KRAdjusted:
    """pbkrtest's ``vcovAdj`` at (θ, σ) of a REML fit of ``design``."""
    A, B, XtX = dense_products(design)
    theta = np.asarray(theta, dtype=float)
    out = _adjusted(theta, float(sigma), A, B, XtX, float(design.n), design.structure)
    return KRAdjusted(*(np.asarray(a) for a in jax.device_get(out)))


@partial(jax.jit, static_argnames=("structure",))
def _adjusted(theta, sigma, A, B, XtX, n, structure: Structure) -> KRAdjusted:
    return adjust(*kr_ingredients(theta, sigma, A, B, XtX, n, structure))


class KRStatistics(NamedTuple):
    """pbkrtest's ``.KR_adjust`` for one restriction L (q rows)."""

    ndf: int
    ddf: float
    scaling: float  # F.scaling
    A1: float
    A2: float


@jax.jit
def kr_moments(L, Phi, P, W):
    """KR's ``(ddf, F scaling, A1, A2)`` for ``Lβ = 0`` with L of full row rank q (pbkrtest's ``.KR_adjust``,
    ``Lb_ddf``).  Pure JAX."""
    q = L.shape[0]
    Theta = L.T @ jnp.linalg.solve(L @ Phi @ L.T, L)
    u = jnp.einsum("ab,kbc,cd->kad", Theta @ Phi, P, Phi)  # uᵢ = ΘΦPᵢΦ
    tr = jnp.trace(u, axis1=1, axis2=2)
    A1 = jnp.einsum("ij,i,j->", W, tr, tr)
    A2 = jnp.einsum("ij,iab,jba->", W, u, u)
    B = (A1 + 6.0 * A2) / (2.0 * q)
    g = ((q + 1) * A1 - (q + 4) * A2) / ((q + 2) * A2)
    denom = 3.0 * q + 2.0 * (1.0 - g)
    c1, c2, c3 = g / denom, (q - g) / denom, (q + 2 - g) / denom
    V0 = 1.0 + c1 * B
    V0 = jnp.where(jnp.abs(V0) < 1e-10, 0.0, V0)
    V1, V2 = 1.0 - c2 * B, 1.0 - c3 * B
    x = 1.0 - A2 / q
    ratio = jnp.where((jnp.abs(x) < 1e-14) & (jnp.abs(V1) < 1e-14), 1.0, x / V1)  # pbkrtest's .divZero
    rho = ratio**2 * V0 / (q * V2)
    ddf = 4.0 + (q + 2.0) / (q * rho - 1.0)
    scaling = jnp.where(jnp.abs(ddf - 2.0) < 1e-2, 1.0, ddf * x / (ddf - 2.0))
    return ddf, scaling, A1, A2


def kr_statistics(L: np.ndarray, Phi: np.ndarray, P: np.ndarray, W: np.ndarray) -> KRStatistics:
    """Kenward–Roger's df and F scaling for ``Lβ = 0`` (L of full row rank), from the unadjusted Φ and
    vcovAdj's P and W."""
    L = np.atleast_2d(np.asarray(L, dtype=float))
    ddf, scaling, A1, A2 = (float(v) for v in jax.device_get(kr_moments(L, Phi, P, W)))
    return KRStatistics(L.shape[0], ddf, scaling, A1, A2)


def kr_f_lanes(thetas, sigmas, betas, design: Design, L: np.ndarray, batch_size: int = 8):
    """Kenward–Roger F tests of ``Lβ = 0`` for many fits of one design (e.g. simulated responses):
    per lane (θ, σ, β̂) → (F, ddf, F scaling) with ``F = scaling (Lβ̂)ᵀ(LΦ_ALᵀ)⁻¹Lβ̂ / q``.  The lanes
    run ``batch_size`` at a time (each holds a few q × q matrices)."""
    A, B, XtX = dense_products(design)
    L = np.atleast_2d(np.asarray(L, dtype=float))
    return jax.device_get(
        _kr_f_lanes(
            np.asarray(thetas, dtype=float),
            np.asarray(sigmas, dtype=float),
            np.asarray(betas, dtype=float),
            A,
            B,
            XtX,
            float(design.n),
            L,
            design.structure,
            batch_size,
        )
    )


@partial(jax.jit, static_argnames=("structure", "batch_size"))
def _kr_f_lanes(thetas, sigmas, betas, A, B, XtX, n, L, structure: Structure, batch_size: int):
    def one(lane):
        theta, sigma, beta = lane
        kr = adjust(*kr_ingredients(theta, sigma, A, B, XtX, n, structure))
        ddf, scaling, _, _ = kr_moments(L, kr.vcov, kr.P, kr.W)
        Lb = L @ beta
        F = Lb @ jnp.linalg.solve(L @ kr.vcov_adjusted @ L.T, Lb) / L.shape[0]
        return scaling * F, ddf, scaling

    return jax.lax.map(one, (thetas, sigmas, betas), batch_size=batch_size)
