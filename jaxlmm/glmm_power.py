"""Power by simulation of glmer models (simr's ``powerSim``/``powerCurve`` for binomial and Poisson fits):
the tests of :func:`jaxlmm.power` on responses simulated from a glmer pilot, every refit batched in
vmapped lanes (:func:`jaxlmm.glmm_batch.refit_responses`).

* ``"lrt"`` — the likelihood ratio of the model against the model without the term's columns (a factor
  or an interaction as a whole), both refitted by Laplace (or the pilot's AGQ) to the same response,
  against χ² with as many df as the term has columns (lme4's ``anova(small, full)``);
* ``"z"`` — the Wald test of the term's coefficients with lme4's ``vcov`` (``2 H⁻¹``'s β block, H the
  criterion's Hessian in (θ, β) by central differences of its exact gradient, per refit):
  ``z² = β̂ᵀ V⁻¹ β̂`` against χ² with the term's df — for one coefficient the two-sided z test of
  ``summary(g)``, simr's default for a glmer's fixed effect.

Every refit (of the full and of each reduced model) starts at the parameters the responses are simulated
with, the criterion's Hessian there on the design's own response its first inverse-Hessian estimate; no
model is fitted before the batched refits.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.special

from .compare import lrt_statistic
from .errors import DataError
from .glmm import GeneralizedLinearMixedModel
from .glmm_batch import chunk_lanes, refit_responses
from .glmm_design import GlmmDesign, build_glmm_design
from .glmm_kernel import pad_rows, x_scale
from .laplace import varying_criterion
from .model import SINGULAR_TOL
from .params import theta_from_covariance

GLMM_TESTS = ("lrt", "z")


@dataclass(frozen=True)
class GlmmSimulationModel:
    """A glmer design to simulate from (simr's extended model): ``start`` the glmer of the extended data
    (at the pilot's parameters, not fitted) and ``x = (θ, β)`` the pilot's parameters."""

    start: GeneralizedLinearMixedModel
    x: np.ndarray

    @property
    def data(self) -> pd.DataFrame:
        return self.start.design.data

    @property
    def design(self):
        return self.start.design

    @property
    def formula(self) -> str:
        return self.start.formula

    @property
    def fixef(self) -> pd.Series:
        return pd.Series(self.x[self.start.structure.n_theta :], index=self.design.fixef_names, name="estimate")

    @property
    def theta(self) -> np.ndarray:
        return self.x[: self.start.structure.n_theta].copy()

    @property
    def nobs(self) -> int:
        return self.start.nobs

    @property
    def ngroups(self) -> dict[str, int]:
        return self.start.ngroups

    def simulate(self, nsim: int = 1, seed: int | None = None) -> np.ndarray:
        """(n, nsim) responses simulated at the pilot's parameters (lme4's ``simulate``)."""
        return self.start.simulate(nsim, seed, self.x)

    def __repr__(self) -> str:
        return f"<GlmmSimulationModel {self.formula!r}: {self.nobs} obs, groups {self.ngroups}>"


def is_glmm(model) -> bool:
    return isinstance(model, (GeneralizedLinearMixedModel, GlmmSimulationModel))


def glmm_pilot(model) -> tuple[GeneralizedLinearMixedModel, np.ndarray]:
    """The fitted glmer that starts the refits and the parameters x = (θ, β) to simulate with."""
    if isinstance(model, GlmmSimulationModel):
        return model.start, np.array(model.x)
    return model, np.array(model.x)


def glmm_truth(model: GeneralizedLinearMixedModel, x: np.ndarray, fixef, covariance, sigma) -> np.ndarray:
    """``x`` with the given fixed effects and random-effects covariances (per grouping factor) replaced."""
    if sigma is not None:
        raise DataError("a binomial or Poisson glmer has no residual sd: sigma= does not apply")
    d, n_theta = model.design, model.structure.n_theta
    theta, beta = x[:n_theta].copy(), x[n_theta:].copy()
    for name, value in (fixef or {}).items():
        if name not in d.fixef_names:
            raise DataError(f"fixef names {name!r}, not a coefficient of the model ({', '.join(d.fixef_names)})")
        beta[d.fixef_names.index(name)] = float(value)
    unknown = set(covariance or {}) - set(d.group_names)
    if unknown:
        raise DataError(f"covariance names {sorted(unknown)}, not grouping factors ({', '.join(d.group_names)})")
    if covariance:
        current = {name: (lam := b.lambda_of(theta)) @ lam.T for name, b in zip(d.group_names, d.structure.blocks)}
        theta = theta_from_covariance(d, {**current, **covariance}, 1.0)
    return np.concatenate([theta, beta])


def check_glmm_tests(tests: tuple[str, ...]) -> None:
    bad = [t for t in tests if t not in GLMM_TESTS]
    if bad:
        raise DataError(
            f"test {bad[0]!r} does not apply to a glmer (no residual scale, no denominator df): use "
            f"{' or '.join(map(repr, GLMM_TESTS))}"
        )


def started(model: GeneralizedLinearMixedModel, gd: GlmmDesign, x: np.ndarray) -> GeneralizedLinearMixedModel:
    """A glmer of design ``gd`` at x = (θ, β) (no fit): where the batched refits start, with the criterion's
    Hessian there (on ``gd``'s own response) as their first inverse-Hessian estimate.  Starting at the
    simulation's parameters rather than at the pilot's estimates keeps a pilot at a boundary (θ = 0, where
    the criterion's gradient in θ vanishes) from holding every refit there."""
    return GeneralizedLinearMixedModel(
        gd, model.nagq, dataclasses.replace(model.opt, theta=np.array(x, dtype=float)), model.control
    )


def without_columns(model: GeneralizedLinearMixedModel, columns: list[int]) -> GeneralizedLinearMixedModel:
    """``model`` (at its x) without the X columns ``columns`` and their coefficients."""
    d, n_theta = model.design, model.structure.n_theta
    keep = np.setdiff1d(np.arange(d.p), columns)
    small = dataclasses.replace(d, X=d.X[:, keep], fixef_names=[d.fixef_names[j] for j in keep])
    x = np.concatenate([model.x[:n_theta], model.x[n_theta:][keep]])
    return started(model, dataclasses.replace(model.gdesign, design=small), x)


def rebuilt(model: GeneralizedLinearMixedModel, data: pd.DataFrame) -> GeneralizedLinearMixedModel:
    """The glmer of ``model``'s formula and family on other data (extended, or a subset of rows), at the
    model's x.  Prior weights and offsets must come from the formula (cbind, offset()) so that they follow
    the rows."""
    gd = model.gdesign
    again = build_glmm_design(gd.formula, gd.design.data, gd.family)
    if again.n != gd.n or not (np.allclose(again.wt, gd.wt) and np.allclose(again.offset, gd.offset)):
        raise DataError(
            "this glmer has weights= or offset= arguments, which do not follow new rows: put them in the "
            "formula (cbind(successes, failures), offset(column)) to extend it or run a power curve along a factor"
        )
    new = build_glmm_design(gd.formula, data, gd.family)
    if new.design.fixef_names != gd.design.fixef_names:
        raise DataError(
            f"the new design's fixed effects ({', '.join(new.design.fixef_names)}) are not the model's "
            f"({', '.join(gd.design.fixef_names)}): extend along a grouping factor, not a fixed-effect factor"
        )
    if new.design.structure.n_theta != gd.design.structure.n_theta:
        raise DataError("the new design's random effects differ from the model's")
    return started(model, new, model.x)


@dataclass(frozen=True)
class GlmmPoint:
    """One design of a glmer power analysis: the full model's start fit, the parameters to simulate with,
    and per term the start fit of the model without the term's columns."""

    full: GeneralizedLinearMixedModel
    x: np.ndarray
    reduced: dict[str, GeneralizedLinearMixedModel]
    terms: dict[str, list[int]]


def glmm_point(model: GeneralizedLinearMixedModel, x: np.ndarray, terms: dict[str, list[int]], tests) -> GlmmPoint:
    """The :class:`GlmmPoint` of ``model``'s design simulated at ``x``, its refits started at ``x``."""
    full = started(model, model.gdesign, x)
    reduced = {name: without_columns(full, columns) for name, columns in terms.items()} if "lrt" in tests else {}
    return GlmmPoint(full, x, reduced, terms)


@partial(jax.jit, static_argnames=("structure", "family", "nagq"))
def _lane_hessians(x, y, steps, data, structure, family, nagq):
    """Per lane (x, response), the criterion's Hessian by central differences of its exact gradient with
    steps ``steps`` (:func:`jaxlmm.optimize.difference_hessian`), symmetrised; 16 lanes at a time, and on
    the CPU one lane at a time where crossed factors put LAPACK's Cholesky in every lane (vmapped lanes of
    its derivatives hung in XLA's CPU runtime, as in :func:`jaxlmm.inference.varpar_jets_lanes`)."""

    def one(xk, yk):
        lane = data._replace(y=yk)
        grad = jax.grad(lambda v: varying_criterion(v, lane, structure, family, nagq))
        E = jnp.diag(steps)
        columns = jax.vmap(lambda e: grad(xk + e) - grad(xk - e))(E) / (2.0 * steps)[:, None]
        return 0.5 * (columns + columns.T)

    dense = len(structure.blocks) > 1 and jax.default_backend() == "cpu"
    return jax.lax.map(lambda lane: one(*lane), (x, y), batch_size=1 if dense else 16)


def lane_hessians(model: GeneralizedLinearMixedModel, x: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """:func:`_lane_hessians` of B refits (x (B, dim), responses Y (n, B)) in calls of one lane width."""
    B = x.shape[0]
    size = chunk_lanes(model.nobs, B)
    steps = jnp.asarray(model.control.hessian_step * x_scale(model.gdesign))
    data, structure = model.problem.data, model.problem.structure  # padded, as the kernels see them
    Y = pad_rows(Y, data.y.shape[0])  # padded rows: weight 0, response 0
    out = []
    for first in range(0, B, size):
        lanes = np.arange(first, first + size) % B  # the last call wraps round (fixed shape)
        hessians = _lane_hessians(
            jnp.asarray(x[lanes]), jnp.asarray(Y[:, lanes].T), steps, data, structure, model.family, model.nagq
        )
        out.append(jax.device_get(hessians))
    return np.concatenate(out)[:B]


def _singular(fits, structure) -> np.ndarray:
    diag = np.isfinite(structure.lower)
    return np.any(np.abs(fits.theta[:, diag]) < SINGULAR_TOL, axis=1)


def test_glmm_point(
    point: GlmmPoint, Y: np.ndarray, tests: tuple[str, ...]
) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For each (term, test): p-values, converged and singular flags of the responses ``Y`` (n, B)."""
    full_model, out = point.full, {}
    full = refit_responses(full_model, Y)
    full_singular = _singular(full, full_model.structure)
    if "lrt" in tests:
        for name, columns in point.terms.items():
            small_model = point.reduced[name]
            small = refit_responses(small_model, Y)
            lrt, negative = lrt_statistic(small.criterion, full.criterion)  # within the tolerance of 0: 0
            ok = full.converged & small.converged & ~negative  # a clearly negative LRT is a fitting failure
            singular = full_singular | _singular(small, small_model.structure)
            out[(name, "lrt")] = (scipy.special.chdtrc(len(columns), lrt), ok, singular)
    if "z" in tests:
        good = full.converged
        x = np.where(good[:, None], full.x, full_model.x)  # failed refits: evaluated anywhere, not counted
        H = lane_hessians(full_model, x, Y)
        n_theta = full_model.structure.n_theta
        with np.errstate(invalid="ignore"):
            V = 2.0 * np.linalg.inv(H)[:, n_theta:, n_theta:]
            for name, columns in point.terms.items():
                b = full.beta[:, columns]
                Vc = V[:, columns][:, :, columns]
                wald = np.einsum("bi,bi->b", b, np.linalg.solve(Vc, b[:, :, None])[:, :, 0])
                p = scipy.special.chdtrc(len(columns), wald)
                out[(name, "z")] = (p, good & np.isfinite(p) & (wald >= 0), full_singular)
    return out
