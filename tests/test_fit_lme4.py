"""Every reference fit: criterion at lme4's best optimum or lower, and estimates that agree with lme4.

The references (scripts/make_lme4_fixtures.R) are the best of five lme4 optimisers, two of them bobyqa and
nloptwrap run to tolerances far below lme4's defaults, so lme4's optimum is accurate to about 1e-13 in the
criterion.  Each tolerance below is a small multiple (3-10x) of the worst agreement measured over the 31
cases at two package versions (the worst case named in the comment).  The worst is mostly
oxboys_quadratic_reml: lme4's criterion function and jaxlmm's differ by 1e-8 (1.5e-11 relative) at the same
theta, rounding in both, and along the criterion's flattest direction (curvature 0.45) that noise leaves
theta_1 = 13.85 determined to about 1e-4 only; the quantities that follow theta inherit that.
"""

import numpy as np
import pandas as pd
import pytest
from conftest import CASES, fitted, reference

from jaxlmm import DataError

# jaxlmm's criterion at its optimum minus lme4's best, relative: worst +4e-13 (seed_lmm3_reml)
CRITERION_RTOL = 1e-11
# jaxlmm's criterion function against lme4's devFunOnly function at the same theta: worst 1.5e-11
# (oxboys_quadratic_reml)
CRITERION_FUNCTION_RTOL = 1e-10


@pytest.mark.parametrize("name", CASES)
def test_criterion_not_worse_than_lme4(name):
    fx, m = reference(name), fitted(name)
    crit = -2 * m.loglik
    assert crit <= fx["criterion"] + CRITERION_RTOL * abs(fx["criterion"])
    assert m.converged


@pytest.mark.parametrize("name", CASES)
def test_criterion_function_equals_lme4s_at_the_same_theta(name):
    """lme4's own deviance function (lmer(..., devFunOnly = TRUE)) at jaxlmm's theta, against jaxlmm's
    criterion at that theta; with the test above, jaxlmm's optimum is lme4's optimum seen from both sides."""
    fx, m = reference(name), fitted(name)
    ours, _ = m.criterion_and_gradient(fx["jaxlmm_theta"])
    assert ours == pytest.approx(fx["lme4_criterion_at_jaxlmm_theta"], rel=CRITERION_FUNCTION_RTOL)
    # the recorded theta is jaxlmm's optimum, so it is no better than lme4's best either
    assert fx["lme4_criterion_at_jaxlmm_theta"] <= fx["criterion"] + CRITERION_RTOL * abs(fx["criterion"])


def close(actual, desired, rtol, atol_of_scale, **kw):
    """assert_allclose with the absolute tolerance given relative to the reference's largest entry."""
    desired = np.asarray(desired, dtype=float)
    scale = np.nanmax(np.abs(desired)) if desired.size else 0.0
    np.testing.assert_allclose(np.asarray(actual, dtype=float), desired, rtol=rtol, atol=atol_of_scale * scale, **kw)


@pytest.mark.parametrize("name", CASES)
def test_estimates_match_lme4(name):
    fx, m = reference(name), fitted(name)
    assert list(m.fixef.index) == list(fx["fixef"])
    close(m.fixef.values, list(fx["fixef"].values()), 1e-7, 2e-8)  # worst 2.1e-8, 3.8e-9 of the largest (seed_lmm3_ml)
    close(m.sigma, fx["sigma"], 4e-6, 0)  # worst 9.2e-7 (oxboys_quadratic_reml)
    close(m.vcov.values, fx["vcov"], 6e-5, 3e-6)  # worst 1.6e-5 (oxboys), 8e-7 of the largest (sleepstudy_corr_ml)
    vc = pd.DataFrame(fx["varcorr"])
    ours = m.varcorr
    assert list(ours.grp) == list(vc.grp)
    assert list(ours.var1.fillna("")) == list(vc.var1.fillna(""))
    assert list(ours.var2.fillna("")) == list(vc.var2.fillna(""))
    is_sd = vc.var2.isna().to_numpy()
    sd = vc.sdcor.astype(float).to_numpy()
    close(ours.sdcor.to_numpy()[is_sd], sd[is_sd], 3e-5, 2e-6)  # worst 7.8e-6 (oxboys), 4.4e-7 of the largest
    # correlations: worst 1.3e-5 absolute (sleepstudy_corr_ml, the flat direction of its theta_21)
    np.testing.assert_allclose(ours.sdcor.to_numpy()[~is_sd], sd[~is_sd], rtol=0, atol=6e-5)


@pytest.mark.parametrize("name", CASES)
def test_theta_and_summaries(name):
    fx, m = reference(name), fitted(name)
    # theta: worst 8.8e-6 relative (oxboys_quadratic_reml's theta_1, see above); elsewhere 1.2e-5 relative
    # on the small theta_21 of sleepstudy_corr_ml, 2.4e-7 of the largest entry
    close(m.theta, fx["theta"], 1e-5, 3e-5)
    assert m.nobs == fx["nobs"]
    assert m.ngroups == {k: v for k, v in fx["ngroups"].items()}
    assert m.singular == fx["singular"]
    # aic/bic/logLik: worst 2.4e-11 relative (oxboys_quadratic_reml)
    np.testing.assert_allclose([m.aic, m.bic, m.loglik], [fx["aic"], fx["bic"], fx["loglik"]], rtol=1e-10)
    close(m.fitted(), fx["fitted"], 5e-7, 3e-7)  # worst 1e-7 rel, 6e-8 of the largest (sleepstudy_corr_ml)
    # residuals against R's residuals(m) (not y - fitted, true by construction): the same absolute error
    # as the fitted values, worst 6e-8 of the largest fitted value (sleepstudy_corr_ml)
    np.testing.assert_allclose(m.residuals(), fx["residuals"], rtol=0, atol=3e-7 * np.max(np.abs(fx["fitted"])))


@pytest.mark.parametrize("name", CASES)
def test_ml_deviance_matches_lme4(name):
    """m.deviance against lme4's deviance(m, REML = FALSE): the criterion of an ML fit, and for a REML fit
    the ML deviance at the REML estimates."""
    fx, m = reference(name), fitted(name)
    # an ML fit's deviance is its criterion (agreement 1e-10); at REML estimates the ML deviance is not
    # stationary, so θ's agreement with lme4 (~1e-6) moves it at first order: worst 1.7e-8 (machines_reml)
    assert m.deviance == pytest.approx(fx["ml_deviance_at_estimates"], rel=1e-7 if fx["REML"] else 1e-10)


def test_predict_population_and_new_levels():
    m = fitted("sleepstudy_corr_reml")
    data = pd.DataFrame({"Days": [0.0, 5.0], "Subject": [308, 99999]})
    pop = m.predict(data, re_form="~0")
    np.testing.assert_allclose(pop, m.fixef["(Intercept)"] + m.fixef["Days"] * np.array([0, 5]))
    with pytest.raises(DataError, match="new levels detected in newdata for grouping factor 'Subject': 99999"):
        m.predict(data)  # lme4 refuses an unseen level unless allow.new.levels = TRUE (issue 14)
    full = m.predict(data, allow_new_levels=True)
    assert full[1] == pytest.approx(pop[1])  # unseen subject: population prediction
    assert full[0] == pytest.approx(m.fitted()[0])  # subject 308 on day 0 is the first row


def test_missing_values_dropped_and_counted():
    from conftest import load_data

    import jaxlmm

    data = load_data("sleepstudy").copy()
    data.loc[[3, 10], "Reaction"] = np.nan
    m = jaxlmm.lmer("Reaction ~ Days + (1 | Subject)", data)
    assert m.nobs == 178 and m.n_dropped == 2
