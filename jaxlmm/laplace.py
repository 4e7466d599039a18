"""lme4's glmer criterion as a pure JAX function of x = (θ, β): Laplace (nAGQ = 1) and adaptive
Gauss–Hermite quadrature (nAGQ > 1, one scalar random-effects term).

* Laplace (lme4's ``glmerLaplace``: ``glmResp::Laplace = ldL2 + sqrL + aic()``)::

      d(θ, β) = −2 log p(y | u*) + ‖u*‖² + log|H(u*)|,   H = ΛᵀZᵀWZΛ + I,

  with ``−2 log p`` as ``family$aic`` sums it (binomial coefficients, ``log y!``): ``logLik = −d/2``.
* AGQ (lme4's ``glmerAGQ``), per level j with mode u_j, ``s_j = H_jj^{-1/2}`` and the Gauss–Hermite rule
  (z_k, w_k) for the standard normal::

      devc_j(v) = v² + Σ_{i∈j} devresid_i(v),
      d = Σ_j devc_j(u_j) + log|H| − 2 Σ_j log Σ_k w_k exp(z_k²/2 − ½(devc_j(u_j + s_j z_k) − devc_j(u_j))),

  (the saturated part of the deviance residuals cancels in the differences and is added once)

  on the deviance-residual scale (no saturated constants), as lme4 reports it for nAGQ > 1.

**Exact gradients.**  The mode u*(x) is found by PIRLS (:mod:`jaxlmm.pirls`) with the parameters held
constant (``stop_gradient``), then one Newton step is taken from it as a differentiable function of x:
``u₁(x) = u* − H(u*, x)⁻¹ ½∇ᵤpdev(u*, x)``.  At the mode ``∇ᵤpdev(u*, x) = 0``, so ``u₁ = u*`` and
``∂u₁/∂x = −H⁻¹ ∂ₓ½∇ᵤpdev``, the implicit-function derivative of the mode (the term with ∂H⁻¹/∂x
multiplies the zero gradient).  The criterion evaluated at ``u₁(x)`` therefore has the exact value and
the exact first derivative of the criterion at the true mode (to the PIRLS tolerance), for Laplace and
AGQ alike.  Second derivatives are not exact this way: Hessians (for ``vcov``) are taken by central
differences of this exact gradient, as lme4 takes them by differences of the criterion.
"""

from __future__ import annotations

from functools import cache
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .design import Structure
from .family import Family
from .pirls import GlmmData, HFactor, conditional_modes, factor_h, newton_pieces, random_part, scaled_z


@cache
def gauss_hermite(nagq: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights of the ``nagq``-point Gauss–Hermite rule for the standard normal (lme4's
    ``GHrule``): Σ w_k f(z_k) ≈ E f(Z), Z ~ N(0, 1)."""
    z, w = np.polynomial.hermite_e.hermegauss(nagq)
    return z, w / np.sqrt(2.0 * np.pi)


class ModeAt(NamedTuple):
    """η and the factor of H = ΛᵀZᵀWZΛ + I at the mode."""

    eta: jnp.ndarray
    factor: HFactor


def split_x(x: jnp.ndarray, structure: Structure) -> tuple[jnp.ndarray, jnp.ndarray]:
    return x[..., : structure.n_theta], x[..., structure.n_theta :]


def mode_at(x, data: GlmmData, structure: Structure, family: Family):
    """(u₁, η and the factor of H at u₁, A = ZΛ rows, η's fixed part): the mode as a differentiable
    function of x (see the module's docstring)."""
    theta, beta = split_x(x, structure)
    state = conditional_modes(jax.lax.stop_gradient(theta), jax.lax.stop_gradient(beta), data, structure, family)
    u_star = jax.lax.stop_gradient(state.u)
    A = scaled_z(theta, data, structure)
    eta_fixed = data.offset + data.X @ beta
    u1 = u_star - newton_pieces(A, eta_fixed, u_star, data, structure, family).step
    eta = eta_fixed + random_part(A, u1, data, structure)
    factor = factor_h(A, data.wt * family.variance(family.mean(eta)), data, structure)
    return u1, ModeAt(eta, factor), A, eta_fixed


def criterion(x, data: GlmmData, structure: Structure, family: Family, nagq: int = 1) -> jnp.ndarray:
    """lme4's ``-2 logLik`` of a glmer at x = (θ, β): Laplace for ``nagq == 1``, AGQ otherwise."""
    return varying_criterion(x, data, structure, family, nagq) + criterion_constant(data, family, nagq)


def criterion_constant(data: GlmmData, family: Family, nagq: int) -> jnp.ndarray:
    """The part of the criterion that depends on the response alone: Σ (−2 log p − deviance kernel) for
    Laplace, Σ saturated deviance for AGQ.  Batched refits leave it out of the descent."""
    per_row = family.loglik_constant(data.y, data.wt) if nagq == 1 else family.saturated(data.y, data.wt)
    return jnp.sum(per_row)


def varying_criterion(x, data: GlmmData, structure: Structure, family: Family, nagq: int = 1) -> jnp.ndarray:
    """The criterion less :func:`criterion_constant`."""
    u, pieces, A, eta_fixed = mode_at(x, data, structure, family)
    if nagq == 1:
        return jnp.sum(family.deviance_kernel(data.y, data.wt, pieces.eta)) + jnp.sum(u**2) + pieces.factor.logdet
    return quadrature(u, pieces, A, eta_fixed, data, structure, family, nagq)


def quadrature(u, pieces, A, eta_fixed, data: GlmmData, structure: Structure, family: Family, nagq: int):
    """lme4's ``glmerAGQ`` (module docstring) for one scalar random-effects term."""
    G = structure.blocks[0].n_levels
    codes = data.codes[0]
    z, w = gauss_hermite(nagq)
    sd = 1.0 / pieces.factor.L1[:, 0, 0]

    def devc(v):
        eta = eta_fixed + A[0][:, 0] * v[codes]
        return v**2 + jax.ops.segment_sum(family.deviance_kernel(data.y, data.wt, eta), codes, G)

    devc0 = devc(u)
    at_nodes = jax.vmap(lambda zk: devc(u + sd * zk))(jnp.asarray(z))  # (nagq, G)
    log_terms = jnp.log(jnp.asarray(w))[:, None] + jnp.asarray(z)[:, None] ** 2 / 2 - 0.5 * (at_nodes - devc0)
    return jnp.sum(devc0) + pieces.factor.logdet - 2.0 * jnp.sum(jax.scipy.special.logsumexp(log_terms, axis=0))


def deviance_residual_sum(x, data: GlmmData, structure: Structure, family: Family) -> jnp.ndarray:
    """lme4's ``deviance()`` of a glmer: Σ devresid at the conditional modes (``devcomp$cmp["drsum"]``)."""
    _, pieces, _, _ = mode_at(x, data, structure, family)
    return jnp.sum(family.deviance_residuals(data.y, data.wt, pieces.eta))
