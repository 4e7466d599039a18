"""The fitted model (lme4's ``mkMerMod``) and :func:`fit_problem`, the pipeline stage that makes it.

:func:`jaxlmm.api.lmer` = :func:`~jaxlmm.formula.parse_formula` -> :func:`~jaxlmm.design.build_design`
-> :func:`~jaxlmm.shapes.padded_problem` (cross-products padded to a shape bucket)
-> :func:`~jaxlmm.optimize.minimize_theta` over the compiled :func:`~jaxlmm.kernel.criterion_search`
-> :func:`fit_result` -> :class:`LinearMixedModel`.
"""

from __future__ import annotations

import functools
import html
import math
import warnings
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd

from . import ftests, rsq, tables
from .bootstrap import bootstrap, confint, simulate
from .cache import bound_executables
from .crossprod import CrossProducts
from .design import (
    Design,
    Structure,
    new_design_matrices,
    new_offset,
    random_terms_of,
    theta_precondition,
    theta_scale,
    theta_start,
)
from .deviance import criterion_from_parts, profiled_weights, residual_df
from .errors import JaxlmmError
from .kenward_roger import KRAdjusted, adjusted_vcov
from .kernel import (
    FittedParts,
    criterion_and_gradient,
    criterion_hessian,
    criterion_search,
    evaluate,
    random_effect_variances,
)
from .optimize import Control, OptSummary, minimize_theta
from .params import Params, TermCovariance, term_covariances, varcorr_rows
from .profile import confint_profile
from .shapes import Problem, padded_problem

SINGULAR_TOL = 1e-4  # lme4's isSingular tolerance on theta entries with a zero lower bound


class ConvergenceWarning(UserWarning):
    """The optimiser did not reach a point where the projected gradient vanishes."""


@dataclass(frozen=True)
class FitResult:
    """What a fit found, filled once by :func:`fit_result` (MixedModels.jl keeps the same on its model)."""

    params: Params  # β̂, θ̂, σ̂
    criterion: float  # the REML criterion or the ML deviance at θ̂
    ml_deviance: float  # the ML deviance profiled at θ̂ (σ² = r²/n; lme4's deviance(m, REML = FALSE))
    vcov_unscaled: np.ndarray  # (p, p) (R_XᵀR_X)⁻¹: vcov(β̂) = σ̂² × this
    modes: tuple[np.ndarray, ...]  # per block (levels, q): b̂ = Λû
    opt: OptSummary


def fit_result(problem: Problem, reml: bool, opt: OptSummary, parts: FittedParts | None = None) -> FitResult:
    """The estimates at the optimiser's θ, from the fit's kernel (:class:`~jaxlmm.kernel.FittedParts`; given
    as ``parts`` where the search already returned them at that θ)."""
    design = problem.design
    n, p = design.n, design.p
    if parts is None:
        weights = profiled_weights(n, p, reml, xp=np)
        parts = evaluate(opt.theta, problem.cp, problem.structure, weights, theta_scale(design), extras=True).parts
    r2 = float(parts.r2)

    def profiled(reml):  # with lme4's −Σ log wᵢ for prior weights (its ldW)
        weights = profiled_weights(n, p, reml, np)
        return float(criterion_from_parts(parts.logdet_M, parts.logdet_RX, r2, weights, np)) - design.sum_log_weights

    return FitResult(
        params=Params(np.asarray(parts.beta)[:p], np.asarray(opt.theta), math.sqrt(r2 / residual_df(n, p, reml, np))),
        criterion=profiled(reml),
        ml_deviance=profiled(False),  # at θ̂ with σ profiled (σ² = r²/n), as lme4's deviance(m, REML = FALSE)
        vcov_unscaled=np.asarray(parts.vcov_unscaled)[:p, :p],
        modes=tuple(real_levels(design, parts.modes)),
        opt=opt,
    )


def real_levels(design: Design, per_block) -> list[np.ndarray]:
    """Per-block arrays over the padded levels cut to the design's real levels."""
    return [np.asarray(a)[: b.n_levels] for a, b in zip(per_block, design.structure.blocks)]


# ---------------------------------------------------------------- the fitted model
class LinearMixedModel:
    """A linear mixed model fitted by ML or REML; the attributes mirror lme4's accessors.

    ``problem`` is the design with its padded cross-products (:class:`~jaxlmm.shapes.Problem`, what every
    compiled kernel sees), ``result`` the frozen record of the fit (:class:`FitResult`).  ``data_name``
    is what lme4 shows as the call's ``data`` argument (summary's ``Data:`` line, anova's heading).
    """

    def __init__(self, problem: Problem, reml: bool, result: FitResult, data_name: str = "data"):
        self.problem = problem
        self.reml = reml
        self.result = result
        self.data_name = data_name

    @property
    def design(self) -> Design:
        return self.problem.design

    @property
    def cp(self) -> CrossProducts:
        return self.problem.cp

    @property
    def structure(self) -> Structure:
        return self.problem.structure

    @property
    def opt(self) -> OptSummary:
        return self.result.opt

    @property
    def formula(self) -> str:
        return self.design.formula.text

    @functools.cached_property
    def theta_scale(self) -> np.ndarray:
        """The optimiser's scale of each theta entry (:func:`~jaxlmm.design.theta_scale`)."""
        return theta_scale(self.design)

    def criterion_and_gradient(self, theta: np.ndarray, reml: bool | None = None) -> tuple[float, np.ndarray]:
        """The profiled criterion (REML or ML; the fit's by default) and its exact gradient at theta: lme4's
        deviance function (``lmer(..., devFunOnly = TRUE)``, with its −Σ log wᵢ for prior weights) with its
        derivative."""
        value, gradient = criterion_and_gradient(
            theta, self.cp, self.structure, self.reml if reml is None else reml, self.theta_scale
        )
        return value - self.design.sum_log_weights, gradient

    def criterion_hessian(self, theta: np.ndarray, reml: bool | None = None) -> np.ndarray:
        """The criterion's (REML or ML; the fit's by default) Hessian at theta, by central differences of
        the exact gradient."""
        return criterion_hessian(theta, self.cp, self.structure, self.reml if reml is None else reml, self.theta_scale)

    @functools.cached_property
    def condvar(self) -> list[np.ndarray]:
        """``Var(b | y)`` per grouping factor, (levels, q, q) each; computed on first use."""
        return real_levels(self.design, random_effect_variances(self.theta, self.sigma, self.cp, self.structure))

    # ----------------------------------------------------------- basic accessors
    @property
    def params(self) -> Params:
        """The estimates (β̂, θ̂, σ̂) as :class:`~jaxlmm.params.Params`."""
        return self.result.params

    @property
    def theta(self) -> np.ndarray:
        """lme4's ``getME(m, "theta")``."""
        return self.result.params.theta.copy()

    @property
    def conditional_modes(self) -> list[np.ndarray]:
        """``b̂ = Λû`` per grouping factor (levels, q), in the design's block order (lme4's ``ranef``)."""
        return [b.copy() for b in self.result.modes]

    @property
    def fixef(self) -> pd.Series:
        return pd.Series(self.result.params.beta, index=self.design.fixef_names, name="estimate")

    @property
    def sigma(self) -> float:
        return self.result.params.sigma

    @property
    def vcov(self) -> pd.DataFrame:
        names = self.design.fixef_names
        return pd.DataFrame(self.sigma**2 * self.result.vcov_unscaled, index=names, columns=names)

    @property
    def nobs(self) -> int:
        return self.design.n

    @property
    def n_dropped(self) -> int:
        """Rows dropped because a used column was missing (R's na.omit)."""
        return self.design.n_dropped

    @property
    def ngroups(self) -> dict[str, int]:
        return {name: len(levels) for name, levels in zip(self.design.group_names, self.design.group_levels)}

    @property
    def npar(self) -> int:
        """Fixed effects + theta + sigma (the ``df`` of ``logLik``)."""
        return self.design.p + self.design.structure.n_theta + 1

    @property
    def loglik(self) -> float:
        """Log-likelihood of the criterion fitted (the REML log-likelihood for REML fits), as R's logLik."""
        return -0.5 * self.result.criterion

    @property
    def deviance(self) -> float:
        """-2 x the ML log-likelihood at the estimates (lme4's ``deviance(m, REML = FALSE)``)."""
        return self.result.ml_deviance

    @property
    def reml_criterion(self) -> float | None:
        """The REML criterion at convergence (None for an ML fit)."""
        return self.result.criterion if self.reml else None

    @property
    def aic(self) -> float:
        return -2.0 * self.loglik + 2.0 * self.npar

    @property
    def bic(self) -> float:
        return -2.0 * self.loglik + math.log(self.nobs) * self.npar

    @property
    def converged(self) -> bool:
        return self.opt.converged

    @property
    def singular(self) -> bool:
        """lme4's ``isSingular``: a theta entry with lower bound 0 below 1e-4."""
        low = self.design.structure.lower
        return bool(np.any(self.theta[low == 0] < SINGULAR_TOL))

    # ----------------------------------------------------------- covariance parameters
    def term_covariances(self) -> list[TermCovariance]:
        """(unique group name, column names, σ²ΛΛᵀ) per random-effects term in lme4's order."""
        return term_covariances(self.design, self.theta, self.sigma)

    @property
    def varcorr(self) -> pd.DataFrame:
        """R's ``as.data.frame(VarCorr(m))``: grp, var1, var2, vcov, sdcor (with the Residual row)."""
        return pd.DataFrame(
            varcorr_rows(self.term_covariances(), self.sigma), columns=["grp", "var1", "var2", "vcov", "sdcor"]
        )

    # ----------------------------------------------------------- values
    def _random_part(self, Z: list[np.ndarray], codes: list[np.ndarray]) -> np.ndarray:
        out = np.zeros(Z[0].shape[0])
        for Zk, ck, bk in zip(Z, codes, self.result.modes):
            seen = ck >= 0
            out[seen] += np.einsum("ij,ij->i", Zk[seen], bk[ck[seen]])
        return out

    def _offset(self) -> np.ndarray | float:
        return 0.0 if self.design.offset is None else self.design.offset

    def fitted(self) -> np.ndarray:
        """Conditional fitted values ``offset + Xβ̂ + Zb̂``."""
        d = self.design
        return self._offset() + d.X @ self.result.params.beta + self._random_part(d.Z, d.codes)

    def residuals(self, type: str = "response") -> np.ndarray:
        """lme4's ``residuals(m, type)``: ``"response"`` ``y − fitted`` (the default), or ``"pearson"``
        ``√wᵢ (y − fitted)`` (the same without prior weights)."""
        if type not in ("response", "pearson"):
            raise JaxlmmError(f"type must be 'response' or 'pearson', not {type!r}")
        r = self.design.y - self.fitted()
        return r * np.sqrt(self.design.weights) if type == "pearson" and self.design.weights is not None else r

    def predict(
        self, newdata: pd.DataFrame | None = None, re_form: str | None = None, allow_new_levels: bool = False
    ) -> np.ndarray:
        """lme4's ``predict``: ``Xβ̂`` plus the random effects that ``re_form`` keeps: ``None`` all of them,
        ``"NA"`` or ``"~0"`` none (the population prediction), a formula such as ``"~(1 | Subject)"`` those
        terms only.

        On ``newdata``, every data-dependent term (``scale(x)``, ``poly(x, 2)``, ``ns``, ``bs``, centring
        with ``mean(x)``) uses the training data's statistics (R's ``makepredictcall``), so one row predicts
        as it would among the fitted rows.  A grouping level not in the fit is an error unless
        ``allow_new_levels``, which gives it random effects 0 (lme4's ``allow.new.levels``).

        The offset is included: on ``newdata`` the formula's ``offset(expr)`` terms are evaluated there, and
        an ``offset=`` argument of the fit is not applied (as lme4's ``predict``; a warning says so).
        """
        bars = random_terms_of(self.design, re_form)
        beta = self.result.params.beta
        if newdata is None:
            d = self.design
            X, Z, codes = d.X, [z.copy() for z in d.Z], d.codes
            for term in d.terms:
                if bars is not None and term.bar not in bars:
                    Z[term.block][:, list(term.block_columns)] = 0.0
            offset = self._offset()
        else:
            X, Z, codes = new_design_matrices(self.design, newdata, bars, bool(allow_new_levels))
            if self.design.offset_argument:
                warnings.warn(
                    "the offset= argument of the fit is not applied to newdata (as lme4's predict); write the "
                    "offset as an offset(...) term in the formula to have it evaluated on newdata",
                    UserWarning,
                    stacklevel=2,
                )
            offset = new_offset(self.design, newdata)
        pred = offset + X @ beta
        return pred if bars is not None and not bars else pred + self._random_part(Z, codes)

    # ----------------------------------------------------------- tables (see tables.py, rsq.py)
    def refit_ml(self) -> LinearMixedModel:
        """The same model fitted by ML (lme4's ``refitML``)."""
        if not self.reml:
            return self
        refit = fit_problem(self.problem, reml=False, control=self.opt.control)
        refit.data_name = self.data_name
        return refit

    def refit_reml(self) -> LinearMixedModel:
        """The same model fitted by REML (pbkrtest's ``update(m, REML = TRUE)``)."""
        return self if self.reml else fit_problem(self.problem, reml=True, control=self.opt.control)

    @functools.cached_property
    def kenward_roger(self) -> KRAdjusted:
        """pbkrtest's ``vcovAdj(m)`` (Kenward–Roger's adjusted vcov of β̂, with its P and W), at this fit's
        estimates; computed on first use (:mod:`jaxlmm.kenward_roger`)."""
        return adjusted_vcov(self.theta, self.sigma, self.design)

    @property
    def vcov_adjusted(self) -> pd.DataFrame:
        """pbkrtest's ``vcovAdj(m)``: ML fits are refitted by REML first, as pbkrtest does."""
        names = self.design.fixef_names
        return pd.DataFrame(self.refit_reml().kenward_roger.vcov_adjusted, index=names, columns=names)

    def coef_table(self, ddf: str = "Satterthwaite") -> pd.DataFrame:
        """lmerTest's coefficient table with Satterthwaite (default) or Kenward–Roger df and p-values."""
        ftests.check_ddf(self, ddf)
        return tables.coef_table(self, ddf)

    def tidy(self, ddf: str = "Satterthwaite") -> pd.DataFrame:
        """broom.mixed's ``tidy(m)``: fixed rows (Satterthwaite or Kenward–Roger df, p) and ran_pars rows."""
        ftests.check_ddf(self, ddf)
        return tables.tidy(self, ddf)

    def anova(self, ddf: str = "Satterthwaite") -> pd.DataFrame:
        """lmerTest's ``anova(m)``: the type III F test of each fixed term (:func:`jaxlmm.ftests.type3_anova`)."""
        return ftests.type3_anova(self, ddf)

    def contest(self, L, ddf: str = "Satterthwaite", rhs=0.0) -> pd.DataFrame:
        """lmerTest's ``contest(m, L)``: a t test for one contrast row, an F test for several."""
        return ftests.contest(self, L, ddf, rhs)

    def ranef(self) -> pd.DataFrame:
        """R's ``as.data.frame(ranef(m, condVar = TRUE))``."""
        return tables.ranef(self)

    def coef(self) -> dict[str, pd.DataFrame]:
        """R's ``coef(m)``: per grouping factor, fixed + random effects per level."""
        return tables.coef(self)

    def group_coefficients(self, group: str | None = None) -> pd.DataFrame:
        """The seed workflow's per-group table (intercept, x, group, ranef_intercept, ranef_x)."""
        return tables.group_coefficients(self, group)

    def rsq(self) -> dict[str, float]:
        """R² of the rsq package (Zhang 2022): model, fixed, random."""
        return rsq.rsq_lmm(self)

    def r2_nakagawa(self) -> dict[str, float]:
        """Nakagawa & Schielzeth's marginal and conditional R²."""
        return rsq.r2_nakagawa(self)

    def summary(self, ddf: str = "Satterthwaite") -> tables.Summary:
        """lmerTest's ``summary(m)`` (``ddf="Kenward-Roger"``: ``summary(m, ddf = "Kenward-Roger")``): its
        text, as a :class:`~jaxlmm.tables.Summary` (a ``str`` whose repr is the text, so a REPL shows it
        once); ``print(m.summary())`` prints it."""
        ftests.check_ddf(self, ddf)
        return tables.summary_text(self, ddf)

    # ----------------------------------------------------------- simulation (see bootstrap.py)
    def simulate(self, nsim: int = 1, seed: int | None = None) -> np.ndarray:
        """lme4's ``simulate``: (n, nsim) responses with new random effects and residuals."""
        _check_nsim(nsim)
        return simulate(self.design, self.params, nsim, seed)

    def bootstrap(
        self, nsim: int = 1000, seed: int | None = None, progress: bool | None = None, simulation: str = "plain"
    ):
        """lme4's ``bootMer``: a :class:`~jaxlmm.batch.BatchFit` of ``nsim`` batched refits
        (``simulation="direct"`` draws the responses' cross-products directly: same law, cheaper)."""
        _check_nsim(nsim)
        return bootstrap(self.problem, self.params, self.reml, nsim, seed, progress, simulation)

    def confint(self, method: str = "wald", level: float = 0.95, nsim: int = 1000, seed: int | None = None):
        """Wald intervals for the fixed effects, ``method="boot"`` percentile intervals for all parameters, or
        ``method="profile"`` lme4's profile-likelihood intervals (:func:`jaxlmm.profile.confint_profile`)."""
        if method not in ("wald", "boot", "profile"):
            raise JaxlmmError(f"method must be 'wald', 'boot' or 'profile', not {method!r}")
        if not 0 < level < 1:
            raise JaxlmmError(f"level must be between 0 and 1, not {level!r}")
        if method == "profile":
            return confint_profile(self, level)
        if method == "boot":
            _check_nsim(nsim)
        return confint(self, method, level, nsim, seed)

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(tables.summary_text(self))}</pre>"

    def __repr__(self) -> str:
        kind = "REML" if self.reml else "ML"
        return (
            f"<LinearMixedModel {self.formula!r} by {kind}: logLik {self.loglik:.4f}, "
            f"{self.nobs} obs, groups {self.ngroups}>"
        )


def _check_nsim(nsim) -> None:
    if not isinstance(nsim, (int, np.integer)) or isinstance(nsim, bool) or nsim < 1:
        raise JaxlmmError(f"nsim must be a positive integer, not {nsim!r}")


# ---------------------------------------------------------------- the pipeline
def fit_problem(problem: Problem, reml: bool = True, control: Control | None = None) -> LinearMixedModel:
    """Optimise the criterion of a padded design (:func:`~jaxlmm.shapes.padded_problem`) and assemble the
    model (lme4's ``optimizeLmer`` then ``mkMerMod``).

    A fit that stops before the projected gradient vanishes warns, as lme4's "Model failed to converge"
    check does, with a :class:`ConvergenceWarning`, and has ``converged`` False (``opt.message`` says why).
    """
    bound_executables()
    control = control or Control()
    design, cp, structure = problem
    scale = theta_scale(design)
    precondition = theta_precondition(design, scale)
    weights = profiled_weights(design.n, design.p, reml, xp=np)
    value_and_grad = partial(criterion_and_gradient, cp=cp, structure=structure, reml=reml, scale=scale)

    searched = {}  # the last search's end and the fitted parts there (invariant under its column flips)

    def search(theta, budget, rescale):
        r = criterion_search(
            theta, budget, rescale, scale, precondition, weights, True, cp, structure, control.search_gtol
        )
        searched.update(theta=r.signs * r.theta, parts=r.parts)
        return searched["theta"], float(r.f), r.signs * r.g, int(r.steps), float(r.decrement)

    opt = minimize_theta(value_and_grad, search, theta_start(structure) * scale, structure.lower, scale, control)
    if not opt.converged:
        warnings.warn(f"Model failed to converge: {opt.message}", ConvergenceWarning, stacklevel=3)
    parts = searched["parts"] if np.array_equal(searched["theta"], opt.theta) else None  # else evaluated anew
    return LinearMixedModel(problem, reml, fit_result(problem, reml, opt, parts))


def fit_design(design: Design, reml: bool = True, control: Control | None = None) -> LinearMixedModel:
    """:func:`fit_problem` of a design's :func:`~jaxlmm.shapes.padded_problem`."""
    return fit_problem(padded_problem(design), reml, control)
