"""lme4's profile confidence intervals (confint(m, method = "profile", oldNames = FALSE)), fixtures from
scripts/make_kr_fixtures.R."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import FIXTURES
from test_anova_type3 import kr_data

import jaxlmm

KR = FIXTURES / "kr"


def check(name: str):
    fx = json.loads((KR / f"{name}.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = jaxlmm.lmer(fx["formula"], kr_data(fx["data"]), reml=fx["REML"])
    for level, lo, hi in ((0.95, "lower", "upper"), (0.90, "lower90", "upper90")):
        ci = m.confint(method="profile", level=level)
        assert list(ci.index) == fx["names"]
        np.testing.assert_allclose(ci.iloc[:, 0].values, fx[lo], rtol=1e-3)
        np.testing.assert_allclose(ci.iloc[:, 1].values, fx[hi], rtol=1e-3)
    return ci


def test_profile_intervals_match_lme4_sleepstudy():
    ci = check("profile_sleepstudy")
    assert list(ci.columns) == ["5.0 %", "95.0 %"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["profile_sleepstudy_ml", "profile_crossed", "profile_sleepstudy_dblbar"])
def test_profile_intervals_match_lme4(name):
    check(name)


def test_profile_refuses_bad_levels():
    m = jaxlmm.lmer("Reaction ~ Days + (Days | Subject)", kr_data("sleepstudy"))
    with pytest.raises(jaxlmm.JaxlmmError, match="level"):
        m.confint(method="profile", level=1.5)


# --------------------------------------------------------------------------- singular fits
# scripts/make_profile_singular_fixtures.R.  Where lme4 warns "bad spline fit for <name>: falling back to linear
# interpolation", its limit is a linear interpolation between its profile points; jaxlmm's limits there were
# checked against a brute-force profile (a dense ML deviance minimised by L-BFGS-B from many starts: ζ² at
# jaxlmm's limit = 3.8415 = 1.96², at lme4's 3.855 for profile_singular_zero_var's sd upper limit), so those
# entries get 5e-3.
def singular_case(name: str):
    fx = json.loads((KR / f"{name}.json").read_text())
    data = (
        pd.read_csv(FIXTURES / "data" / "edge_singular.csv") if fx["data"] == "edge_singular" else kr_data(fx["data"])
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = jaxlmm.lmer(fx["formula"], data, reml=fx["REML"])
        ci = m.confint(method="profile")
    assert m.singular
    return fx, ci


def _lme4_limits(fx, ci, skip=()):
    lower, upper = (np.array([np.nan if v is None else v for v in fx[k]], dtype=float) for k in ("lower", "upper"))
    assert list(ci.index) == fx["names"]
    for i, name in enumerate(fx["names"]):
        if name in skip:
            continue
        rtol = 5e-3 if any(f"bad spline fit for {name}:" in w for w in fx["warnings"]) else 2e-3
        for ours, theirs in ((ci.iloc[i, 0], lower[i]), (ci.iloc[i, 1], upper[i])):
            if theirs == 0:  # an sd at its bound: exactly 0, as lme4
                assert ours == 0.0, name
            else:
                assert ours == pytest.approx(theirs, rel=rtol), name


@pytest.mark.parametrize(
    "name", ["profile_singular_zero_var", pytest.param("profile_singular_crossed", marks=pytest.mark.slow)]
)
def test_profile_intervals_at_a_zero_variance_match_lme4(name):
    fx, ci = singular_case(name)
    _lme4_limits(fx, ci)


@pytest.mark.slow
def test_profile_intervals_at_a_correlation_of_plus_one_match_lme4():
    """lme4 gives [-1, 1] for the correlation with "non-monotonic profile" warnings; its profile there is wrong
    (the brute-force ML deviance at cor = -0.99 is 82 above the optimum); jaxlmm's lower limit 0.932 has
    ζ² = 3.87 in the brute force, and every other limit agrees with lme4's."""
    fx, ci = singular_case("profile_singular_cor_plus_ml")
    cor = "cor_x.(Intercept)|g"
    assert any(f"non-monotonic profile for {cor}" in w for w in fx["warnings"])
    _lme4_limits(fx, ci, skip=(cor,))
    assert 0.9 < ci.loc[cor].iloc[0] < 0.96 and ci.loc[cor].iloc[1] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.slow
def test_profile_intervals_where_lme4_gives_na():
    """At a correlation of -1 (REML fit) lme4's profile gives NA for both sds and σ ("NAs detected in
    profiling"); jaxlmm's limits (brute-force ζ² 3.8415 at each) bracket the estimates; the fixed effects agree."""
    fx, ci = singular_case("profile_singular_cor_minus")
    assert "NAs detected in profiling" in fx["warnings"]
    na = [n for n, lo in zip(fx["names"], fx["lower"]) if lo is None]
    assert na == ["sd_(Intercept)|g", "sd_x|g", "sigma"]
    _lme4_limits(fx, ci, skip=(*na, "cor_x.(Intercept)|g"))
    np.testing.assert_allclose(ci.loc[na].values, [[0.8172676, 1.7925584], [0.4131638, 0.8772441],
                                                   [0.3967797, 0.5469840]], rtol=2e-3)  # fmt: skip
    assert ci.loc["cor_x.(Intercept)|g"].iloc[0] == pytest.approx(-1.0, abs=1e-6)
    assert -0.995 < ci.loc["cor_x.(Intercept)|g"].iloc[1] < -0.98


@pytest.mark.slow
def test_profile_intervals_where_lme4_fails():
    """Every random-effect parameter at 0 (ML fit of y0 ~ x + (1 + x | g)): lme4's confint stops with an error
    ("need at least two non-NA values to interpolate"); jaxlmm gives 0 as both sds' lower limits, [-1, 1]
    for the correlation and upper limits with brute-force ζ² = 3.8415."""
    fx, ci = singular_case("profile_singular_zero_cov_ml")
    assert fx["error"] and not fx["lower"]
    assert ci.loc["sd_(Intercept)|g"].iloc[0] == 0.0 and ci.loc["sd_x|g"].iloc[0] == 0.0
    np.testing.assert_allclose(ci.loc["cor_x.(Intercept)|g"].values, [-1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(ci.loc[["sd_(Intercept)|g", "sd_x|g"]].iloc[:, 1], [0.5801363, 0.2146698], rtol=2e-3)
