"""Generalized linear mixed models (lme4's ``glmer``): the fit and the fitted model.

The pipeline mirrors the LMM's: :func:`~jaxlmm.glmm_design.build_glmm_design` (lme4's ``glFormula``) →
:func:`jaxlmm.laplace.criterion` (lme4's ``mkGlmerDevfun``: Laplace or AGQ, with PIRLS inside) →
:func:`~jaxlmm.optimize.minimize_theta` over x = (θ, β) jointly with exact gradients (lme4's final
stage, ``nAGQ > 0``) → :class:`GeneralizedLinearMixedModel` (``mkMerMod``).

lme4 starts (θ, β) from a first stage that optimises θ with β inside PIRLS (``nAGQ = 0``); here β starts
at the GLM fit without random effects and θ at 1, and the joint descent (compiled BFGS from the inverse
of the start's difference Hessian, then a projected Newton polish) lands on the optimum to ~1e-10 in the
criterion, which is at or below lme4's best optimiser on the fixtures.
"""

from __future__ import annotations

import functools
import math
import warnings

import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.special

from . import tables
from .design import new_design_matrices, random_terms_of, theta_start
from .errors import JaxlmmError
from .family import Family
from .glmm_batch import GlmmBatchFit, bootstrap, confint_boot, refit_responses
from .glmm_design import GlmmDesign, new_offset
from .glmm_kernel import (
    bfgs_search,
    deviance_and_mode,
    glm_start,
    glmm_problem,
    real_u,
    value_and_gradient,
    x_scale,
)
from .model import ConvergenceWarning
from .optimize import Control, OptSummary, difference_hessian, minimize_theta, positive_inverse
from .params import TermCovariance, ran_pars, term_covariances
from .pirls import MAX_DENSE, split_u

MAX_DENSE_CONDVAR = 6000  # random effects up to which condsd comes from the dense inverse of H


def fit_glmm(gd: GlmmDesign, nagq: int = 1, control: Control | None = None) -> GeneralizedLinearMixedModel:
    """Minimise the criterion over x = (θ, β) from (θ = 1, β of the GLM) and assemble the model."""
    control = control or Control()
    d = gd.design
    structure, family = d.structure, gd.family
    dense = sum(b.n_levels * b.q for b in structure.blocks[1:])
    if dense > MAX_DENSE:
        raise JaxlmmError(
            f"the random-effects blocks after the first have {dense} columns; glmer's PIRLS holds them dense "
            f"and accepts at most {MAX_DENSE}"
        )
    problem = glmm_problem(gd)
    data, kernel_structure = problem.data, problem.structure
    scale = x_scale(gd)
    lower = np.concatenate([structure.lower, np.full(d.p, -np.inf)])

    def vg(x):
        f, g = value_and_gradient(jnp.asarray(x), data, kernel_structure, family, nagq)
        return float(f), np.asarray(g)

    x0 = np.concatenate([theta_start(structure), glm_start(gd)])
    inv_hessian = jnp.asarray(positive_inverse(difference_hessian(vg, x0, scale, control.hessian_step)))

    def search(x, budget, rescale):
        s = bfgs_search(
            jnp.asarray(x),
            inv_hessian,
            jnp.asarray(scale),
            budget,
            control.search_gtol,
            data,
            kernel_structure,
            family,
            nagq,
        )
        g = np.asarray(s.g)
        return np.asarray(s.theta), float(s.f), g, int(s.steps), float(0.5 * g @ np.asarray(s.inv_hessian) @ g)

    opt = minimize_theta(vg, search, x0, lower, scale, control)
    if not opt.converged:
        warnings.warn(f"Model failed to converge: {opt.message}", ConvergenceWarning, stacklevel=3)
    return GeneralizedLinearMixedModel(gd, nagq, opt, control, problem)


class GeneralizedLinearMixedModel:
    """A fitted glmer: estimates, lme4's criterion and information criteria, tables, predictions."""

    reml = False  # fitted by maximum likelihood (what anova reads)
    data_name = "data"  # lme4's name of the data in anova's and summary's headings (glmer's data_name=)

    def __init__(self, gdesign: GlmmDesign, nagq: int, opt: OptSummary, control: Control, problem=None):
        self.gdesign = gdesign
        self.nagq = nagq
        self.opt = opt
        self.control = control
        self.x = np.asarray(opt.theta, dtype=float)
        self.problem = problem or glmm_problem(gdesign)  # the padded arrays the compiled kernels see
        self._data = self.problem.data

    # ----------------------------------------------------------- basic accessors
    @property
    def design(self):
        return self.gdesign.design

    @property
    def family(self) -> Family:
        return self.gdesign.family

    @property
    def structure(self):
        return self.design.structure

    @property
    def formula(self) -> str:
        return self.gdesign.formula.text

    @property
    def theta(self) -> np.ndarray:
        """lme4's ``getME(g, "theta")``."""
        return self.x[: self.structure.n_theta].copy()

    @property
    def beta(self) -> np.ndarray:
        return self.x[self.structure.n_theta :].copy()

    @property
    def fixef(self) -> pd.Series:
        return pd.Series(self.beta, index=self.design.fixef_names, name="estimate")

    @property
    def nobs(self) -> int:
        return self.design.n

    @property
    def npar(self) -> int:
        return self.structure.n_theta + self.design.p

    @property
    def ngroups(self) -> dict[str, int]:
        return {name: len(levels) for name, levels in zip(self.design.group_names, self.design.group_levels)}

    @property
    def converged(self) -> bool:
        return self.opt.converged

    @property
    def singular(self) -> bool:
        """lme4's ``isSingular``: a diagonal entry of Λ at (within 1e-4 of) 0."""
        diag = np.isfinite(self.structure.lower)
        return bool(np.any(np.abs(self.theta[diag]) < 1e-4))

    @property
    def sigma(self) -> float:
        """1: the binomial and Poisson families have no scale parameter (lme4's ``sigma``)."""
        return 1.0

    # ----------------------------------------------------------- criterion and information criteria
    @functools.cached_property
    def criterion(self) -> float:
        """lme4's ``-2 logLik`` (``devcomp$cmp["dev"]``): Laplace with the family's saturated constants
        for ``nagq == 1``, AGQ on the deviance-residual scale for ``nagq > 1`` (as lme4)."""
        return float(
            value_and_gradient(jnp.asarray(self.x), self._data, self.problem.structure, self.family, self.nagq)[0]
        )

    @property
    def loglik(self) -> float:
        return -0.5 * self.criterion

    @property
    def aic(self) -> float:
        return self.criterion + 2 * self.npar

    @property
    def bic(self) -> float:
        return self.criterion + self.npar * math.log(self.nobs)

    @functools.cached_property
    def deviance(self) -> float:
        """lme4's ``deviance(g)``: the sum of squared deviance residuals at the conditional modes (not
        ``-2 logLik``, which ``summary``'s "deviance" column shows)."""
        return self._at_mode[0]

    @property
    def df_resid(self) -> int:
        return self.nobs - self.npar

    # ----------------------------------------------------------- the conditional modes
    @functools.cached_property
    def _at_mode(self) -> tuple[float, np.ndarray, np.ndarray]:
        """(lme4's deviance, the real levels' u, the real rows' η) at the estimates, from the padded kernel."""
        dev, u, eta = deviance_and_mode(jnp.asarray(self.x), self._data, self.problem.structure, self.family)
        return float(dev), real_u(u, self.structure, self.problem.structure), np.asarray(eta)[: self.nobs]

    @property
    def _mode(self) -> tuple[np.ndarray, np.ndarray]:
        return self._at_mode[1:]

    @property
    def u(self) -> np.ndarray:
        """The spherical conditional modes u (lme4's ``getME(g, "u")``), flat."""
        return self._mode[0].copy()

    @property
    def conditional_modes(self) -> list[np.ndarray]:
        """``b = Λu`` per grouping factor, (levels, q) (lme4's ``ranef``)."""
        us = split_u(self._mode[0], self.structure)
        return [uk @ blk.lambda_of(self.theta).T for uk, blk in zip(us, self.structure.blocks)]

    @functools.cached_property
    def condvar(self) -> list[np.ndarray]:
        """``Var(b | y)`` per grouping factor (levels, q, q): ``Λ (H⁻¹)ⱼⱼ Λᵀ`` at the mode, H's inverse
        dense (lme4's ``condVar``)."""
        A = self._scaled_z_dense()
        mu = self._mean(self._mode[1])
        w = self.gdesign.wt * self.family.variance(mu)
        Hinv = np.linalg.inv(A.T @ (w[:, None] * A) + np.eye(A.shape[1]))
        out, start = [], 0
        for blk in self.structure.blocks:
            Lam = blk.lambda_of(self.theta)
            idx = start + np.arange(blk.n_levels)[:, None] * blk.q + np.arange(blk.q)[None, :]
            block = Hinv[idx[:, :, None], idx[:, None, :]]
            out.append(Lam @ block @ Lam.T)
            start += blk.n_levels * blk.q
        return out

    def _scaled_z_dense(self) -> np.ndarray:
        """ZΛ as a dense (n, q_total) matrix (for condVar)."""
        d = self.design
        total = sum(b.n_levels * b.q for b in self.structure.blocks)
        if total > MAX_DENSE_CONDVAR:
            raise JaxlmmError(
                f"{total} random effects: the conditional variances are computed for at most {MAX_DENSE_CONDVAR}"
            )
        A = np.zeros((d.n, total))
        start = 0
        for Z, c, blk in zip(d.Z, d.codes, self.structure.blocks):
            ZL = Z @ blk.lambda_of(self.theta)
            for j in range(blk.q):
                A[np.arange(d.n), start + c * blk.q + j] = ZL[:, j]
            start += blk.n_levels * blk.q
        return A

    # ----------------------------------------------------------- covariance of the estimates
    @functools.cached_property
    def hessian(self) -> np.ndarray:
        """The criterion's Hessian in x = (θ, β) by central differences of the exact gradient."""

        def vg(x):
            f, g = value_and_gradient(jnp.asarray(x), self._data, self.problem.structure, self.family, self.nagq)
            return float(f), np.asarray(g)

        return difference_hessian(vg, self.x, x_scale(self.gdesign), self.control.hessian_step)

    @property
    def vcov(self) -> pd.DataFrame:
        """lme4's default ``vcov(g)`` (``use.hessian = TRUE``): the β block of ``2 H⁻¹``, H the Hessian of
        the criterion (-2 logLik) in (θ, β)."""
        V = 2.0 * np.linalg.inv(self.hessian)[self.structure.n_theta :, self.structure.n_theta :]
        V = 0.5 * (V + V.T)
        names = self.design.fixef_names
        return pd.DataFrame(V, index=names, columns=names)

    # ----------------------------------------------------------- values
    def _random_part(self, Z, codes) -> np.ndarray:
        out = np.zeros(Z[0].shape[0])
        for Zk, ck, bk in zip(Z, codes, self.conditional_modes):
            seen = ck >= 0
            out[seen] += np.einsum("ij,ij->i", Zk[seen], bk[ck[seen]])
        return out

    def _mean(self, eta: np.ndarray) -> np.ndarray:
        """μ = g⁻¹(η) in NumPy (JAX's eager operations would compile once per data size)."""
        return scipy.special.expit(eta) if self.family.name == "binomial" else np.exp(eta)

    def fitted(self) -> np.ndarray:
        """The conditional means μ (lme4's ``fitted``: proportions for the binomial)."""
        return self._mean(self._mode[1])

    def linear_predictor(self) -> np.ndarray:
        """η = offset + Xβ + Zb at the modes."""
        return self._mode[1].copy()

    def residuals(self, type: str = "deviance") -> np.ndarray:
        """lme4's ``residuals(g, type)``: "deviance" (default), "pearson" or "response"."""
        y, wt, mu = self.design.y, self.gdesign.wt, self.fitted()
        if type == "response":
            return y - mu
        if type == "pearson":
            return (y - mu) * np.sqrt(wt) / np.sqrt(self.family.variance(mu))
        if type == "deviance":
            d = np.asarray(self.family.deviance_residuals(jnp.asarray(y), jnp.asarray(wt), jnp.asarray(self._mode[1])))
            return np.sign(y - mu) * np.sqrt(np.maximum(d, 0.0))
        raise JaxlmmError(f"type must be 'deviance', 'pearson' or 'response', not {type!r}")

    def predict(
        self,
        newdata: pd.DataFrame | None = None,
        re_form: str | None = None,
        type: str = "link",
        allow_new_levels: bool = False,
    ):
        """lme4's ``predict``: η (``type="link"``) or μ (``"response"``) with the random effects ``re_form``
        keeps, as :meth:`jaxlmm.model.LinearMixedModel.predict`: ``None`` all, ``"NA"``/``"~0"`` none, a
        formula such as ``"~(1 | herd)"`` those terms.  The formula's offset terms and data-dependent calls
        are evaluated on newdata as in the fit; an unseen grouping level is an error unless
        ``allow_new_levels`` (random effect 0)."""
        if type not in ("link", "response"):
            raise JaxlmmError(f"type must be 'link' or 'response', not {type!r}")
        bars = random_terms_of(self.design, re_form)
        if newdata is None:
            if bars is None:
                eta = self._mode[1]
            else:
                d = self.design
                Z = [z.copy() for z in d.Z]
                for term in d.terms:
                    if term.bar not in bars:
                        Z[term.block][:, list(term.block_columns)] = 0.0
                eta = self.gdesign.offset + d.X @ self.beta + (self._random_part(Z, d.codes) if bars else 0.0)
        else:
            X, Z, codes = new_design_matrices(self.design, newdata, bars, bool(allow_new_levels))
            eta = new_offset(self.gdesign, newdata) + X @ self.beta
            if bars is None or bars:
                eta = eta + self._random_part(Z, codes)
        return self._mean(eta) if type == "response" else eta

    def simulate(self, nsim: int = 1, seed: int | None = None, x: np.ndarray | None = None) -> np.ndarray:
        """(n, nsim) responses simulated from the model (lme4's ``simulate``: new spherical random effects
        u ~ N(0, I), b = Λu, then the family's draws at μ = g⁻¹(offset + Xβ + Zb)), at the estimates or at
        parameters ``x = (θ, β)``; binomial responses are proportions of the trials."""
        x = self.x if x is None else np.asarray(x, dtype=float)
        theta, beta = x[: self.structure.n_theta], x[self.structure.n_theta :]
        d, rng = self.design, np.random.default_rng(seed)
        eta = np.repeat((self.gdesign.offset + d.X @ beta)[:, None], nsim, axis=1)
        for Z, c, blk in zip(d.Z, d.codes, self.structure.blocks):
            b = rng.standard_normal((nsim, blk.n_levels, blk.q)) @ blk.lambda_of(theta).T
            eta += np.einsum("iq,siq->is", Z, b[:, c, :])
        mu = self._mean(eta)
        if self.family.name == "poisson":
            return rng.poisson(mu).astype(float)
        trials = np.round(self.gdesign.wt)[:, None]
        return rng.binomial(trials.astype(np.int64), mu) / np.where(trials > 0, trials, 1.0)

    # ----------------------------------------------------------- refits
    def refit(self, responses: np.ndarray, chunk_size: int | None = None) -> GlmmBatchFit:
        """Refits to each column of ``responses`` (n, B) in vmapped lanes (:func:`jaxlmm.glmm_batch.refit_responses`)."""
        return refit_responses(self, responses, chunk_size)

    def bootstrap(self, nsim: int = 1000, seed: int | None = None) -> pd.DataFrame:
        """lme4's ``bootMer`` of θ and β: one row per replicate, with ``converged``."""
        return bootstrap(self, nsim, seed)

    def confint(self, method: str = "wald", level: float = 0.95, nsim: int = 1000, seed: int | None = None):
        """Confidence intervals: ``"wald"`` for the fixed effects (lme4's ``confint(g, method = "Wald")``),
        ``"boot"`` percentile intervals for θ and β from ``nsim`` parametric-bootstrap refits."""
        if method == "boot":
            return confint_boot(self, level, nsim, seed)
        if method != "wald":
            raise JaxlmmError(f"method must be 'wald' or 'boot', not {method!r}")
        z = scipy.special.ndtri(0.5 + level / 2)
        se = np.sqrt(np.diag(self.vcov.values))
        a = (1 - level) / 2
        return pd.DataFrame(
            {f"{100 * a:.1f} %": self.beta - z * se, f"{100 * (1 - a):.1f} %": self.beta + z * se},
            index=self.design.fixef_names,
        )

    # ----------------------------------------------------------- tables
    def term_covariances(self) -> list[TermCovariance]:
        return term_covariances(self.design, self.theta, 1.0)

    @property
    def varcorr(self) -> pd.DataFrame:
        """R's ``as.data.frame(VarCorr(g))`` (no residual row: no scale parameter)."""
        rows = []
        for group, cols, S in self.term_covariances():
            sd = np.sqrt(np.diag(S))
            rows += [(group, c, None, S[i, i], sd[i]) for i, c in enumerate(cols)]
            rows += [
                (group, cols[j], cols[i], S[i, j], S[i, j] / (sd[i] * sd[j]) if sd[i] * sd[j] > 0 else np.nan)
                for j in range(len(cols))
                for i in range(j + 1, len(cols))
            ]
        return pd.DataFrame(rows, columns=["grp", "var1", "var2", "vcov", "sdcor"])

    def coef_table(self) -> pd.DataFrame:
        """lme4's ``summary(g)$coefficients``: Estimate, Std. Error, z value, Pr(>|z|)."""
        est = self.beta
        se = np.sqrt(np.diag(self.vcov.values))
        z = est / se
        return pd.DataFrame(
            {"Estimate": est, "Std. Error": se, "z value": z, "Pr(>|z|)": 2 * scipy.special.ndtr(-np.abs(z))},
            index=self.design.fixef_names,
        )

    def tidy(self) -> pd.DataFrame:
        """broom.mixed's ``tidy(g)``: effect, group, term, estimate, std.error, statistic (z), p.value, and
        a ``Significance`` column of stars (*** < 0.001, ** < 0.01, * < 0.05, . < 0.1)."""
        ct = self.coef_table()
        fixed = pd.DataFrame(
            {
                "effect": "fixed",
                "group": None,
                "term": ct.index,
                "estimate": ct["Estimate"].values,
                "std.error": ct["Std. Error"].values,
                "statistic": ct["z value"].values,
                "p.value": ct["Pr(>|z|)"].values,
            }
        )
        rand = pd.DataFrame(
            [(g, term, float(v)) for g, term, v in ran_pars(self.term_covariances(), 1.0)[:-1]],
            columns=["group", "term", "estimate"],
        )
        rand.insert(0, "effect", "ran_pars")
        for col in ("std.error", "statistic", "p.value"):
            rand[col] = np.nan
        out = pd.concat([fixed, rand], ignore_index=True)
        out["Significance"] = [tables.stars(p) if np.isfinite(p) else "" for p in out["p.value"]]
        return out

    def ranef(self) -> pd.DataFrame:
        """R's ``as.data.frame(ranef(g, condVar = TRUE))``: grpvar, term, grp, condval, condsd."""
        return tables.ranef(self)

    def coef(self) -> dict[str, pd.DataFrame]:
        """R's ``coef(g)``: per grouping factor, fixed effects plus that factor's random effects."""
        return tables.coef(self)

    def summary(self) -> str:
        """What lme4's ``summary(g)`` prints."""
        return summary_text(self)

    def __repr__(self) -> str:
        return (
            f"<GeneralizedLinearMixedModel {self.formula!r} {self.family.name}({self.family.link}), "
            f"logLik {self.loglik:.4f}, {self.nobs} obs>"
        )


def summary_text(model: GeneralizedLinearMixedModel) -> str:
    """lme4's ``summary(g)`` text: fit method, family, information criteria, scaled (Pearson) residuals,
    random effects, fixed effects with z tests."""
    d = model.design
    method = "Laplace Approximation" if model.nagq == 1 else f"Adaptive Gauss-Hermite Quadrature, nAGQ = {model.nagq}"
    lines = [
        f"Generalized linear mixed model fit by maximum likelihood ({method}) [glmerMod]",
        f" Family: {model.family.name}  ( {model.family.link} )",
        f"Formula: {model.formula}",
    ]
    if d.n_dropped:
        lines.append(f"  ({d.n_dropped} observations deleted due to missingness)")
    lines += ["", "".join(f"{h:>9}" for h in ("AIC", "BIC", "logLik", "deviance", "df.resid"))]
    lines.append(f"{model.aic:9.1f}{model.bic:9.1f}{model.loglik:9.1f}{model.criterion:9.1f}{model.df_resid:9d}")
    q = np.quantile(model.residuals("pearson"), [0, 0.25, 0.5, 0.75, 1])
    lines += ["", "Scaled residuals: ", "".join(f"{h:>9}" for h in ("Min", "1Q", "Median", "3Q", "Max"))]
    lines += ["".join(f"{v:9.4f}" for v in q), "", "Random effects:"]
    rows = []
    for name, cols, S in model.term_covariances():
        sd = np.sqrt(np.diag(S))
        for i, c in enumerate(cols):
            cors = [S[i, j] / (sd[i] * sd[j]) if sd[i] * sd[j] > 0 else np.nan for j in range(i)]
            rows.append((name if i == 0 else "", c, S[i, i], sd[i], cors))
    w1 = max(len("Groups"), *(len(r[0]) for r in rows))
    w2 = max(len("Name"), *(len(r[1]) for r in rows))
    header = f" {'Groups':<{w1}} {'Name':<{w2}} {'Variance':>10} {'Std.Dev.':>9}"
    lines.append(header + (" Corr" if any(r[4] for r in rows) else ""))
    for g, nm, var, sd, cors in rows:
        lines.append(f" {g:<{w1}} {nm:<{w2}} {var:10.4g} {sd:9.4g}" + "".join(f" {c:5.2f}" for c in cors))
    groups = ", ".join(f"{k}, {v}" for k, v in model.ngroups.items())
    lines += [f"Number of obs: {model.nobs}, groups:  {groups}", "", "Fixed effects:"]
    ct = model.coef_table()
    wn = max(len(n) for n in ct.index)
    lines.append(f"{'':<{wn}} {'Estimate':>11} {'Std. Error':>11} {'z value':>8} {'Pr(>|z|)':>10}")
    for name, row in ct.iterrows():
        p = row["Pr(>|z|)"]
        lines.append(
            f"{name:<{wn}} {row['Estimate']:11.4g} {row['Std. Error']:11.4g} {row['z value']:8.3f} {p:10.3g} "
            + tables.stars(p)
        )
    lines += ["---", "Signif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1"]
    if model.singular:
        lines.append("boundary (singular) fit: see help('isSingular')")
    if not model.converged:
        lines.append(f"Warning: {model.opt.message}")
    return "\n".join(lines)
