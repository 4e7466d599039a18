"""lmerTest's type III anova and contest (Satterthwaite and Kenward-Roger) against fixtures made by
scripts/make_kr_fixtures.R (tests/fixtures/kr)."""

import json
import warnings
from functools import cache

import numpy as np
import pandas as pd
import pytest
from conftest import FIXTURES

import jaxlmm
from jaxlmm.ftests import combined_ddf
from jaxlmm.type3 import type3_contrasts, zapsmall

KR = FIXTURES / "kr"
DEFAULT_CASES = ["crossed_full", "singular"]  # unbalanced crossed with a factor x covariate interaction; singular
SLOW_CASES = [
    "crossed_main",
    "crossed_xfirst",  # the covariate first: x:cond
    "crossed_noint",  # no intercept: cond coded with all its levels
    "balanced",
    "balanced_oneway",  # one term: lmerTest's type I contrasts
    "sleepstudy",
    "ham",  # lmerTest's ham: a three-way interaction of factors, balanced
    "ham_unbalanced",
    "containment_nested",  # site/pw: site:pw codes site by indicators, so site is not contained in it (lmerTest)
    "containment_slope",  # x1 + A:x1 + B: A coded by indicators in x1:A
]
CASES = DEFAULT_CASES + [pytest.param(name, marks=pytest.mark.slow) for name in SLOW_CASES]
METHODS = {"Satterthwaite": "anova_satterthwaite", "Kenward-Roger": "anova_kenward_roger"}


def kr_data(name: str) -> pd.DataFrame:
    return (
        pd.read_csv(FIXTURES / "data" / "sleepstudy.csv") if name == "sleepstudy" else pd.read_csv(KR / f"{name}.csv")
    )


@cache
def kr_reference(name: str) -> dict:
    return json.loads((KR / f"{name}.json").read_text())


@cache
def kr_fitted(name: str) -> jaxlmm.LinearMixedModel:
    fx = kr_reference(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return jaxlmm.lmer(fx["formula"], kr_data(fx["data"]), reml=fx["REML"])


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("ddf", list(METHODS))
def test_type3_anova_matches_lmertest(name, ddf):
    fx = kr_reference(name)
    ref = {k: np.atleast_1d(v) for k, v in fx[METHODS[ddf]].items()}
    table = kr_fitted(name).anova(ddf=ddf)
    assert list(table.index) == list(ref["terms"])
    np.testing.assert_array_equal(table["NumDF"].values, ref["NumDF"])
    np.testing.assert_allclose(table["F value"].values, ref["F"], rtol=1e-4)
    np.testing.assert_allclose(table["DenDF"].values, ref["DenDF"], rtol=1e-4)
    np.testing.assert_allclose(table["Sum Sq"].values, ref["SumSq"], rtol=1e-4)
    np.testing.assert_allclose(table["Mean Sq"].values, ref["MeanSq"], rtol=1e-4)
    np.testing.assert_allclose(table["Pr(>F)"].values, ref["p"], rtol=1e-3, atol=1e-12)


@pytest.mark.slow
def test_kenward_roger_and_satterthwaite_differ_on_unbalanced_and_agree_on_balanced_data():
    unbalanced = kr_fitted("crossed_full")
    sat, kr = unbalanced.anova(), unbalanced.anova(ddf="Kenward-Roger")
    assert np.all(np.abs(sat["DenDF"].values / kr["DenDF"].values - 1) > 1e-3)
    balanced = kr_fitted("balanced")
    np.testing.assert_allclose(balanced.anova()["DenDF"], balanced.anova(ddf="Kenward-Roger")["DenDF"], rtol=1e-6)


@pytest.mark.parametrize(
    "name",
    ["crossed_full", "singular"]
    + [pytest.param(n, marks=pytest.mark.slow) for n in ("balanced", "ham", "containment_nested", "containment_slope")],
)
def test_type3_hypotheses_match_lmertest(name):
    """The contrast matrices themselves (lmerTest's attr(anova, "hypotheses"))."""
    fx = kr_reference(name)
    ours = type3_contrasts(kr_fitted(name).design)
    for term, ref in fx["hypotheses"].items():
        np.testing.assert_allclose(ours[term], np.atleast_2d(ref), atol=1e-7)


@pytest.mark.parametrize("ddf", list(METHODS))
def test_contest_matches_lmertest(ddf):
    fx = kr_reference("contest_crossed")
    m = kr_fitted("crossed_full")
    key = "satterthwaite" if ddf == "Satterthwaite" else "kenward_roger"
    md = m.contest(np.array(fx["L2"]), ddf=ddf).iloc[0]
    ref = fx[f"md_{key}"]
    for col in ("F value", "NumDF", "DenDF", "Sum Sq"):
        assert md[col] == pytest.approx(ref[col], rel=1e-4)
    one = m.contest(np.array(fx["L1"]), ddf=ddf).iloc[0]
    ref = fx[f"d1_{key}"]
    for col in ("Estimate", "Std. Error", "df", "t value", "Pr(>|t|)"):
        assert one[col] == pytest.approx(ref[col], rel=1e-4)


def test_combined_ddf_follows_lmertest():
    assert combined_ddf(np.array([7.0])) == 7.0
    assert combined_ddf(np.array([5.0, 5.0])) == 5.0
    assert combined_ddf(np.array([1.5, 30.0])) == 2.0
    E = 10 / 8 + 20 / 18
    assert combined_ddf(np.array([10.0, 20.0])) == pytest.approx(2 * E / (E - 2))


def test_zapsmall_rounds_like_r():
    np.testing.assert_array_equal(zapsmall(np.array([1.0, 1e-12, 1 / 3])), [1.0, 0.0, 0.3333333])
    np.testing.assert_array_equal(zapsmall(np.array([123.0, 1e-6])), [123.0, 0.0])


def test_bad_contests_raise():
    m = kr_fitted("crossed_full")
    with pytest.raises(jaxlmm.JaxlmmError, match="columns"):
        m.contest(np.ones(3))
    with pytest.raises(jaxlmm.JaxlmmError, match="ddf"):
        m.anova(ddf="Kenward")
    with pytest.raises(jaxlmm.JaxlmmError, match="missing"):
        m.contest(np.array([np.nan, 1.0, 0, 0, 0, 0]))


# --------------------------------------------------------------------------- rank-deficient fixed effects
# scripts/make_rankdef_fixtures.R: lme4 drops aliased columns of X; lmerTest's anova(m) and contest still test
# what the kept columns can (a missing cell of A x B, its reference cell missing, the same with a covariate's
# three-way interaction, an aliased covariate, a factor nested in another with unique labels).
RANKDEF_DEFAULT = ["rankdef_cell", "rankdef_lincomb"]
RANKDEF_SLOW = ["rankdef_nested", "rankdef_cell0", "rankdef_cell_x"]
RANKDEF_CASES = RANKDEF_DEFAULT + [pytest.param(name, marks=pytest.mark.slow) for name in RANKDEF_SLOW]


def rankdef_data(name: str) -> pd.DataFrame:
    if name == "rankdef_nested":
        return pd.read_csv(KR / "rankdef_nested.csv")
    d = pd.read_csv(KR / "rankdef.csv")
    empty = {"rankdef_cell": ("a3", "b2"), "rankdef_cell0": ("a1", "b1")}.get(name)
    return d if empty is None else d[~((d.A == empty[0]) & (d.B == empty[1]))]


@cache
def rankdef_fitted(name: str) -> jaxlmm.LinearMixedModel:
    fx = kr_reference(name)
    with pytest.warns(UserWarning, match="rank deficient"):
        m = jaxlmm.lmer(fx["formula"], rankdef_data(fx["data"]), reml=True)
    assert m.design.fixef_names == fx["fixef_names"]
    assert m.design.dropped_fixef == np.atleast_1d(fx["dropped"]).tolist()
    assert m.reml_criterion <= fx["reml_criterion"] + 1e-6
    return m


def _nan_array(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in np.atleast_1d(values)], dtype=float)


@pytest.mark.parametrize("name", RANKDEF_CASES)
@pytest.mark.parametrize("ddf", list(METHODS))
def test_type3_anova_of_rank_deficient_designs_matches_lmertest(name, ddf):
    fx = kr_reference(name)
    m = rankdef_fitted(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = m.anova(ddf=ddf)
    missing = [str(w.message) for w in caught if "Missing cells" in str(w.message)]
    messages = [fx["messages"]] if isinstance(fx["messages"], str) else fx["messages"]
    assert len(missing) == len(messages)
    if messages:  # lmerTest's message names the same empty cells
        assert missing[0].split(". ")[0] == messages[0].split(".  ")[0]
    ref = fx[METHODS[ddf]]
    assert list(table.index) == list(ref["terms"])
    for col, key in (("NumDF", "NumDF"), ("F value", "F"), ("DenDF", "DenDF"), ("Sum Sq", "SumSq"),
                     ("Mean Sq", "MeanSq")):  # fmt: skip
        np.testing.assert_allclose(table[col].values, _nan_array(ref[key]), rtol=1e-5, err_msg=col)
    np.testing.assert_allclose(table["Pr(>F)"].values, _nan_array(ref["p"]), rtol=1e-4, atol=1e-12)


@pytest.mark.parametrize("name", RANKDEF_CASES)
def test_type3_hypotheses_of_rank_deficient_designs_match_lmertest(name):
    fx = kr_reference(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = type3_contrasts(rankdef_fitted(name).design)
    assert list(ours) == list(fx["hypotheses"])
    for term, ref in fx["hypotheses"].items():
        expected = np.atleast_2d(np.array(ref, dtype=float)) if len(ref) else np.zeros((0, len(fx["fixef_names"])))
        np.testing.assert_allclose(ours[term], expected, atol=1e-7, err_msg=term)


@pytest.mark.parametrize("ddf", list(METHODS))
def test_contest_of_a_rank_deficient_design_matches_lmertest(ddf):
    """A three-row L of rank 2 (the third row the sum of the others) and a one-row L on the missing-cell model."""
    fx = kr_reference("rankdef_cell")["contest"]
    m = rankdef_fitted("rankdef_cell")
    key = "satterthwaite" if ddf == "Satterthwaite" else "kenward_roger"
    md = m.contest(np.array(fx["L"]), ddf=ddf).iloc[0]
    for col in ("F value", "NumDF", "DenDF", "Sum Sq", "Pr(>F)"):
        assert md[col] == pytest.approx(fx[f"md_{key}"][col], rel=1e-5)
    one = m.contest(np.array(fx["L1"]), ddf=ddf).iloc[0]
    for col in ("Estimate", "Std. Error", "df", "t value", "Pr(>|t|)"):
        assert one[col] == pytest.approx(fx[f"d1_{key}"][col], rel=1e-5)
