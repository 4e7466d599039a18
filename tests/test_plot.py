"""The figures of jaxlmm.plot, rendered headless (Agg): what each draws, checked against the model's numbers."""

import sys

import numpy as np
import pytest
import scipy.stats
from conftest import fitted

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.collections import PathCollection

import jaxlmm
from jaxlmm import plot


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def rendered(fig):
    """Draw the figure to pixels (Agg) and return it: fails on any drawing error."""
    fig.canvas.draw()
    assert np.asarray(fig.canvas.buffer_rgba()).std() > 0
    return fig


def errorbars(ax):
    """(x, y, error-bar segments) of each errorbar container on the axes, in drawing order."""
    out = []
    for c in ax.containers:
        line, _, (bars,) = c.lines
        out.append((np.asarray(line.get_xdata()), np.asarray(line.get_ydata()), bars.get_segments()))
    return out


def straight_lines(ax, vertical: bool):
    """Positions of the axvline/axhline lines on the axes."""
    out = []
    for line in ax.get_lines():
        xs, ys = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
        if vertical and xs.size == 2 and xs[0] == xs[1] and tuple(ys) == (0.0, 1.0):
            out.append(xs[0])
        if not vertical and ys.size == 2 and ys[0] == ys[1] and tuple(xs) == (0.0, 1.0):
            out.append(ys[0])
    return out


@pytest.mark.parametrize("case", ["seed_lmm3_reml", "sleepstudy_corr_reml"])
def test_caterpillar_one_sorted_errorbar_per_level_and_term(case):
    m = fitted(case)
    fig = rendered(plot.caterpillar(m))
    re = m.ranef()
    terms = list(dict.fromkeys(re.term))
    assert len(fig.axes) == len(terms)
    for ax, term in zip(fig.axes, terms):
        rows = re[re.term == term].sort_values("condval")
        ((x, y, segments),) = errorbars(ax)
        fe = m.fixef[term]
        np.testing.assert_allclose(x, fe + rows.condval.values)
        assert np.all(np.diff(x) >= 0)
        np.testing.assert_allclose(y, np.arange(len(rows)))
        widths = np.array([s[1, 0] - s[0, 0] for s in segments])
        np.testing.assert_allclose(widths, 4 * rows.condsd.values)
        assert [t.get_text() for t in ax.get_yticklabels()] == list(rows.grp)
        assert straight_lines(ax, vertical=True) == pytest.approx([fe])
        assert term in ax.get_xlabel()
    assert fig.axes[0].get_ylabel() == m.design.group_names[0]


def test_caterpillar_of_random_column_without_fixed_effect_uses_zero():
    m = fitted("sleepstudy_indep_reml")
    fig = rendered(plot.caterpillar(m, group="Subject"))
    assert [ax.get_title() for ax in fig.axes] == ["(Intercept)", "Days"]
    with pytest.raises(ValueError, match="unknown grouping factor 'Nope'"):
        plot.caterpillar(m, group="Nope")


def test_shrinkage_draws_separate_and_pooled_estimates_against_log_size():
    m = fitted("seed_lmm3_reml")
    fig = rendered(plot.shrinkage(m))
    (ax,) = fig.axes
    (x_alone, y_alone, bars_alone), (x_mixed, y_mixed, _) = errorbars(ax)
    sizes = np.bincount(m.design.codes[0])
    assert len(x_alone) == len(x_mixed) == len(sizes) == 21
    np.testing.assert_allclose((x_alone + x_mixed) / 2, np.log(sizes))
    coef = m.coef()["Group"]["(Intercept)"].values
    np.testing.assert_allclose(y_mixed, coef)
    est, se = plot.separate_fits(m)
    np.testing.assert_allclose(y_alone, est[:, 0])
    np.testing.assert_allclose([s[1, 1] - s[0, 1] for s in bars_alone], 4 * se[:, 0])
    assert straight_lines(ax, vertical=False) == pytest.approx([m.fixef["(Intercept)"]])
    # shrinkage: the pooled estimates lie closer to the fixed effect than the separate ones, on average
    assert np.mean(np.abs(coef - m.fixef.iloc[0])) < np.mean(np.abs(est[:, 0] - m.fixef.iloc[0]))
    labels = ax.get_legend_handles_labels()[1]
    assert any("lmList" in label for label in labels) and any("coef(m)" in label for label in labels)
    assert ax.get_xlabel().startswith("log(")


def test_separate_fits_are_per_group_least_squares():
    m = fitted("sleepstudy_corr_reml")
    data = m.design
    est, se = plot.separate_fits(m, "Subject")
    level = 3
    rows = data.codes[0] == level
    slope, intercept = np.polyfit(data.X[rows, 1], data.y[rows], 1)
    np.testing.assert_allclose(est[level], [intercept, slope])
    fit = scipy.stats.linregress(data.X[rows, 1], data.y[rows])
    np.testing.assert_allclose(se[level], [fit.intercept_stderr, fit.stderr])


def test_group_lines_one_line_per_group_and_the_fixef_line():
    m = fitted("sleepstudy_corr_reml")
    fig = rendered(plot.group_lines(m))
    (ax,) = fig.axes
    lines = ax.get_lines()
    assert len(lines) == m.ngroups["Subject"] + 1
    fixef_line = [ln for ln in lines if ln.get_label() == "fixef"]
    assert len(fixef_line) == 1
    x = np.asarray(fixef_line[0].get_xdata())
    np.testing.assert_allclose(fixef_line[0].get_ydata(), m.fixef["(Intercept)"] + m.fixef["Days"] * x)
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert sum(len(c.get_offsets()) for c in points) == m.nobs
    # a group's line is its coef(m) line
    first = lines[0]
    coef = m.coef()["Subject"].iloc[0]
    np.testing.assert_allclose(first.get_ydata(), coef["(Intercept)"] + coef["Days"] * np.asarray(first.get_xdata()))
    assert ax.get_xlabel() == "Days" and ax.get_ylabel() == "Reaction"
    with pytest.raises(ValueError, match="unknown fixed effect 'Dayz'"):
        plot.group_lines(m, x="Dayz")


def test_lrt_reference_histogram_observed_line_and_chisq_density():
    test = jaxlmm.pbtest(fitted("sleepstudy_corr_ml"), fitted("sleepstudy_int_ml"), nsim=40, seed=3, progress=False)
    fig = rendered(plot.lrt_reference(test, bins=12))
    (ax,) = fig.axes
    patches = ax.patches
    assert len(patches) == 12
    area = sum(p.get_height() * p.get_width() for p in patches)
    assert area == pytest.approx(1.0)
    assert straight_lines(ax, vertical=True) == pytest.approx([test.lrt])
    (curve,) = [ln for ln in ax.get_lines() if "density" in ln.get_label()]
    x = np.asarray(curve.get_xdata())
    np.testing.assert_allclose(curve.get_ydata(), scipy.stats.chi2.pdf(x, test.df))
    assert f"{test.p_boot:.4g}" in ax.get_title()


def test_missing_matplotlib_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"jaxlmm\[plot\]"):
        plot.caterpillar(fitted("sleepstudy_corr_reml"))
