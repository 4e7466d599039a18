"""R's prints (lmerTest's summary, lme4's anova, broom.mixed's tidy), nesting checks before model comparisons,
and bootstrap p-values without rounding, against R's outputs (scripts/make_pbtest_fixtures.R)."""

import functools
import json
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from conftest import FIXTURES, fitted

import jaxlmm
from jaxlmm.compare import LRT_ZERO_RTOL, bootstrap_p_value, lrt_statistic, pbkrtest_p_value
from jaxlmm.rformat import abbreviate, format_numbers, format_pval

PRINTS = FIXTURES / "prints"
PBTEST = json.loads((FIXTURES / "pbtest" / "pbtest.json").read_text())


# ---------------------------------------------------------------- R's formatting rules (outputs of R 4.2)
@pytest.mark.parametrize(
    "values, digits, expected",
    [
        ([177.64, 173.65, 173.8], 5, ["177.64", "173.65", "173.80"]),
        ([0.0004794, 2.062, 19.65], 4, ["4.794e-04", "2.062e+00", "1.965e+01"]),
        ([123456789, 1.5], 5, ["1.2346e+08", "1.5000e+00"]),
        ([1e-10, 1], 5, ["1e-10", "1e+00"]),
        ([-84.8218, -81.822, -80.9], 5, ["-84.822", "-81.822", "-80.900"]),
        ([0, 5.99884], 5, ["0.0000", "5.9988"]),
        ([np.nan, 5.99884, 1.84389], 5, ["    NA", "5.9988", "1.8439"]),
        ([1e5, 2e5], 5, ["1e+05", "2e+05"]),
        ([1, 0.5], 3, ["1.0", "0.5"]),
    ],
)
def test_format_numbers_as_r(values, digits, expected):
    assert format_numbers(values, digits) == expected


def test_format_pval_and_abbreviate_as_r():
    assert format_pval([0.0143, 0.1744], 4) == ["0.0143", "0.1744"]
    assert format_pval([1e-20, 0.5], 4) == ["<2e-16", "0.5"]
    assert format_pval([1e-17, 3.11e-13], 3) == ["< 2e-16", "3.11e-13"]
    names = ["(Intercept)", "x", "Days", "temperature.L", "poly(Time, 2)1", "Sexmale", "age:Sexmale"]
    names += ["I(x^2)", "log(conc)", "my var", "TreatmentB", "dayOfWeek", "abcdefghij"]
    r = ["(Intr)", "x", "Days", "tmpr.L", "p(T,2)", "Sexmal", "ag:Sxm", "I(x^2)", "lg(cn)", "my var", "TrtmnB"]
    assert abbreviate(names, 6) == [*r, "dyOfWk", "abcdfg"]


# ---------------------------------------------------------------- summary, tidy
def r_summary(name: str) -> list[str]:
    """R's print of summary(m) (fitted with control = ctrl, a line jaxlmm's call has not)."""
    return [line for line in (PRINTS / f"summary_{name}.txt").read_text().splitlines() if line != "Control: ctrl"]


def test_summary_returns_text_once(capsys):
    text = fitted("seed_lmm3_reml").summary()
    assert capsys.readouterr().out == ""  # returned, never printed
    assert isinstance(text, str) and repr(text) == str(text)


def test_summary_prints_as_lmertest_on_the_seed():
    """Line for line R's print, except lmm3's t value of the intercept: t = 36.7857 here, 36.78 in R (its
    bobyqa stops ~1e-5 short in theta; the fixture's best optimum agrees with jaxlmm)."""
    ours, r = str(fitted("seed_lmm3_reml").summary()).splitlines(), r_summary("seed_lmm3")
    assert len(ours) == len(r)
    for a, b in zip(ours, r):
        if a.startswith("(Intercept)"):
            assert a.split()[:4] + a.split()[5:] == b.split()[:4] + b.split()[5:]
            assert b.split()[5:7] == ["<", "2e-16"]
        else:
            assert a == b


@pytest.mark.parametrize("name", ["sleepstudy_corr_ml", "machines_reml", "cake_reml", "penicillin_reml"])
def test_summary_prints_as_lmertest(name):
    """R's print line for line: ML's table, residuals, variance components, groups joined by "; ", the
    coefficient table (p-values as format.pval, stars), abbreviated correlation headers; with more than 12
    fixed effects lme4 leaves the correlations out (and says so in a message, which jaxlmm prints)."""
    ours = str(fitted(name).summary()).splitlines()
    if ours[-2].startswith("Correlation matrix not shown"):
        ours = ours[:-3]
    assert ours == r_summary(name)


def test_data_name_in_summary_and_anova():
    data = jaxlmm.load_seed()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m1 = jaxlmm.lmer("y ~ x + (1 | Group)", data, reml=False, data_name="seed")
        m3 = jaxlmm.lmer("y ~ x + (1 + x | Group)", data, data_name="seed")
        assert "\n   Data: seed\n" in m1.summary()
        assert str(jaxlmm.anova(m1, m3)).startswith("Data: seed\nModels:\nm1: y ~ x + (1 | Group)\n")
        assert m3.refit_ml().data_name == "seed"
    with pytest.raises(jaxlmm.JaxlmmError, match="data_name"):
        jaxlmm.lmer("y ~ x + (1 | Group)", data, data_name=3)


def r_stars(p):
    """R's symnum cut points, written out."""
    return (
        "" if np.isnan(p) else "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else "." if p < 0.1 else ""
    )


@pytest.mark.parametrize("name", ["seed_lmm3_reml", "oats_reml", "machines_reml"])
def test_tidy_has_nan_where_broom_has_na_and_significance_stars(name):
    table = fitted(name).tidy()
    fixed = table.effect == "fixed"
    assert table.group[fixed].isna().all() and not any(v is None for v in table.group)
    assert table.loc[~fixed, ["std.error", "statistic", "df", "p.value"]].isna().all().all()
    assert list(table.Significance) == [r_stars(p) if f else "" for p, f in zip(table["p.value"], fixed)]
    assert table.Significance[fixed].iloc[0] == "***"


def test_seed_tidy_stars():
    assert list(fitted("seed_lmm3_reml").tidy().Significance) == ["***", "***", "", "", "", ""]


# ---------------------------------------------------------------- anova's print
@functools.cache
def seed_anova():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = [fitted(n) for n in ("seed_lmm1_ml", "seed_lmm2_ml", "seed_lmm3_reml")]
        return jaxlmm.anova(*models, names=["lmm1", "lmm2", "lmm3"])


def test_anova_prints_as_lme4():
    """The whole print equals R's (lme4's bobyqa run to convergence gives the same 5 digits)."""
    table = seed_anova()
    text = str(table)
    assert text == repr(table) == (PRINTS / "anova_seed.txt").read_text().rstrip("\n")
    lines = text.splitlines()
    assert lines[1] == "Models:" and lines[-1].startswith("Signif. codes:")
    assert lines[6].rstrip() == "lmm1    4 177.64 197.28 -84.822   169.64"  # blank cells, not NaN
    assert lines[7].endswith(" *")
    # still the DataFrame of numbers
    assert isinstance(table, pd.DataFrame) and np.isnan(table["Chisq"].iloc[0])
    assert type(table[["AIC"]]) is pd.DataFrame and "<pre>" in table._repr_html_()


def test_anova_with_no_small_p_prints_no_stars():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = jaxlmm.anova(fitted("seed2_lmm2_ml"), fitted("seed2_lmm3_ml"))
    text = str(table)
    assert "Signif. codes" not in text and "*" not in text


# ---------------------------------------------------------------- nesting
def with_columns(data):
    rng = np.random.default_rng(4)
    return data.assign(z=rng.normal(size=len(data)), w=rng.normal(size=len(data)), f=np.arange(len(data)) % 3)


@functools.cache
def seed_models():
    data = with_columns(jaxlmm.load_seed())
    forms = {
        "int": "y ~ x + (1 | Group)",
        "no_x": "y ~ 1 + (1 + x | Group)",
        "corr": "y ~ x + (1 + x | Group)",
        "diag_zw": "y ~ x + z + w + (1 | Group) + (0 + x | Group)",
        "other_group": "y ~ x + z + (1 | f)",
        "null": "y ~ 1 + (1 | Group)",
        "factor": "y ~ factor(f) + (1 | Group)",
        "scaled": "y ~ I(2 * x) + z + (1 | Group)",
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {k: jaxlmm.lmer(f, data, reml=False) for k, f in forms.items()}


@pytest.mark.parametrize(
    "small, large",
    [
        ("int", "no_x"),  # x is not among the larger model's fixed effects
        ("corr", "diag_zw"),  # a correlation the larger model lacks
        ("int", "other_group"),  # another grouping factor
    ],
)
def test_non_nested_models_are_refused(small, large):
    m = seed_models()
    with pytest.raises(jaxlmm.ModelComparisonError, match="not nested"):
        jaxlmm.anova(m[small], m[large])
    with pytest.raises(jaxlmm.ModelComparisonError, match="not nested"):
        jaxlmm.pbtest(m[large], m[small], nsim=5)


def test_nested_by_span_are_accepted():
    m = seed_models()
    table = jaxlmm.anova(m["null"], m["factor"], names=["null", "factor"])  # an intercept in a factor's coding
    assert list(table.index) == ["null", "factor"]
    table = jaxlmm.anova(m["int"], m["scaled"])  # x in the span of I(2 * x)
    assert table["Df"].iloc[1] == 1
    assert jaxlmm.anova(m["int"], m["corr"])["Chisq"].iloc[1] > 0


# ---------------------------------------------------------------- bootstrap p-values
def test_lrt_tolerance_and_p_of_zero():
    stat, negative = lrt_statistic([400.0, 400.0, 400.0, 400.0], [400.0 - 1e-9, 400 + 1e-9, 399.0, 400.1])
    np.testing.assert_array_equal(stat, [0.0, 0.0, 1.0, 400.0 - 400.1])
    np.testing.assert_array_equal(negative, [False, False, False, True])
    assert LRT_ZERO_RTOL * 401 > 1e-9
    assert bootstrap_p_value(np.array([0.0, 0.0, 2.0]), 0.0) == 1.0
    assert bootstrap_p_value(np.array([0.0, 0.0, 2.0]), 1.0) == 2 / 4
    assert pbkrtest_p_value(np.array([0.0, 0.0, 2.0]), 1.0) == 2 / 2


@pytest.mark.parametrize("case", ["boundary", "positive"])
def test_p_values_from_r_draws(case):
    """Both p-values from PBmodcomp's own reference draws: the pbkrtest variant is PBmodcomp's p exactly; the
    all-draws tail probability is R's (1 + #extremes) / (1 + nsim) (no draw of R's is a failure here)."""
    fx = PBTEST[case]
    ref = np.asarray(fx["reference"])
    assert pbkrtest_p_value(ref, fx["lrt"]) == pytest.approx(fx["p_pbkrtest"], rel=1e-12)
    d = fx["deviance_small"]
    stat, negative = lrt_statistic(np.full(ref.size, d), d - ref)
    (observed,), _ = lrt_statistic([d], [d - fx["lrt"]])
    assert not negative.any()
    p = bootstrap_p_value(stat[~negative], observed)
    if case == "boundary":
        assert observed == 0 and p == 1.0 and fx["p_pbkrtest"] == 1.0
    else:
        assert p == pytest.approx((1 + fx["n_extreme"]) / (1 + fx["nsim"]), rel=1e-12)
        assert p < fx["p_pbkrtest"]  # the zero-dropping variant is larger: it divides by the positive draws


@functools.cache
def jaxlmm_pbtest(case):
    fx = PBTEST[case]
    data = pd.read_csv(FIXTURES / "pbtest" / fx["data"])
    large = jaxlmm.lmer(fx["large"], data, reml=False)
    small = jaxlmm.lmer(fx["small"], data, reml=False)
    return jaxlmm.pbtest(large, small, nsim=1000, seed=3, progress=False)


def zero_share_sd(p, n1, n2):
    return np.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))


@pytest.mark.slow
@pytest.mark.parametrize("case", ["boundary", "positive"])
def test_pbtest_at_a_variance_boundary_against_pbmodcomp(case):
    fx = PBTEST[case]
    res = jaxlmm_pbtest(case)
    ref = np.asarray(fx["reference"])
    stat, negative = lrt_statistic(np.full(ref.size, fx["deviance_small"]), fx["deviance_small"] - ref)
    r_draws = stat[~negative]
    assert res.n_failed == 0 and res.n_negative == 0 and res.reference.size == 1000
    # the share of exact zeros (the larger model's extra variance estimated as 0) as R's
    ours, theirs = np.mean(res.reference == 0), np.mean(r_draws == 0)
    assert 0.3 < ours < 0.8 and abs(ours - theirs) < 4 * zero_share_sd(theirs, 1000, r_draws.size)
    assert scipy.stats.ks_2samp(res.reference, r_draws).pvalue > 1e-3
    if case == "boundary":
        assert res.lrt == 0.0 and res.p_boot == 1.0 and res.p_boot_pbkrtest == 1.0 and res.p_chisq == 1.0
    else:
        assert res.lrt == pytest.approx(fx["lrt"], rel=1e-6)
        p_all = (1 + fx["n_extreme"]) / (1 + fx["nsim"])
        assert abs(res.p_boot - p_all) < 4 * zero_share_sd(p_all, 1000, fx["nsim"])
        p = fx["p_pbkrtest"]
        assert abs(res.p_boot_pbkrtest - p) < 4 * zero_share_sd(p, np.sum(res.reference > 0), fx["npos"])
        assert res.p_boot == bootstrap_p_value(res.reference, res.lrt)


# ---------------------------------------------------------------- fit_batch
def test_fit_batch_names_the_nan_columns_before_fitting(monkeypatch):
    def no_fit(*args, **kwargs):
        raise AssertionError("the model was fitted before the responses were checked")

    monkeypatch.setattr(jaxlmm.api, "lmer", no_fit)
    data = jaxlmm.load_seed()
    Y = np.random.default_rng(0).normal(size=(len(data), 5))
    Y[3, 1] = np.nan
    Y[0, 4] = np.inf
    with pytest.raises(jaxlmm.DataError, match=r"columns 1, 4 \(0-based\)"):
        jaxlmm.fit_batch("y ~ x + (1 | Group)", data, responses=Y)
    Y = np.random.default_rng(0).normal(size=(len(data), 30))
    Y[5, 12:] = np.nan
    with pytest.raises(jaxlmm.DataError, match=r"columns 12, 13, .*, 21, \.\.\. \(18 columns\)"):
        jaxlmm.fit_batch("y ~ x + (1 | Group)", data, responses=Y)


def test_nested_grouping_factor_names_as_r():
    """lme4 names (1 | a/b/c)'s factors c:(b:a), b:a, a (R 4.2: names(ngrps(m)))."""
    f = jaxlmm.parse_formula("y ~ x + (1 | a/b/c) + (1 | d:e)")
    assert [r.group_name for r in f.random] == ["a", "b:a", "c:(b:a)", "d:e"]
    assert [r.group for r in f.random][2] == ("c", "b", "a")
    rng = np.random.default_rng(1)
    d = pd.DataFrame(
        {"y": rng.normal(size=200), "a": np.repeat(np.arange(4), 50), "b": np.tile(np.arange(5), 40)}
    ).assign(c=lambda df: np.arange(200) % 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = jaxlmm.lmer("y ~ 1 + (1 | a/b/c)", d)
    assert list(m.ngroups) == ["c:(b:a)", "b:a", "a"]
