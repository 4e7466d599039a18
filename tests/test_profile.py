"""lme4's profile confidence intervals (confint(m, method = "profile", oldNames = FALSE)), fixtures from
scripts/make_kr_fixtures.R."""

import json
import warnings

import numpy as np
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
