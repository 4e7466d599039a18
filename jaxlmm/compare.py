"""Comparisons of nested models: lme4's ``anova(m1, m2, ...)`` and pbkrtest's ``PBmodcomp``.

* :func:`anova` — likelihood-ratio table, REML fits refitted by ML, optionally a bootstrap p-value column;
* :func:`krtest` — pbkrtest's ``KRmodcomp``: the Kenward–Roger F test of a smaller mean structure;
* :func:`pbtest` — the parametric bootstrap LRT (Halekoh & Højsgaard 2014): simulate from the smaller
  model, refit both by ML to every simulated response, p = (1 + #{LRT* ≥ LRT}) / (1 + #valid)
  (:func:`bootstrap_p_value`); :func:`simulated_lrt` is the refitting step, which power analysis shares.

Both compare nested models only (:func:`nesting_problem`): lme4's ``anova`` prints any models, but its χ²
test means nothing for models that are not nested (compare those by AIC and BIC).

LRTs without rounding (:func:`lrt_statistic`): an LRT within ``LRT_ZERO_RTOL × (1 + D_small)`` of 0 (D_small
the smaller model's ML deviance) is exactly 0, observed or simulated; a simulated LRT below minus that is a
fitting failure (the larger model always reaches the smaller's optimum), counted and left out.  The
tolerance is far above the deviances' own rounding (jaxlmm's refits: |LRT| of null draws ~1e-11 on
deviances ~400) and covers lme4's (its default optimiser's null draws scatter over ±4e-6 on deviances ~380,
tests/fixtures/pbtest), so R's draws and jaxlmm's give the same zeros.  An LRT of 4e-5 has a χ²₁ p-value
of 0.995: nothing a test can tell from 0.
"""

from __future__ import annotations

import html
import itertools
import warnings
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy as np
import pandas as pd
import scipy.special

from .batch import fit_products
from .bootstrap import simulated_products
from .errors import ModelComparisonError
from .ftests import kr_f_test
from .glmm import GeneralizedLinearMixedModel
from .model import LinearMixedModel
from .params import Params
from .rformat import coefmat_lines
from .shapes import Problem

LRT_ZERO_RTOL = 1e-7  # |LRT| <= this × (1 + smaller model's ML deviance) is 0 (module docstring)
NESTING_RTOL = 1e-7  # a column is in a span when its least-squares residual is below this × its norm


def _check_models(models) -> None:
    """Every argument is a fitted model (lme4's anova dispatches on merMod objects only), all linear or
    all generalized (glmer fits are compared by their Laplace/AGQ log-likelihoods)."""
    for k, m in enumerate(models):
        if not isinstance(m, (LinearMixedModel, GeneralizedLinearMixedModel)):
            raise ModelComparisonError(
                f"argument {k + 1} is a {type(m).__name__}, not a fitted model from "
                "jaxlmm.lmer or jaxlmm.glmer: anova compares fitted models"
            )
    if len({isinstance(m, GeneralizedLinearMixedModel) for m in models}) > 1:
        raise ModelComparisonError("anova compares lmer fits with lmer fits and glmer fits with glmer fits")


def same_observations(models) -> None:
    """Same rows and the same response (lme4: "models were not all fitted to the same size of dataset")."""
    _check_models(models)
    first = models[0].design
    for m in models[1:]:
        d = m.design
        if d.n != first.n or not np.array_equal(d.y, first.y) or not d.rows.equals(first.rows):
            raise ModelComparisonError(
                "models were not all fitted to the same observations "
                f"({first.n} and {d.n} rows, responses {first.formula.response!r} and {d.formula.response!r}, "
                "or the same columns with different values): anova needs the same data"
            )
        if not np.array_equal(_prior_weights(d), _prior_weights(first)):
            raise ModelComparisonError(
                "models were fitted with different prior weights: their likelihoods are of different "
                "models of the data, and a likelihood-ratio test compares models with the same weights"
            )


def _prior_weights(design) -> np.ndarray:
    return np.ones(design.n) if design.weights is None else design.weights


def ml_versions(models) -> list:
    """The models, with REML fits refitted by ML (as lme4's anova does, saying so)."""
    if any(m.reml for m in models):
        warnings.warn("refitting model(s) with ML (instead of REML)", UserWarning, stacklevel=3)
    return [m.refit_ml() if m.reml else m for m in models]


def _in_span(A: np.ndarray, B: np.ndarray) -> bool:
    """Every column of A in the column space of B (least-squares residual <= ``NESTING_RTOL`` × its norm)."""
    if A.shape[1] == 0:
        return True
    if B.shape[1] == 0:
        return not np.any(A)
    coef, *_ = np.linalg.lstsq(B, A, rcond=None)
    residual = np.linalg.norm(A - B @ coef, axis=0)
    return bool(np.all(residual <= NESTING_RTOL * np.linalg.norm(A, axis=0)))


def _same_grouping(a: np.ndarray, b: np.ndarray) -> bool:
    """Two level codings of the rows make the same groups (the same factor, whatever its level names)."""
    pairs = np.unique(np.stack([a, b]), axis=1).shape[1]
    return pairs == np.unique(a).size == np.unique(b).size


def nesting_problem(small: LinearMixedModel, large: LinearMixedModel) -> str | None:
    """Why ``small`` is not nested in ``large`` (None when it is), both fitted to the same rows.

    Nested means: the columns of small's X lie in the span of large's X (a rank check, so ``y ~ x`` is in
    ``y ~ poly(x, 2)`` and an intercept in any factor's full coding), and each of small's random-effects
    terms is representable by one term of large on the same grouping factor: its Z columns in the span of
    that term's (``(1 | g)`` in ``(1 + x | g)``; ``(1 | g) + (0 + x | g)`` in ``(1 + x | g)``, not the
    reverse: a correlation the larger model lacks)."""
    ds, dl = small.design, large.design
    if not _in_span(ds.X, dl.X):
        extra = [n for n in ds.fixef_names if n not in dl.fixef_names] or ds.fixef_names
        return f"its fixed effects {extra} are not in the span of the larger model's {list(dl.fixef_names)}"
    for t in ds.terms:
        Z = ds.Z[t.block][:, list(t.block_columns)]
        if not any(
            _same_grouping(ds.codes[t.block], dl.codes[u.block])
            and _in_span(Z, dl.Z[u.block][:, list(u.block_columns)])
            for u in dl.terms
        ):
            return (
                f"its random-effects term ({' + '.join(t.columns)} | {t.group}) is not within one term of the "
                "larger model on the same grouping factor"
            )
    return None


def check_nested(small: LinearMixedModel, large: LinearMixedModel, small_name: str, large_name: str) -> None:
    """A :class:`~jaxlmm.errors.ModelComparisonError` unless ``small`` is nested in ``large``."""
    reason = nesting_problem(small, large)
    if reason is not None:
        raise ModelComparisonError(
            f"{small_name} ({small.formula}) is not nested in {large_name} ({large.formula}): {reason}. "
            "Likelihood-ratio tests compare nested models only; compare other models by their AIC and BIC"
        )


def lrt_statistic(small_deviance, large_deviance) -> tuple[np.ndarray, np.ndarray]:
    """``2(ℓ_large − ℓ_small) = D_small − D_large`` with values within ``LRT_ZERO_RTOL × (1 + |D_small|)``
    of 0 made exactly 0, and which are below minus that (fitting failures)."""
    small_deviance = np.asarray(small_deviance, dtype=float)
    lrt = small_deviance - np.asarray(large_deviance, dtype=float)
    tol = LRT_ZERO_RTOL * (1.0 + np.abs(small_deviance))
    return np.where(np.abs(lrt) <= tol, 0.0, lrt), lrt < -tol


class AnovaTable(pd.DataFrame):
    """lme4's ``anova`` table: a DataFrame (one row per model, lme4's columns) that prints as R prints it
    (``print.anova``): the ``Data:`` line, the ``Models:`` block (name: formula), the columns at 5
    significant digits, blank cells where R has NA, significance stars and the ``Signif. codes`` legend.
    With a ``Pr(boot)`` column both p columns are formatted as p-values and the stars follow the last one,
    ``Pr(boot)`` (printCoefmat's rule).  ``table.to_string()`` is pandas' layout; ``table.heading`` the
    lines above the columns."""

    _metadata: ClassVar[list[str]] = ["heading"]

    @property
    def _constructor(self):
        return pd.DataFrame  # a slice or a computed frame is a plain DataFrame

    def text(self) -> str:
        """What R prints for this table."""
        columns = list(self.columns)
        has_boot = "Pr(boot)" in columns
        table = pd.DataFrame(self).astype(float)
        lines = coefmat_lines(
            table,
            digits=5,
            cs_ind=[],
            tst_ind=[columns.index("Chisq")],
            zap_ind=tuple(columns.index(c) for c in ("npar", "AIC", "BIC", "logLik", "deviance")),
            na_print="",
            p_ind=(columns.index("Pr(>Chisq)"),) if has_boot else (),
        )
        return "\n".join([*(getattr(self, "heading", None) or []), *lines])

    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(self.text())}</pre>"


def anova(
    *models, names: list[str] | None = None, nsim: int = 0, seed: int | None = None, progress: bool | None = None
) -> AnovaTable:
    """lme4's table: npar, AIC, BIC, logLik, deviance, Chisq, Df, Pr(>Chisq); models ordered by npar, each
    nested in the next (:func:`nesting_problem`; lme4 also prints non-nested models, jaxlmm refuses them).

    Returns an :class:`AnovaTable` (a DataFrame; ``print`` shows lme4's layout).  A χ² within the LRT
    tolerance of 0 is 0 (module docstring).  With ``nsim > 0`` a column ``Pr(boot)`` adds, for each model
    against the one above it, the parametric-bootstrap p-value ``p_boot`` of :func:`jaxlmm.pbtest`
    (``nsim`` simulations from the smaller model); ``progress`` shows its progress bars (default: on a
    terminal).
    """
    _check_models(models)
    if len(models) < 2:
        raise ModelComparisonError("anova needs at least two models")
    names = list(names) if names is not None else [f"m{k + 1}" for k in range(len(models))]
    if len(names) != len(models):
        raise ModelComparisonError("give one name per model")
    same_observations(models)
    order = sorted(range(len(models)), key=lambda k: models[k].npar)
    for a, b in itertools.pairwise(order):
        check_nested(models[a], models[b], names[a], names[b])
    fits = ml_versions(models)
    fits = [fits[k] for k in order]
    npar = np.array([m.npar for m in fits], dtype=float)
    loglik = np.array([m.loglik for m in fits])
    chisq, _ = lrt_statistic(-2 * loglik[:-1], -2 * loglik[1:])
    chisq = np.concatenate([[np.nan], np.maximum(0.0, chisq)])
    df = np.concatenate([[np.nan], np.diff(npar)])
    with np.errstate(invalid="ignore"):
        p = np.where(df > 0, scipy.special.chdtrc(np.where(df > 0, df, 1), chisq), np.nan)
    p[0] = np.nan
    table = AnovaTable(
        {
            "npar": npar.astype(int),
            "AIC": [m.aic for m in fits],
            "BIC": [m.bic for m in fits],
            "logLik": loglik,
            "deviance": -2 * loglik,
            "Chisq": chisq,
            "Df": df,
            "Pr(>Chisq)": p,
        },
        index=pd.Index([names[k] for k in order]),
    )
    if nsim > 0:
        table["Pr(boot)"] = [np.nan] + [
            pbtest(large, small, nsim, seed, progress).p_boot if large.npar > small.npar else np.nan
            for small, large in itertools.pairwise(fits)
        ]
    table.heading = [
        f"Data: {models[0].data_name}",
        "Models:",
        *(f"{names[k]}: {models[k].formula}" for k in order),
    ]
    return table


def bootstrap_p_value(reference: np.ndarray, observed) -> np.ndarray:
    """The tail probability ``(1 + #{reference ≥ observed}) / (1 + #reference)`` over every valid draw,
    zeros included (Davison & Hinkley 1997, eq. 4.11), for each observed.  With LRTs made by
    :func:`lrt_statistic`, an observed LRT of 0 gives p = 1."""
    reference = np.sort(np.asarray(reference, dtype=float))
    return (1 + reference.size - np.searchsorted(reference, observed, side="left")) / (1 + reference.size)


def pbkrtest_p_value(reference: np.ndarray, observed) -> np.ndarray:
    """pbkrtest's ``PBmodcomp`` p-value (its ``.finalizePB``): the draws that are not positive are dropped,
    ``(1 + #{r > 0 and r > observed}) / (1 + #{r > 0})``.  On R's raw draws this is PBmodcomp's printed p;
    it depends on which near-zero draws rounding left positive, so jaxlmm's ``p_boot`` counts every draw
    (:func:`bootstrap_p_value`) and reports this one beside it for users reproducing R."""
    reference = np.asarray(reference, dtype=float)
    positive = np.sort(reference[reference > 0])
    return (1 + positive.size - np.searchsorted(positive, observed, side="right")) / (1 + positive.size)


class SimulatedLRT(NamedTuple):
    """The LRTs of simulated responses (:func:`simulated_lrt`)."""

    statistic: np.ndarray  # (nsim,) 2(ℓ_large − ℓ_small) by ML, 0 within the tolerance (lrt_statistic)
    converged: np.ndarray  # (nsim,) both refits converged
    negative: np.ndarray  # (nsim,) the statistic is below −tolerance: the larger refit stopped short

    @property
    def valid(self) -> np.ndarray:
        """Draws to use: both refits converged and the statistic is not negative."""
        return self.converged & ~self.negative


def simulated_lrt(
    small: Problem,
    small_theta: np.ndarray,
    large: Problem,
    large_theta: np.ndarray,
    params: Params,
    from_large: bool,
    nsim: int,
    seed: int | None = None,
    simulation: str = "plain",
    progress: bool | None = None,
) -> SimulatedLRT:
    """``2(ℓ_large − ℓ_small)`` of both models refitted by ML, warm-started at the given θ, to ``nsim``
    responses simulated with ``params`` from the large or the small design, made exact 0 within the
    tolerance (:func:`lrt_statistic`); whether both fits converged, and which statistics are clearly
    negative.  Under ``jax.distributed`` every process returns all replicates."""
    designs = [large.design, small.design] if from_large else [small.design, large.design]
    products = simulated_products(designs, params, nsim, seed, simulation)
    large_products, small_products = products if from_large else products[::-1]
    fit_small = fit_products(small, small_theta, small_products, reml=False, progress=progress).gathered()
    fit_large = fit_products(large, large_theta, large_products, reml=False, progress=progress).gathered()
    statistic, negative = lrt_statistic(fit_small.criterion, fit_large.criterion)
    return SimulatedLRT(statistic, fit_small.converged & fit_large.converged, negative)


@dataclass(frozen=True)
class PBTest:
    """pbkrtest's PBmodcomp result, with p-values defined without rounding (module docstring)."""

    lrt: float  # observed statistic 2 (logLik_large − logLik_small), both by ML; 0 within the tolerance
    df: int
    p_chisq: float
    p_boot: float  # (1 + #{LRT* ≥ LRT}) / (1 + #valid): every valid draw (bootstrap_p_value)
    reference: np.ndarray  # the bootstrap LRT statistics of the valid replicates
    n_failed: int  # replicates whose refits did not converge
    nsim: int
    p_boot_pbkrtest: float = float("nan")  # PBmodcomp's p: positive draws only (pbkrtest_p_value)
    n_negative: int = 0  # converged replicates with LRT* < −tolerance: fitting failures, left out

    @classmethod
    def from_draws(cls, lrt: float, df: int, reference: np.ndarray, n_failed: int, nsim: int, n_negative: int):
        """The test of an observed ``lrt`` against the valid simulated LRTs ``reference``: χ²(df), the
        bootstrap tail probability (:func:`bootstrap_p_value`) and pbkrtest's (:func:`pbkrtest_p_value`)."""
        return cls(
            lrt,
            df,
            float(scipy.special.chdtrc(df, lrt)),
            float(bootstrap_p_value(reference, lrt)),
            reference,
            n_failed,
            nsim,
            float(pbkrtest_p_value(reference, lrt)),
            n_negative,
        )

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(
            {"stat": [self.lrt, self.lrt], "df": [self.df, np.nan], "p.value": [self.p_chisq, self.p_boot]},
            index=["LRT", "PBtest"],
        )


def pbtest(
    large: LinearMixedModel,
    small: LinearMixedModel,
    nsim: int = 1000,
    seed: int | None = None,
    progress: bool | None = None,
    simulation: str = "plain",
) -> PBTest:
    """Parametric bootstrap LRT of ``small`` nested in ``large`` (pbkrtest's ``PBmodcomp``); glmer fits
    are refitted in lanes by :func:`glmm_pbtest`.

    ``p_boot`` is the tail probability over every valid draw (zeros included; an observed LRT of 0 gives
    1), ``p_boot_pbkrtest`` PBmodcomp's p, which drops the draws that are not positive.  Draws whose refits
    did not converge (``n_failed``) or whose LRT is clearly negative (``n_negative``) are left out.
    ``simulation="direct"`` draws the simulated responses' cross-products directly (see
    :func:`~jaxlmm.bootstrap.direct_products`): the same distribution, several times cheaper, another
    random stream."""
    same_observations([large, small])
    if isinstance(large, GeneralizedLinearMixedModel):
        return glmm_pbtest(large, small, nsim, seed)
    if small.npar >= large.npar:
        raise ModelComparisonError("the first model must have more parameters than the second")
    check_nested(small, large, "the second model", "the first")
    large_ml, small_ml = (m.refit_ml() for m in (large, small))
    lrt, negative = lrt_statistic(-2 * small_ml.loglik, -2 * large_ml.loglik)
    if negative:
        warnings.warn(
            f"the larger model's ML fit is below the smaller's by {-float(lrt):.3g} in log-likelihood x 2: "
            "its optimiser stopped short of the smaller model's optimum; the LRT is taken as 0",
            UserWarning,
            stacklevel=2,
        )
    lrt = max(0.0, float(lrt))
    df = large_ml.npar - small_ml.npar
    sim = simulated_lrt(
        small_ml.problem,
        small_ml.theta,
        large_ml.problem,
        large_ml.theta,
        small_ml.params,
        False,
        nsim,
        seed,
        simulation,
        progress,
    )
    reference = sim.statistic[sim.valid]
    return PBTest.from_draws(
        lrt, df, reference, int((~sim.converged).sum()), nsim, int((sim.converged & sim.negative).sum())
    )


@dataclass(frozen=True)
class KRTest:
    """pbkrtest's ``KRmodcomp`` result: the scaled F test (``Ftest``) and the unscaled one (``FtestU``)."""

    F: float
    ndf: int
    ddf: float
    scaling: float  # F.scaling
    p_value: float
    F_unscaled: float
    p_unscaled: float
    L: np.ndarray  # the restriction matrix tested

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "stat": [self.F, self.F_unscaled],
                "ndf": [self.ndf, self.ndf],
                "ddf": [self.ddf, self.ddf],
                "F.scaling": [self.scaling, np.nan],
                "p.value": [self.p_value, self.p_unscaled],
            },
            index=["Ftest", "FtestU"],
        )


def _rank(M: np.ndarray) -> int:
    return int(np.linalg.matrix_rank(M)) if M.size else 0


def restriction_matrix(X_large: np.ndarray, X_small: np.ndarray) -> np.ndarray:
    """pbkrtest's ``make_restriction_matrix``: L whose null space is the small model's mean space."""
    both = np.column_stack([X_small, X_large])
    Q, _ = np.linalg.qr(both)
    Q2 = Q[:, _rank(X_small) : _rank(X_large)]
    Q3, _ = np.linalg.qr((Q2.T @ X_large).T)
    return Q3.T


def krtest(large, small) -> KRTest:
    """pbkrtest's ``KRmodcomp(large, small)``: Kenward–Roger F test of the smaller mean structure, with
    the larger model's covariance (refitted by REML if it is an ML fit, as pbkrtest does)."""
    same_observations([large, small])
    Xl, Xs = large.design.X, small.design.X
    rl, rs, rb = _rank(Xl), _rank(Xs), _rank(np.column_stack([Xl, Xs]))
    if rb != max(rl, rs) or rl == rs:
        raise ModelComparisonError("Models have equal mean structure or are not nested")
    if rs > rl:
        large, small, Xl, Xs = small, large, Xs, Xl
    if not large.reml:
        large = large.refit_reml()
    L = restriction_matrix(Xl, Xs)
    stats, F_unscaled = kr_f_test(L, large.fixef.values, large.kenward_roger)
    F = stats.scaling * F_unscaled
    return KRTest(
        F=F,
        ndf=stats.ndf,
        ddf=stats.ddf,
        scaling=stats.scaling,
        p_value=float(scipy.special.fdtrc(stats.ndf, stats.ddf, F)),
        F_unscaled=F_unscaled,
        p_unscaled=float(scipy.special.fdtrc(stats.ndf, stats.ddf, F_unscaled)),
        L=L,
    )


def glmm_pbtest(large, small, nsim: int = 1000, seed: int | None = None) -> PBTest:
    """PBmodcomp for two nested glmer fits: simulate from ``small`` at its estimates, refit both to each
    response in vmapped lanes; the LRTs and p-values by the rules of :func:`pbtest` (:func:`lrt_statistic`,
    :func:`bootstrap_p_value`, :func:`pbkrtest_p_value`).  Replicates where either refit failed are counted
    in ``n_failed``, clearly negative LRTs in ``n_negative``; both are left out."""
    if small.npar >= large.npar:
        raise ModelComparisonError("the first model must have more parameters than the second")
    if large.nagq != small.nagq:
        raise ModelComparisonError("compare glmer fits with the same nagq (their log-likelihoods differ in scale)")
    Y = small.simulate(nsim, seed)
    fit_large, fit_small = large.refit(Y), small.refit(Y)
    ok = fit_large.converged & fit_small.converged
    draws, negative = lrt_statistic(fit_small.criterion, fit_large.criterion)
    reference = draws[ok & ~negative]
    lrt, _ = lrt_statistic(small.criterion, large.criterion)
    lrt = max(0.0, float(lrt))
    df = large.npar - small.npar
    return PBTest.from_draws(lrt, df, reference, int((~ok).sum()), nsim, int((ok & negative).sum()))
