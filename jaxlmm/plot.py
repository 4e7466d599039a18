"""Figures of a fitted model (matplotlib, the optional ``plot`` extra: ``pip install "jaxlmm[plot]"``).

Each function returns the matplotlib ``Figure`` (save it with ``fig.savefig(path)``):

* :func:`caterpillar` — lattice's ``dotplot(ranef(m, condVar = TRUE))``: conditional modes ± 2 conditional
  SDs per level, sorted, on the coefficient scale with the fixed-effect line;
* :func:`shrinkage` — per-group estimates ± 2 SE against log(group size): separate per-group least-squares
  fits (no pooling) beside the model's ``coef(m)`` (partial pooling), the fixed effect as a horizontal line;
* :func:`group_lines` — the data with each group's fitted line and the fixed-effect ("fixef") line;
* :func:`lrt_reference` — the parametric-bootstrap reference distribution of the LRT (pbkrtest's
  ``PBmodcomp``) with the observed statistic and the χ² density.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.stats

from .compare import PBTest
from .model import LinearMixedModel

if TYPE_CHECKING:  # matplotlib is an optional extra, imported when a figure is drawn
    from matplotlib.figure import Figure

FIXEF_STYLE = {"color": "black", "linewidth": 2.0}


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError('jaxlmm.plot needs matplotlib: pip install "jaxlmm[plot]"') from exc
    return plt


def _block(model: LinearMixedModel, group: str | None) -> int:
    """Index of the grouping factor ``group`` (default: the first, the one with most levels)."""
    names = model.design.group_names
    if group is None:
        return 0
    if group not in names:
        raise ValueError(f"unknown grouping factor {group!r} (the model has {', '.join(names)})")
    return names.index(group)


def _covariate(model: LinearMixedModel, x: str | None) -> int:
    """Column of X for the covariate ``x`` (default: the first fixed effect that is not the intercept)."""
    names = list(model.design.fixef_names)
    if x is None:
        slopes = [n for n in names if n != "(Intercept)"]
        if not slopes:
            raise ValueError("the model has no fixed-effect covariate to draw against")
        x = slopes[0]
    if x not in names:
        raise ValueError(f"unknown fixed effect {x!r} (the model has {', '.join(names)})")
    return names.index(x)


def caterpillar(model: LinearMixedModel, group: str | None = None) -> Figure:
    """Caterpillar plot of ``ranef(m, condVar = TRUE)`` for one grouping factor (lattice's ``dotplot.ranef.mer``).

    One panel per random-effects column: each level's fixed effect + conditional mode ± 2 conditional SDs,
    levels sorted by the mode, and a vertical line at the fixed effect (0 for a column with no fixed effect).
    """
    plt = _pyplot()
    name = model.design.group_names[_block(model, group)]
    re = model.ranef()
    re = re[re.grpvar == name]
    terms = list(dict.fromkeys(re.term))
    levels = re.grp.nunique()
    fig, axes = plt.subplots(1, len(terms), figsize=(4 * len(terms), 1.5 + 0.22 * levels), squeeze=False)
    for ax, term in zip(axes[0], terms):
        fe = float(model.fixef.get(term, 0.0))
        rows = re[re.term == term].sort_values("condval")
        y = np.arange(len(rows))
        ax.errorbar(
            fe + rows.condval.values,
            y,
            xerr=2 * rows.condsd.values,
            fmt="o",
            markersize=4,
            color="tab:blue",
            ecolor="tab:blue",
            capsize=0,
        )
        ax.axvline(fe, **FIXEF_STYLE, label=f"fixed effect {fe:.4g}")
        ax.set_yticks(y, [str(g) for g in rows.grp])
        ax.set_xlabel(f"{term}: fixed effect + conditional mode ± 2 SD")
        ax.set_title(term)
        ax.legend(loc="lower right", fontsize="small")
    axes[0][0].set_ylabel(name)
    fig.suptitle(f"Conditional modes by {name}: {model.formula}")
    fig.tight_layout()
    return fig


def separate_fits(model: LinearMixedModel, group: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per level of ``group``: least-squares estimates and standard errors of the fixed-effects columns fitted
    to that level's rows alone (no pooling, R's ``lmList``); NaN where a level has too few rows or is rank
    deficient.  Both arrays are (levels, p).  With prior weights and an offset: weighted least squares of
    ``y − offset`` (the √w-scaled rows the model is fitted to)."""
    d = model.design
    k = _block(model, group)
    codes = d.codes[k]
    est = np.full((len(d.group_levels[k]), d.p), np.nan)
    se = np.full_like(est, np.nan)
    X_all, y_all = d.model_matrices[0], d.model_response(d.y)
    for level in range(est.shape[0]):
        X, y = X_all[codes == level], y_all[codes == level]
        if np.linalg.matrix_rank(X) < d.p:
            continue
        beta, *_ = np.linalg.lstsq(X, y, rcond=None)
        est[level] = beta
        dof = len(y) - d.p
        if dof > 0:
            s2 = np.sum((y - X @ beta) ** 2) / dof
            se[level] = np.sqrt(s2 * np.diag(np.linalg.inv(X.T @ X)))
    return est, se


def shrinkage(model: LinearMixedModel, term: str = "(Intercept)", group: str | None = None) -> Figure:
    """The seed's shrinkage picture: per-group estimates of ``term`` ± 2 SE against log(group size).

    Hollow points: each group fitted alone (``lmList``), ± 2 least-squares SE; filled points: the model's
    ``coef(m)`` (fixed effect + conditional mode), ± 2 conditional SDs; the horizontal line is the fixed
    effect.  Small groups are pulled furthest towards it.
    """
    plt = _pyplot()
    d = model.design
    k = _block(model, group)
    name = d.group_names[k]
    if term not in d.fixef_names:
        raise ValueError(f"unknown fixed effect {term!r} (the model has {', '.join(d.fixef_names)})")
    j = list(d.fixef_names).index(term)
    log_n = np.log(np.bincount(d.codes[k], minlength=len(d.group_levels[k])))
    est, se = separate_fits(model, name)
    coef = model.coef()[name][term].values
    re = model.ranef()
    sd = re[(re.grpvar == name) & (re.term == term)].condsd.values
    sd = sd if sd.size else np.zeros_like(coef)
    shift = 0.01 * max(np.ptp(log_n), 1.0)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.errorbar(
        log_n - shift,
        est[:, j],
        yerr=2 * se[:, j],
        fmt="o",
        mfc="white",
        color="tab:gray",
        label="each group alone (lmList) ± 2 SE",
    )
    ax.errorbar(
        log_n + shift, coef, yerr=2 * sd, fmt="o", color="tab:blue", label="mixed model: coef(m) ± 2 conditional SD"
    )
    fe = float(model.fixef[term])
    ax.axhline(fe, **FIXEF_STYLE, label=f"fixed effect {fe:.4g}")
    ax.set_xlabel(f"log(number of observations per {name})")
    ax.set_ylabel(term)
    ax.set_title(f"Shrinkage of per-{name} {term}: {model.formula}")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def group_lines(model: LinearMixedModel, x: str | None = None, group: str | None = None) -> Figure:
    """The data (response against the covariate ``x``), each group's conditional fitted line
    (``fitted(m)``) and the population line ``predict(m, re.form = NA)``, labelled "fixef"."""
    plt = _pyplot()
    d = model.design
    j = _covariate(model, x)
    k = _block(model, group)
    xs, codes = d.X[:, j], d.codes[k]
    fitted, population = model.fitted(), model.predict(re_form="~0")
    colors = plt.get_cmap("tab20")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(xs, d.y, c=[colors(c % 20) for c in codes], s=8, alpha=0.5, linewidths=0)
    for level in range(len(d.group_levels[k])):
        rows = np.flatnonzero(codes == level)
        rows = rows[np.argsort(xs[rows], kind="stable")]
        ax.plot(
            xs[rows],
            fitted[rows],
            color=colors(level % 20),
            linewidth=1.0,
            label=f"per-{d.group_names[k]} fits" if level == 0 else None,
        )
    order = np.argsort(xs, kind="stable")
    ax.plot(xs[order], population[order], **FIXEF_STYLE, label="fixef")
    ax.set_xlabel(d.fixef_names[j])
    ax.set_ylabel(d.formula.response)
    ax.set_title(model.formula)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def lrt_reference(test: PBTest, bins: int = 30) -> Figure:
    """Histogram of the bootstrap LRT statistics of :func:`jaxlmm.pbtest` (pbkrtest's reference
    distribution), the observed LRT as a vertical line and the asymptotic χ²(df) density."""
    plt = _pyplot()
    ref = np.asarray(test.reference)
    if ref.size == 0:
        raise ValueError("the test has no valid bootstrap replicates to draw")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    heights, _, _ = ax.hist(
        ref, bins=bins, density=True, color="tab:blue", alpha=0.5, label=f"bootstrap LRT ({ref.size} samples)"
    )
    right = 1.05 * max(ref.max(), test.lrt)
    grid = np.linspace(right / 400, right, 400)
    pdf = scipy.stats.chi2.pdf(grid, test.df)
    ax.plot(grid, pdf, color="tab:red", label=f"χ²({test.df}) density")
    ax.axvline(test.lrt, **FIXEF_STYLE, label=f"observed LRT {test.lrt:.3f}")
    ax.set_ylim(0, 1.25 * max(heights.max(), pdf[grid >= min(0.5, right / 2)].max()))
    ax.set_xlim(0, right)
    ax.set_xlabel("likelihood-ratio statistic")
    ax.set_ylabel("density")
    ax.set_title(f"p (χ²) = {test.p_chisq:.4g}, p (bootstrap) = {test.p_boot:.4g}")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig
