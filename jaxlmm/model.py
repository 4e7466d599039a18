"""The fitted model (lme4's ``mkMerMod``) and :func:`lmer`, the pipeline that makes it.

``lmer`` = :func:`~jaxlmm.formula.parse_formula` -> :func:`~jaxlmm.design.build_design`
-> :func:`~jaxlmm.crossprod.crossproducts` padded to a shape bucket (:mod:`jaxlmm.shapes`)
-> :func:`~jaxlmm.optimize.minimize_theta` over the compiled :func:`~jaxlmm.kernel.criterion_search`
-> :class:`LinearMixedModel`.
"""

from __future__ import annotations

import functools
import math
import warnings
from functools import partial

import numpy as np
import pandas as pd

from . import rsq, tables
from .cache import bound_executables
from .crossprod import CrossProducts, crossproducts
from .design import Design, Structure, build_design, new_design_matrices, theta_start
from .deviance import LOG_2PI, profiled_weights
from .errors import JaxlmmError
from .formula import parse_formula
from .kernel import criterion_search, evaluate, random_effect_variances
from .optimize import Control, OptSummary, difference_hessian, minimize_theta
from .params import Params, TermCovariance, term_covariances, varcorr_rows
from .shapes import pad_to_bucket

SINGULAR_TOL = 1e-4  # lme4's isSingular tolerance on theta entries with a zero lower bound


class ConvergenceWarning(UserWarning):
    """The optimiser did not reach a point where the projected gradient vanishes."""


def criterion_and_gradient(theta, cp: CrossProducts, structure: Structure, reml: bool, scale: np.ndarray
                           ) -> tuple[float, np.ndarray]:
    """The profiled criterion and its gradient at theta (inf and 0 where not finite)."""
    weights = profiled_weights(float(cp.n), float(cp.p), reml, xp=np)
    r = evaluate(theta, cp, structure, weights, scale)
    return float(r.f), np.asarray(r.g)


def theta_scale(design: Design) -> np.ndarray:
    """Per theta entry, 1 / root mean square of the Z column of its Lambda row (1 for a zero column)."""
    blocks, rows, _ = design.structure.parmap.T
    rms = np.array([np.sqrt(np.mean(design.Z[k][:, r] ** 2)) for k, r in zip(blocks, rows)])
    return np.where(rms > 0, 1.0 / np.where(rms > 0, rms, 1.0), 1.0)


def theta_precondition(design: Design, scale: np.ndarray) -> np.ndarray:
    """A guess of the inverse Hessian's diagonal, up to a factor: ``scale² / levels`` of each theta's
    grouping factor (the criterion's curvature in a variance parameter grows with its number of levels;
    on InstEval a factor with 14 levels sits beside ones with 1,128 and 2,972)."""
    levels = np.array([design.structure.blocks[k].n_levels for k in design.structure.parmap[:, 0]])
    return scale**2 / levels


# ---------------------------------------------------------------- the fitted model
class LinearMixedModel:
    """A linear mixed model fitted by ML or REML; the attributes mirror lme4's accessors.

    ``cp`` and ``structure`` are the cross-products padded to their shape bucket and the padded structure
    (:mod:`jaxlmm.shapes`), which every compiled kernel sees; ``design`` keeps the real sizes and names.
    """

    def __init__(self, design: Design, cp: CrossProducts, structure: Structure, reml: bool, opt: OptSummary):
        self.design = design
        self.cp = cp
        self.structure = structure
        self.reml = reml
        self.opt = opt
        self.formula = design.formula.text
        parts = evaluate(opt.theta, cp, structure, profiled_weights(design.n, design.p, reml, xp=np),
                         self.theta_scale, extras=True).parts
        n, p = design.n, design.p
        nu = n - p if reml else n
        r2 = float(parts.r2)
        self._criterion = float(parts.logdet_M + (parts.logdet_RX if reml else 0.0)
                                + nu * (1.0 + LOG_2PI + math.log(r2 / nu)))
        self._beta = np.asarray(parts.beta)[:p]  # the leading block: the rest are inert padded columns
        self._sigma = math.sqrt(r2 / nu)
        self._vcov_unscaled = np.asarray(parts.vcov_unscaled)[:p, :p]
        self._ml_deviance = float(parts.logdet_M + n * (LOG_2PI + 2.0 * math.log(self._sigma)) + r2 / self._sigma**2)
        self._modes = self._real_levels(parts.modes)

    def _real_levels(self, per_block) -> list[np.ndarray]:
        """Per-block arrays over the padded levels cut to the design's real levels."""
        return [np.asarray(a)[: b.n_levels] for a, b in zip(per_block, self.design.structure.blocks)]

    @functools.cached_property
    def theta_scale(self) -> np.ndarray:
        """The optimiser's scale of each theta entry (:func:`theta_scale`)."""
        return theta_scale(self.design)

    def criterion_and_gradient(self, theta: np.ndarray, reml: bool | None = None) -> tuple[float, np.ndarray]:
        """The criterion (REML or ML; the fit's by default) and its exact gradient at theta."""
        reml = self.reml if reml is None else reml
        return criterion_and_gradient(theta, self.cp, self.structure, reml, self.theta_scale)

    def criterion_hessian(self, theta: np.ndarray, reml: bool | None = None) -> np.ndarray:
        """The criterion's Hessian at theta, by central differences of the exact gradient (2·len(theta)
        gradients through the fit's own compiled kernel)."""
        return difference_hessian(partial(self.criterion_and_gradient, reml=reml), np.asarray(theta, dtype=float),
                                  self.theta_scale)

    @functools.cached_property
    def condvar(self) -> list[np.ndarray]:
        """``Var(b | y)`` per grouping factor, (levels, q, q) each; computed on first use."""
        return self._real_levels(random_effect_variances(self.theta, self._sigma, self.cp, self.structure))

    # ----------------------------------------------------------- basic accessors
    @property
    def theta(self) -> np.ndarray:
        """lme4's ``getME(m, "theta")``."""
        return np.asarray(self.opt.theta)

    @property
    def params(self) -> Params:
        """The estimates (β̂, θ̂, σ̂) as :class:`~jaxlmm.params.Params`."""
        return Params(self._beta.copy(), self.theta.copy(), self._sigma)

    @property
    def conditional_modes(self) -> list[np.ndarray]:
        """``b̂ = Λû`` per grouping factor (levels, q), in the design's block order (lme4's ``ranef``)."""
        return [b.copy() for b in self._modes]

    @property
    def fixef(self) -> pd.Series:
        return pd.Series(self._beta, index=self.design.fixef_names, name="estimate")

    @property
    def sigma(self) -> float:
        return self._sigma

    @property
    def vcov(self) -> pd.DataFrame:
        names = self.design.fixef_names
        return pd.DataFrame(self._sigma**2 * self._vcov_unscaled, index=names, columns=names)

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
        return -0.5 * self._criterion

    @property
    def deviance(self) -> float:
        """-2 x the ML log-likelihood at the estimates (lme4's ``deviance(m, REML = FALSE)``)."""
        return self._ml_deviance

    @property
    def reml_criterion(self) -> float | None:
        """The REML criterion at convergence (None for an ML fit)."""
        return self._criterion if self.reml else None

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
        return term_covariances(self.design, self.theta, self._sigma)

    @property
    def varcorr(self) -> pd.DataFrame:
        """R's ``as.data.frame(VarCorr(m))``: grp, var1, var2, vcov, sdcor (with the Residual row)."""
        return pd.DataFrame(varcorr_rows(self.term_covariances(), self._sigma),
                            columns=["grp", "var1", "var2", "vcov", "sdcor"])

    # ----------------------------------------------------------- values
    def _random_part(self, Z: list[np.ndarray], codes: list[np.ndarray]) -> np.ndarray:
        out = np.zeros(Z[0].shape[0])
        for Zk, ck, bk in zip(Z, codes, self._modes):
            seen = ck >= 0
            out[seen] += np.einsum("ij,ij->i", Zk[seen], bk[ck[seen]])
        return out

    def fitted(self) -> np.ndarray:
        """Conditional fitted values ``Xβ̂ + Zb̂``."""
        d = self.design
        return d.X @ self._beta + self._random_part(d.Z, d.codes)

    def residuals(self) -> np.ndarray:
        """Response residuals ``y − fitted``."""
        return self.design.y - self.fitted()

    def predict(self, newdata: pd.DataFrame | None = None, re_form: str | None = None) -> np.ndarray:
        """Predictions; ``re_form=None`` includes all random effects, ``"~0"`` (or ``"NA"``) none.

        Levels not seen in the fit get the population-level prediction (random effect 0).
        """
        use_re = re_form is None
        if not use_re and str(re_form).replace(" ", "") not in ("~0", "NA", "~1-1"):
            raise ValueError("re_form must be None (all random effects) or '~0' (none)")
        if newdata is None:
            return self.fitted() if use_re else self.design.X @ self._beta
        X, Z, codes = new_design_matrices(self.design, newdata)
        pred = X @ self._beta
        return pred + self._random_part(Z, codes) if use_re else pred

    # ----------------------------------------------------------- tables (see tables.py, rsq.py)
    def refit_ml(self) -> LinearMixedModel:
        """The same model fitted by ML (lme4's ``refitML``)."""
        return self if not self.reml else fit_design(self.design, reml=False, padded=(self.cp, self.structure))

    def coef_table(self) -> pd.DataFrame:
        """lmerTest's coefficient table with Satterthwaite df and p-values."""
        return tables.coef_table(self)

    def tidy(self) -> pd.DataFrame:
        """broom.mixed's ``tidy(m)``: fixed rows (Satterthwaite df, p) and ran_pars rows."""
        return tables.tidy(self)

    def ranef(self) -> pd.DataFrame:
        """R's ``as.data.frame(ranef(m, condVar = TRUE))``."""
        return tables.ranef(self)

    def coef(self) -> dict[str, pd.DataFrame]:
        """R's ``coef(m)``: per grouping factor, fixed + random effects per level."""
        return tables.coef(self)

    def group_coefficients(self, group: str | None = None) -> pd.DataFrame:
        """The seed workflow's per-group table (intercept, slope, group, ranef_intercept, ranef_x)."""
        return tables.group_coefficients(self, group)

    def rsq(self) -> dict[str, float]:
        """R² of the rsq package (Zhang 2022): model, fixed, random."""
        return rsq.rsq_lmm(self)

    def r2_nakagawa(self) -> dict[str, float]:
        """Nakagawa & Schielzeth's marginal and conditional R²."""
        return rsq.r2_nakagawa(self)

    def summary(self) -> str:
        """lmerTest's ``summary(m)`` as text (also printed)."""
        text = tables.summary_text(self)
        print(text)
        return text

    # ----------------------------------------------------------- simulation (see bootstrap.py)
    def simulate(self, nsim: int = 1, seed: int | None = None) -> np.ndarray:
        """lme4's ``simulate``: (n, nsim) responses with new random effects and residuals."""
        from .bootstrap import simulate

        _check_nsim(nsim)
        return simulate(self, nsim, seed)

    def bootstrap(self, nsim: int = 1000, seed: int | None = None, progress: bool | None = None,
                  simulation: str = "plain"):
        """lme4's ``bootMer``: a :class:`~jaxlmm.batch.BatchFit` of ``nsim`` batched refits
        (``simulation="direct"`` draws the responses' cross-products directly: same law, cheaper)."""
        from .bootstrap import bootstrap

        _check_nsim(nsim)
        return bootstrap(self, nsim, seed, progress, simulation)

    def confint(self, method: str = "wald", level: float = 0.95, nsim: int = 1000, seed: int | None = None):
        """Wald intervals for the fixed effects, or ``method="boot"`` percentile intervals for all parameters."""
        from .bootstrap import confint

        if method not in ("wald", "boot"):
            raise JaxlmmError(f"method must be 'wald' or 'boot', not {method!r}")
        if not 0 < level < 1:
            raise JaxlmmError(f"level must be between 0 and 1, not {level!r}")
        if method == "boot":
            _check_nsim(nsim)
        return confint(self, method, level, nsim, seed)

    def _repr_html_(self) -> str:
        import html

        return f"<pre>{html.escape(tables.summary_text(self))}</pre>"

    def __repr__(self) -> str:
        kind = "REML" if self.reml else "ML"
        return (f"<LinearMixedModel {self.formula!r} by {kind}: logLik {self.loglik:.4f}, "
                f"{self.nobs} obs, groups {self.ngroups}>")


def _check_nsim(nsim) -> None:
    if not isinstance(nsim, (int, np.integer)) or isinstance(nsim, bool) or nsim < 1:
        raise JaxlmmError(f"nsim must be a positive integer, not {nsim!r}")


# ---------------------------------------------------------------- the pipeline
def fit_design(design: Design, reml: bool = True, padded: tuple[CrossProducts, Structure] | None = None,
               max_iter: int = 2000) -> LinearMixedModel:
    """Optimise the criterion of an already built design and assemble the model.

    The cross-products are padded to their shape bucket (:func:`~jaxlmm.shapes.pad_to_bucket`; ``padded``
    gives them ready), so fits of designs of similar size share compiled kernels.  A fit that stops
    before the projected gradient vanishes warns, as lme4's "Model failed to converge" check does, with a
    :class:`ConvergenceWarning`, and has ``converged`` False (``opt.message`` says why).
    """
    bound_executables()
    if padded is None:
        padded = pad_to_bucket(crossproducts(design.y, design.X, design.codes, design.Z, design.structure),
                               design.structure)
    cp, structure = padded

    scale = theta_scale(design)
    precondition = theta_precondition(design, scale)
    weights = profiled_weights(design.n, design.p, reml, xp=np)

    def value_and_grad(theta):
        r = evaluate(theta, cp, structure, weights, scale)
        return float(r.f), np.asarray(r.g)

    def search(theta, budget, rescale):
        r = criterion_search(theta, budget, rescale, scale, precondition, weights, False, cp, structure,
                             Control.search_gtol)
        return r.signs * r.theta, float(r.f), r.signs * r.g, int(r.steps), float(r.decrement)

    opt = minimize_theta(value_and_grad, search, theta_start(structure) * scale, structure.lower, scale,
                         Control(max_iter=max_iter))
    if not opt.converged:
        warnings.warn(f"Model failed to converge: {opt.message}", ConvergenceWarning, stacklevel=3)
    return LinearMixedModel(design, cp, structure, reml, opt)


def lmer(formula: str, data: pd.DataFrame, reml: bool = True, max_iter: int = 2000) -> LinearMixedModel:
    """Fit a linear mixed model given by an lme4 formula, by REML (default) or ML.

    ``max_iter`` bounds the optimiser's iterations per stage (lme4's ``lmerControl(optCtrl = list(maxfun
    = ...))``); when it runs out, or the optimum is not reached for another reason, the fit warns with a
    :class:`ConvergenceWarning` ("Model failed to converge: ...", as lme4 does) and ``m.converged`` is
    False.  Input problems raise a :class:`~jaxlmm.errors.JaxlmmError` before any JAX work (see
    :func:`~jaxlmm.design.build_design`).
    """
    if not isinstance(reml, (bool, np.bool_)):
        raise JaxlmmError(f"reml must be True or False, not {reml!r}")
    if not isinstance(max_iter, (int, np.integer)) or isinstance(max_iter, bool) or max_iter < 1:
        raise JaxlmmError(f"max_iter must be a positive integer, not {max_iter!r}")
    design = build_design(parse_formula(formula), data)
    return fit_design(design, reml=bool(reml), max_iter=int(max_iter))
