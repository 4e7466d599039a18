"""Satterthwaite degrees of freedom for fixed-effect t tests (lmerTest's default method).

Kuznetsova, Brockhoff & Christensen (2017), *lmerTest Package: Tests in Linear Mixed Effects Models*,
J. Stat. Softw. 82(13), §3: for a contrast ``l``, with ``v(ψ) = lᵀ V(ψ) l``, ``V(ψ) = σ² (R_XᵀR_X)⁻¹`` and
``ψ = (θ, σ)``,

    df = 2 v(ψ̂)² / (∇v(ψ̂)ᵀ A ∇v(ψ̂)),   A = 2 H⁻¹,

``H`` being the Hessian of the deviance in ψ (β profiled, σ not), inverted over its positive
eigenvalues as lmerTest does.  lmerTest takes ``H`` and ``∇v`` by finite differences of the deviance;
here they are central differences of *exact* (autodiff) gradients of the deviance and of exact
``(R_XᵀR_X)⁻¹`` at the ``2·dim ψ`` points ``ψ ± hᵢeᵢ`` (h = 1e-4 × ψ's scale, error O(h²) ~ 1e-8).
For one fit they come from the fit's own compiled kernel (:func:`~jaxlmm.kernel.criterion_search` with the
weights of the deviance at a fixed σ, whose σ-derivative ``2ν/σ − 2r²/σ³`` is closed-form), so the
tables compile nothing new; batches of fits (power) use :func:`varpar_jets_lanes`.
"""

from __future__ import annotations

from functools import partial

import jax
import numpy as np

from .cache import bound_executables
from .crossprod import CrossProducts
from .design import Structure
from .deviance import UNROLL_MAX, factorize, residual_df, unscaled_vcov, varpar_deviance, varpar_weights
from .kernel import evaluate

POSITIVE_TOL = 1e-8  # lmerTest's tolerance for the Hessian's eigenvalues
DIFFERENCE_STEP = 1e-4  # relative to theta's scale and to sigma


def varpar_jets(points, cp: CrossProducts, structure: Structure, reml):
    """At each row ``ψ = (θ, σ)`` of ``points`` (m, k): the gradient of the deviance in ψ and
    ``(R_XᵀR_X)⁻¹`` at θ.  Pure JAX."""

    def one(psi):
        return jax.grad(varpar_deviance)(psi, cp, structure, reml), unscaled_vcov(factorize(psi[:-1], cp, structure))

    return jax.vmap(one)(points)


def difference_points(theta: np.ndarray, sigma, theta_scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The points ``ψ ± hᵢeᵢ`` (…, 2k, k), plus first then minus, and the steps h (…, k); leading axes batch."""
    psi = np.concatenate([theta, np.asarray(sigma)[..., None]], axis=-1)
    h = DIFFERENCE_STEP * np.concatenate(
        [np.broadcast_to(theta_scale, theta.shape), np.abs(np.asarray(sigma))[..., None]], axis=-1
    )
    k = psi.shape[-1]
    shifts = np.eye(k) * h[..., None, :]  # (…, k, k): row i is hᵢeᵢ
    return np.concatenate([psi[..., None, :] + shifts, psi[..., None, :] - shifts], axis=-2), h


def varpar_derivatives(
    gradients: np.ndarray, vcov_unscaled: np.ndarray, sigma, h: np.ndarray, p: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From :func:`varpar_jets` at the :func:`difference_points`: ``V = vcov(β̂)`` (…, p, p), its derivatives
    ``∂V/∂ψₖ`` (…, k, p, p) and ``A = 2H⁻¹`` (…, k, k), lmerTest's ``vcov_beta``, ``Jac_list`` and
    ``vcov_varpar``; leading axes batch (lanes)."""
    k = h.shape[-1]
    vcov_unscaled = vcov_unscaled[..., :p, :p]  # the real fixed effects (padded columns are inert)
    plus, minus = gradients[..., :k, :], gradients[..., k:, :]
    H = np.swapaxes((plus - minus) / (2.0 * h[..., :, None]), -1, -2)  # column i: ∂g/∂ψᵢ
    H = 0.5 * (H + np.swapaxes(H, -1, -2))
    evals, evecs = np.linalg.eigh(H)
    inv = np.where(evals > POSITIVE_TOL, 1.0 / np.where(evals > POSITIVE_TOL, evals, 1.0), 0.0)
    A = 2.0 * (evecs * inv[..., None, :]) @ np.swapaxes(evecs, -1, -2)
    sigma = np.asarray(sigma)[..., None, None]
    U = 0.5 * (vcov_unscaled[..., k - 1, :, :] + vcov_unscaled[..., 2 * k - 1, :, :])  # σ± leave θ, hence U, as is
    dU = (vcov_unscaled[..., : k - 1, :, :] - vcov_unscaled[..., k : 2 * k - 1, :, :]) / (
        2.0 * h[..., : k - 1, None, None]
    )
    dV = np.concatenate([sigma[..., None, :, :] ** 2 * dU, (2.0 * sigma * U)[..., None, :, :]], axis=-3)  # (…, k, p, p)
    return sigma**2 * U, dV, A


def satterthwaite_from_jets(
    gradients: np.ndarray, vcov_unscaled: np.ndarray, sigma, h: np.ndarray, contrasts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """df and ``v = lᵀVl`` for each row l of ``contrasts`` (c, p), from :func:`varpar_jets` at the
    :func:`difference_points`; leading axes batch (lanes)."""
    V, dV, A = varpar_derivatives(gradients, vcov_unscaled, sigma, h, contrasts.shape[-1])
    v = np.einsum("ci,...ij,cj->...c", contrasts, V, contrasts)
    J = np.einsum("ci,...kij,cj->...ck", contrasts, dV, contrasts)
    return 2.0 * v**2 / np.einsum("...ck,...kl,...cl->...c", J, A, J), v


def satterthwaite_f(
    V: np.ndarray, dV: np.ndarray, A: np.ndarray, beta: np.ndarray, L: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """lmerTest's ``contestMD`` F test of ``Lβ = 0`` for a full-rank contrast matrix L (q, p), from
    :func:`varpar_derivatives` and β̂ (…, p); leading axes batch (lanes).

    With ``LVLᵀ = P diag(d) Pᵀ`` and the rows ``lₘ = (PᵀL)ₘ``: ``F = Σₘ (lₘβ̂)²/dₘ / q``; each ``lₘ`` has its
    Satterthwaite df ``νₘ = 2dₘ² / (JₘᵀAJₘ)``, ``Jₘₖ = lₘ ∂V/∂ψₖ lₘᵀ``, and the denominator df is lmerTest's
    ``get_Fstat_ddf``: ``E = Σ νₘ/(νₘ − 2)``, ``ddf = 2E/(E − q)`` (2 if some νₘ ≤ 2; their mean if all
    νₘ agree to 1e-8; ν itself for q = 1, where F = t²).  Returns (F, ddf)."""
    q = L.shape[0]
    d, P = np.linalg.eigh(L @ V @ L.T)
    rows = np.swapaxes(P, -1, -2) @ L  # (…, q, p)
    F = np.sum(np.einsum("...mi,...i->...m", rows, beta) ** 2 / d, axis=-1) / q
    J = np.einsum("...mi,...kij,...mj->...mk", rows, dV, rows)
    nu = 2.0 * d**2 / np.einsum("...mk,...kl,...ml->...m", J, A, J)
    if q == 1:
        return F, nu[..., 0]
    E = np.sum(nu / np.where(nu > 2, nu - 2, 1.0), axis=-1)
    ddf = np.where(np.any(nu <= 2, axis=-1), 2.0, 2.0 * E / np.where(E > q, E - q, 1.0))
    same = np.all(np.abs(np.diff(nu, axis=-1)) < 1e-8, axis=-1)
    return F, np.where(same, nu.mean(axis=-1), ddf)


def satterthwaite_df(
    theta, sigma, contrasts, cp: CrossProducts, structure: Structure, reml: bool, theta_scale: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Denominator df for each row ``l`` of ``contrasts`` (c, p), and ``v = lᵀVl``, for one fit."""
    bound_executables()
    n, p = float(cp.n), int(cp.p)
    nu = residual_df(n, p, reml, np)
    points, h = difference_points(np.asarray(theta, dtype=float), float(sigma), theta_scale)
    gradients, vcov_unscaled = [], []
    for point in points:
        s = point[-1]
        r = evaluate(point[:-1], cp, structure, varpar_weights(n, p, reml, s, xp=np), theta_scale, extras=True)
        gradients.append(np.append(r.g, 2.0 * nu / s - 2.0 * float(r.parts.r2) / s**3))
        vcov_unscaled.append(r.parts.vcov_unscaled)
    return satterthwaite_from_jets(
        np.array(gradients), np.array(vcov_unscaled), float(sigma), h, np.asarray(contrasts, dtype=float)
    )


@partial(jax.jit, static_argnames=("structure", "cp_axes"))
def varpar_jets_lanes(points, cp: CrossProducts, structure: Structure, reml, cp_axes: CrossProducts):
    """:func:`varpar_jets` per lane: ``points`` (B, m, k), the cross-products' ``cp_axes`` fields batched.

    With a dense factor (crossed factors, or more than ``UNROLL_MAX`` columns of [X y]: LAPACK's Cholesky) the lanes run one after another
    (``lax.map``), as single fits do: the vmapped forward-over-reverse derivatives of a batched Cholesky
    can deadlock XLA's CPU thread pool (seen with 2 threads; shared/PERFORMANCE.md's trap)."""

    def one(pts, c):
        return varpar_jets(pts, c, structure, reml)

    if len(structure.blocks) == 1 and cp.AXX.shape[-1] + 1 <= UNROLL_MAX:  # unrolled factors only
        return jax.vmap(one, in_axes=(0, cp_axes))(points, cp)
    lane_fields = [f for f, ax in zip(CrossProducts._fields, cp_axes) if ax == 0]
    shared = {f: getattr(cp, f) for f, ax in zip(CrossProducts._fields, cp_axes) if ax is None}
    return jax.lax.map(
        lambda args: one(args[0], CrossProducts(**shared, **dict(zip(lane_fields, args[1:])))),
        (points, *(getattr(cp, f) for f in lane_fields)),
    )
