"""GLM families with their canonical links, as pure ``jax.numpy`` functions of the linear predictor.

Only the canonical links are offered (binomial–logit, Poisson–log): for them the Fisher weights of IRLS
equal the observed information, so penalised IRLS is Newton's method on the penalised deviance and the
Laplace approximation's ``log|ΛᵀZᵀWZΛ + I|`` is exact at the mode.

Conventions as R's ``family`` objects and lme4's ``glmResp``: the binomial response is the proportion of
successes ``y`` with prior weights ``wt`` (the number of trials); the deviance residuals are
``family$dev.resid(y, mu, wt)``; ``-2 log p(y | mu)`` is ``family$aic`` (binomial coefficients and
``log y!`` included), which lme4's Laplace criterion adds (``glmResp::Laplace = ldL2 + sqrL + aic()``).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax.scipy.special import gammaln, xlogy

from .errors import JaxlmmError

CANONICAL_LINK = {"binomial": "logit", "poisson": "log"}


@dataclass(frozen=True)
class Family:
    """A GLM family with its canonical link (hashable: a static argument of the compiled kernels)."""

    name: str  # "binomial" or "poisson"

    @property
    def link(self) -> str:
        return CANONICAL_LINK[self.name]

    def mean(self, eta: jnp.ndarray) -> jnp.ndarray:
        """The inverse link μ(η)."""
        return jax.nn.sigmoid(eta) if self.name == "binomial" else jnp.exp(eta)

    def link_of(self, mu):
        """The link η(μ)."""
        return jnp.log(mu / (1.0 - mu)) if self.name == "binomial" else jnp.log(mu)

    def variance(self, mu: jnp.ndarray) -> jnp.ndarray:
        """V(μ): μ(1 − μ) or μ; with the canonical link also dμ/dη, so the IRLS weight is ``wt · V(μ)``."""
        return mu * (1.0 - mu) if self.name == "binomial" else mu

    def deviance_residuals(self, y, wt, eta) -> jnp.ndarray:
        """R's ``family$dev.resid(y, mu, wt)`` (each ≥ 0): the kernel plus the saturated part."""
        return self.deviance_kernel(y, wt, eta) + self.saturated(y, wt)

    def deviance_kernel(self, y, wt, eta) -> jnp.ndarray:
        """The deviance residuals less their saturated part, computed from η for stability: binomial
        ``2 wt (log(1 + e^η) − yη)``, Poisson ``2 wt (e^η − yη)``.  PIRLS and the criterion's varying
        part use it."""
        if self.name == "binomial":
            return 2.0 * wt * (softplus(eta) - y * eta)
        return 2.0 * wt * (jnp.exp(eta) - y * eta)

    def saturated(self, y, wt) -> jnp.ndarray:
        """The part of the deviance residuals that depends on y alone."""
        if self.name == "binomial":
            return 2.0 * wt * (xlogy(y, y) + xlogy(1.0 - y, 1.0 - y))
        return 2.0 * wt * (xlogy(y, y) - y)

    def loglik_constant(self, y, wt) -> jnp.ndarray:
        """``−2 log p(y | μ) − deviance_kernel``, which depends on y alone: binomial ``−2 log C(wt, wt·y)``,
        Poisson ``2 wt log y!`` (``wt`` and ``wt·y`` are whole numbers for the binomial)."""
        if self.name == "binomial":
            m, s = jnp.round(wt), jnp.round(wt * y)
            return -2.0 * (gammaln(m + 1.0) - gammaln(s + 1.0) - gammaln(m - s + 1.0))
        return 2.0 * wt * gammaln(y + 1.0)

    def simulate(self, key, wt, mu) -> jnp.ndarray:
        """Responses drawn at μ, on the response's scale (proportions of ``wt`` trials for the binomial)."""
        if self.name == "binomial":
            trials = jnp.round(wt)
            return jax.random.binomial(key, trials, mu) / jnp.where(trials > 0, trials, 1.0)
        return jax.random.poisson(key, mu).astype(mu.dtype)


def softplus(x: jnp.ndarray) -> jnp.ndarray:
    """log(1 + eˣ), stable (max(x, 0) + log1p(e^−|x|)); cheaper than ``jax.nn.softplus`` on CPUs."""
    return jnp.maximum(x, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


def make_family(family, link: str | None = None) -> Family:
    """The :class:`Family` for ``"binomial"``/``"poisson"`` (or an object with ``name``/``link`` such as
    ``{"family": "binomial", "link": "logit"}``); any other family or a non-canonical link is refused."""
    if isinstance(family, Family):
        return family
    if isinstance(family, dict):
        link = family.get("link", link)
        family = family.get("family")
    if not isinstance(family, str) or family.lower() not in CANONICAL_LINK:
        raise JaxlmmError(
            f"unknown or unsupported family {family!r}: glmer fits 'binomial' (logit link) and 'poisson' (log link)"
        )
    name = family.lower()
    if link is not None and link != CANONICAL_LINK[name]:
        raise JaxlmmError(
            f"link {link!r} is not supported for the {name} family: only the canonical link "
            f"{CANONICAL_LINK[name]!r} is implemented"
        )
    return Family(name)
