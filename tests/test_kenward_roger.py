"""Kenward-Roger against pbkrtest (vcovAdj, KRmodcomp) and lmerTest (summary(m, ddf = "Kenward-Roger")),
fixtures from scripts/make_kr_fixtures.R."""

import json
import warnings

import numpy as np
import pytest
from conftest import FIXTURES
from test_anova_type3 import kr_data, kr_fitted, kr_reference

import jaxlmm
from jaxlmm import kenward_roger

KR = FIXTURES / "kr"


@pytest.mark.parametrize(
    "name",
    ["crossed_full", "singular"]
    + [pytest.param(n, marks=pytest.mark.slow) for n in ("crossed_main", "sleepstudy", "balanced", "ham_unbalanced")],
)
def test_adjusted_vcov_and_coef_table_match_pbkrtest(name):
    fx = kr_reference(name)
    m = kr_fitted(name)
    np.testing.assert_allclose(m.vcov_adjusted.values, np.array(fx["vcov_adjusted"]), rtol=1e-5, atol=1e-12)
    table = m.coef_table(ddf="Kenward-Roger")
    ref = fx["coef_kenward_roger"]
    np.testing.assert_allclose(table["Std. Error"].values, ref["se"], rtol=1e-5)
    np.testing.assert_allclose(table["df"].values, ref["df"], rtol=1e-5)
    np.testing.assert_allclose(table["t value"].values, ref["t"], rtol=1e-5)
    np.testing.assert_allclose(table["Pr(>|t|)"].values, ref["p"], rtol=1e-4)


def test_tidy_and_summary_take_kenward_roger():
    m = kr_fitted("crossed_full")
    ref = kr_reference("crossed_full")["coef_kenward_roger"]
    fixed = m.tidy(ddf="Kenward-Roger").query("effect == 'fixed'")
    np.testing.assert_allclose(fixed["df"].values, ref["df"], rtol=1e-5)
    np.testing.assert_allclose(fixed["std.error"].values, ref["se"], rtol=1e-5)
    text = m.summary(ddf="Kenward-Roger")
    assert "t-tests use Kenward-Roger's method" in text


@pytest.mark.parametrize(
    "name",
    ["krmodcomp_crossed_cond"]
    + [pytest.param(n, marks=pytest.mark.slow) for n in ("krmodcomp_crossed_x", "krmodcomp_sleepstudy")],
)
def test_krtest_matches_krmodcomp(name):
    fx = json.loads((KR / f"{name}.json").read_text())
    data = kr_data(fx["data"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        large, small = jaxlmm.lmer(fx["large"], data), jaxlmm.lmer(fx["small"], data)
    r = jaxlmm.krtest(large, small)
    assert r.ndf == fx["ndf"]
    assert r.F == pytest.approx(fx["F"], rel=1e-5)
    assert r.ddf == pytest.approx(fx["ddf"], rel=1e-5)
    assert r.scaling == pytest.approx(fx["F_scaling"], rel=1e-6)
    assert r.F_unscaled == pytest.approx(fx["F_unscaled"], rel=1e-5)
    assert r.p_value == pytest.approx(fx["p"], rel=1e-3)
    assert list(r.table().index) == ["Ftest", "FtestU"]
    assert jaxlmm.krtest(small, large).F == pytest.approx(r.F, rel=1e-10)  # pbkrtest swaps the models


@pytest.mark.slow
def test_krtest_refits_ml_models_by_reml():
    fx = json.loads((KR / "krmodcomp_sleepstudy.json").read_text())
    data = kr_data(fx["data"])
    large, small = jaxlmm.lmer(fx["large"], data, reml=False), jaxlmm.lmer(fx["small"], data, reml=False)
    assert jaxlmm.krtest(large, small).F == pytest.approx(fx["F"], rel=1e-5)


def test_kenward_roger_needs_reml_in_lmertest_tables():
    m = kr_fitted("crossed_full").refit_ml()
    with pytest.raises(jaxlmm.JaxlmmError, match="REML"):
        m.coef_table(ddf="Kenward-Roger")
    with pytest.raises(jaxlmm.JaxlmmError, match="REML"):
        m.anova(ddf="Kenward-Roger")


@pytest.mark.slow
def test_krtest_refuses_models_that_are_not_nested():
    data = kr_data("crossed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = jaxlmm.lmer("y ~ cond + (1 | subj)", data)
        b = jaxlmm.lmer("y ~ x + (1 | subj)", data)
    with pytest.raises(jaxlmm.ModelComparisonError, match="nested"):
        jaxlmm.krtest(a, b)


def test_too_many_random_effects_for_dense_products_is_a_clear_error(monkeypatch):
    m = kr_fitted("crossed_full")
    monkeypatch.setattr(kenward_roger, "MAX_DENSE_Q", 10)
    with pytest.raises(jaxlmm.JaxlmmError, match="dense"):
        kenward_roger.adjusted_vcov(m.theta, m.sigma, m.design)


@pytest.mark.slow
def test_variance_parameters_follow_pbkrtest():
    """(1 + x | g) has three (two variances, one covariance), (1 | g) + (0 + x | g) two; σ² comes last."""
    data = kr_data("crossed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = jaxlmm.lmer("y ~ x + (1 + x | subj)", data)
        split = jaxlmm.lmer("y ~ x + (1 | subj) + (0 + x | subj)", data)
    assert len(kenward_roger.variance_parameters(full.structure)) == 3
    assert len(kenward_roger.variance_parameters(split.structure)) == 2
    assert split.kenward_roger.W.shape == (3, 3)


@pytest.mark.slow
def test_kr_f_lanes_batch_the_anova_f_test():
    """The batched KR F test (for simulated fits) at the fitted values is lmerTest's KR row."""
    fx = kr_reference("crossed_full")
    m = kr_fitted("crossed_full")
    L = np.atleast_2d(fx["hypotheses"]["cond"])
    F, ddf, scaling = kenward_roger.kr_f_lanes(
        np.tile(m.theta, (3, 1)), np.full(3, m.sigma), np.tile(m.fixef.values, (3, 1)), m.design, L, batch_size=2
    )
    ref = fx["anova_kenward_roger"]
    np.testing.assert_allclose(F, ref["F"][0], rtol=1e-5)
    np.testing.assert_allclose(ddf, ref["DenDF"][0], rtol=1e-5)
    unscaled = ref["SumSq"][0] / (fx["sigma"] ** 2 * ref["NumDF"][0])  # lmerTest's Sum Sq is F before scaling
    np.testing.assert_allclose(scaling, ref["F"][0] / unscaled, rtol=1e-5)
