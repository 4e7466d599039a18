"""Every reference fit: criterion at lme4's best optimum or lower, and estimates that agree with lme4."""

import numpy as np
import pandas as pd
import pytest
from conftest import CASES, fitted, reference


@pytest.mark.parametrize("name", CASES)
def test_criterion_not_worse_than_lme4(name):
    fx, m = reference(name), fitted(name)
    crit = -2 * m.loglik
    assert crit <= fx["criterion"] + 1e-6 * abs(fx["criterion"])
    assert m.converged


@pytest.mark.parametrize("name", CASES)
def test_estimates_match_lme4(name):
    fx, m = reference(name), fitted(name)
    assert list(m.fixef.index) == list(fx["fixef"])
    np.testing.assert_allclose(m.fixef.values, list(fx["fixef"].values()), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(m.sigma, fx["sigma"], rtol=1e-4)
    np.testing.assert_allclose(m.vcov.values, fx["vcov"], rtol=1e-4, atol=1e-10)
    vc = pd.DataFrame(fx["varcorr"])
    ours = m.varcorr
    assert list(ours.grp) == list(vc.grp)
    assert list(ours.var1.fillna("")) == list(vc.var1.fillna(""))
    assert list(ours.var2.fillna("")) == list(vc.var2.fillna(""))
    sd = vc.sdcor.astype(float).values
    np.testing.assert_allclose(ours.sdcor.values, sd, rtol=1e-4, atol=1e-4 * np.max(np.abs(sd)))


@pytest.mark.parametrize("name", CASES)
def test_theta_and_summaries(name):
    fx, m = reference(name), fitted(name)
    np.testing.assert_allclose(m.theta, fx["theta"], rtol=1e-3, atol=2e-4 * np.max(np.abs(fx["theta"])))
    assert m.nobs == fx["nobs"]
    assert m.ngroups == {k: v for k, v in fx["ngroups"].items()}
    assert m.singular == fx["singular"]
    np.testing.assert_allclose([m.aic, m.bic], [fx["aic"], fx["bic"]], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(m.fitted(), fx["fitted"], rtol=1e-4, atol=1e-6 * np.max(np.abs(fx["fitted"])))
    np.testing.assert_allclose(m.residuals() + m.fitted(), m.design.y)


def test_deviance_of_reml_fit_is_ml_deviance_at_reml_estimates():
    m = fitted("sleepstudy_corr_reml")
    # the ML deviance at the REML estimates exceeds the ML optimum
    assert m.deviance > reference("sleepstudy_corr_ml")["criterion"]


def test_predict_population_and_new_levels():
    m = fitted("sleepstudy_corr_reml")
    data = pd.DataFrame({"Days": [0.0, 5.0], "Subject": [308, 99999]})
    pop = m.predict(data, re_form="~0")
    np.testing.assert_allclose(pop, m.fixef["(Intercept)"] + m.fixef["Days"] * np.array([0, 5]))
    full = m.predict(data)
    assert full[1] == pytest.approx(pop[1])  # unseen subject: population prediction
    assert full[0] == pytest.approx(m.fitted()[0])  # subject 308 on day 0 is the first row


def test_missing_values_dropped_and_counted():
    from conftest import load_data

    import jaxlmm

    data = load_data("sleepstudy").copy()
    data.loc[[3, 10], "Reaction"] = np.nan
    m = jaxlmm.lmer("Reaction ~ Days + (1 | Subject)", data)
    assert m.nobs == 178 and m.n_dropped == 2
