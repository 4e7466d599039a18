"""Numerical edge cases against lme4 (fixtures by scripts/make_edge_fixtures.R, best of five optimisers).

Covariates on scales 1e-6 and 1e6, a perfectly balanced split plot, groups with one observation,
singular fits (a variance of 0, correlations of +1 and -1), nearly unidentifiable models and 10,000
groups of 2-5 rows.  lme4's best optimiser (two of the five run to tight tolerances) reaches jaxlmm's
optimum on every case, seen from both sides: jaxlmm's criterion is no worse than lme4's best, and lme4's
own deviance function at jaxlmm's theta equals jaxlmm's criterion there.  The estimates must then agree;
each tolerance is a small multiple (3-10x) of the worst agreement measured, named in the comment.
"""

import json
import warnings
from functools import cache

import numpy as np
import pandas as pd
import pytest
from conftest import FIXTURES

import jaxlmm

EDGE = sorted(p.stem for p in (FIXTURES / "edge").glob("*.json"))


@cache
def reference(name: str) -> dict:
    fx = json.loads((FIXTURES / "edge" / f"{name}.json").read_text())
    fx["theta"] = np.atleast_1d(np.asarray(fx["theta"], dtype=float))
    fx["vcov"] = np.atleast_2d(np.asarray(fx["vcov"], dtype=float))
    return fx


@cache
def data(name: str) -> pd.DataFrame:
    return pd.read_csv(FIXTURES / "data" / f"{name}.csv")


@cache
def fitted(name: str) -> jaxlmm.LinearMixedModel:
    fx = reference(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", jaxlmm.ConvergenceWarning)
        return jaxlmm.lmer(fx["formula"], data(fx["data"]), reml=fx["REML"])


# jaxlmm's criterion minus lme4's best, relative: worst 4.8e-14 (balanced_reml); lme4's deviance function
# against jaxlmm's criterion at jaxlmm's theta: worst 6.3e-14 (scales_big_slope_ml)
CRITERION_RTOL = 1e-12


def test_every_kind_of_edge_case_is_present():
    kinds = {
        "scales",
        "balanced",
        "single_obs",
        "singular_zero_var",
        "singular_cor_plus",
        "singular_cor_minus",
        "near",
        "many_groups",
    }
    assert all(any(name.startswith(k) for name in EDGE) for k in kinds)
    assert reference("many_groups_int_ml")["ngroups"] == {"g": 10_000}


@pytest.mark.parametrize("name", EDGE)
def test_criterion_not_worse_than_lme4(name):
    fx, m = reference(name), fitted(name)
    assert m.converged
    assert -2 * m.loglik <= fx["criterion"] + CRITERION_RTOL * abs(fx["criterion"])
    assert np.isfinite(m.fixef.values).all() and np.isfinite(m.vcov.values).all() and np.isfinite(m.sigma)


@pytest.mark.parametrize("name", EDGE)
def test_criterion_function_equals_lme4s_at_the_same_theta(name):
    """lme4's lmer(..., devFunOnly = TRUE) at jaxlmm's theta against jaxlmm's criterion there, and that
    point is lme4's best optimum: so the estimates below compare the same optimum."""
    fx, m = reference(name), fitted(name)
    theta = np.atleast_1d(np.asarray(fx["jaxlmm_theta"], dtype=float))
    assert m.criterion_and_gradient(theta)[0] == pytest.approx(fx["lme4_criterion_at_jaxlmm_theta"], rel=CRITERION_RTOL)
    assert fx["lme4_criterion_at_jaxlmm_theta"] <= fx["criterion"] + CRITERION_RTOL * abs(fx["criterion"])


@pytest.mark.parametrize("name", EDGE)
def test_estimates_match_lme4_at_the_same_optimum(name):
    fx, m = reference(name), fitted(name)
    assert list(m.fixef.index) == list(fx["fixef"])
    beta = np.array(list(fx["fixef"].values()))
    # worst 4.7e-8 relative, 1.8e-8 of the largest (near_within_const_slope_ml)
    np.testing.assert_allclose(m.fixef.values, beta, rtol=2e-7, atol=1e-7 * np.max(np.abs(beta)))
    np.testing.assert_allclose(m.sigma, fx["sigma"], rtol=3e-7)  # worst 4.8e-8 (scales_big_slope_ml)
    # worst 3.5e-7 relative (many_groups_slope_reml), 8e-8 of the largest (singular_cor_minus_reml)
    np.testing.assert_allclose(m.vcov.values, fx["vcov"], rtol=2e-6, atol=5e-7 * np.max(np.abs(fx["vcov"])))
    vc = pd.DataFrame(fx["varcorr"])
    ours = m.varcorr
    assert list(ours.grp) == list(vc.grp)
    assert list(ours.var1.fillna("")) == list(vc.var1.fillna(""))
    assert list(ours.var2.fillna("")) == list(vc.var2.fillna(""))
    is_sd = vc.var2.isna().to_numpy()
    sd_ref = vc.sdcor.astype(float).to_numpy()
    # worst 5.7e-7 relative (near_within_const_slope_ml), 3.1e-7 of the largest (scales_small_slope_reml)
    np.testing.assert_allclose(
        ours.sdcor.to_numpy()[is_sd], sd_ref[is_sd], rtol=3e-6, atol=2e-6 * np.max(sd_ref[is_sd])
    )
    cor_ref, cor = sd_ref[~is_sd], ours.sdcor.to_numpy()[~is_sd]
    # a correlation is undefined where an sd is 0; lme4 reports +-1 or NaN for sds of 1e-8 and 0
    defined = np.isfinite(cor_ref) & np.isfinite(cor)
    np.testing.assert_allclose(cor[defined], cor_ref[defined], atol=1e-5)  # worst 2.4e-6 (scales_small_slope_reml)
    assert m.singular == fx["singular"]
