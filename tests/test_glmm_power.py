"""Power of glmer models (jaxlmm.power / power_curve / extend on a binomial or Poisson fit) against
brute-force lme4 simulations (scripts/make_glmm_power_fixtures.R -> tests/fixtures/glmm_power/).

R simulated 600 responses from explicit parameters on a crossed 12 subjects x 12 items pilot (binomial:
acc ~ cond + freq + (1|subj) + (1|item); Poisson: n ~ cond + (1|subj) + (1|item)), refitted glmer with and
without each term (LRT by anova, chi-square with the term's df) and took the Wald z (a Wald chi-square for
the factor freq).  On the first 30 responses, exported, jaxlmm's batched tests give the same p-values per
response (most to 1e-5; at worst 2.2e-3, an LRT of 5e-5 against R's 9e-5 with p near 1); the power from jaxlmm's own simulations agrees within Monte Carlo error (4 combined binomial
standard errors).
"""

import functools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import jaxlmm
from jaxlmm import glmm_power  # the module: its test_glmm_point is not a test
from jaxlmm.errors import DataError
from jaxlmm.power import resolve_terms

FIXTURES = Path(__file__).parent / "fixtures" / "glmm_power"
FORMULAS = {
    "binomial": "acc ~ cond + freq + (1 | subj) + (1 | item)",
    "poisson": "n ~ cond + (1 | subj) + (1 | item)",
}


@functools.cache
def reference(family: str) -> dict:
    return json.loads((FIXTURES / f"{family}.json").read_text())


@functools.cache
def pilot(family: str):
    data = pd.read_csv(FIXTURES / "pilot.csv")
    data["freq"] = pd.Categorical(data.freq, categories=["lo", "mid", "hi"])
    return jaxlmm.glmer(FORMULAS[family], data, family=family)


def truth(family: str) -> dict:
    """power()'s fixef= and covariance= of the parameters R simulated with."""
    ref = reference(family)
    theta = ref["theta"]
    return {
        "fixef": dict(zip(ref["fixef_names"], ref["beta"])),
        "covariance": {"subj": np.array([[theta[0] ** 2]]), "item": np.array([[theta[1] ** 2]])},
    }


def within_monte_carlo(ours: float, n_ours: int, theirs: float, n_theirs: int) -> bool:
    pooled = (ours * n_ours + theirs * n_theirs) / (n_ours + n_theirs)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n_ours + 1 / n_theirs))
    return abs(ours - theirs) < 4 * se


@pytest.mark.slow  # 15 s: the default tier keeps under its 4 minutes (CI runs this tier too)
@pytest.mark.parametrize("family", ["binomial", "poisson"])
def test_p_values_of_rs_simulated_responses_are_lme4s(family):
    ref, m = reference(family), pilot(family)
    assert m.fixef.to_dict() == pytest.approx(dict(zip(ref["fixef_names"], ref["pilot_beta"])), abs=2e-4)
    x = np.r_[ref["theta"], ref["beta"]]
    terms = resolve_terms(m.design, None)
    Y = np.array(ref["responses"], dtype=float).T
    out = glmm_power.test_glmm_point(glmm_power.glmm_point(m, x, terms, ("lrt", "z")), Y, ("lrt", "z"))
    per_response = pd.DataFrame(ref["per_response"])
    for name in terms:
        for test in ("lrt", "z"):
            p, ok, _ = out[(name, test)]
            theirs = per_response[f"p_{test}_{name}"].to_numpy()
            assert ok.all()
            np.testing.assert_allclose(p, theirs, rtol=5e-3, atol=5e-3, err_msg=f"{family} {name} {test}")
    singular = out[(next(iter(terms)), "z")][2]
    assert (singular == per_response["singular_full"].to_numpy()).mean() >= 0.9


@pytest.mark.slow
@pytest.mark.parametrize("family", ["binomial", "poisson"])
def test_power_agrees_with_lme4_simulations(family):
    ref = reference(family)
    res = jaxlmm.power(pilot(family), test=["lrt", "z"], nsim=600, seed=3, **truth(family))
    for row in ref["power"]:
        ours = res.table[(res.table.term == row["term"]) & (res.table.test == row["test"])].iloc[0]
        assert ours.n_failed <= 0.02 * res.nsim
        assert ours.lower <= ours.power <= ours.upper
        assert within_monte_carlo(ours.power, ours.n_valid, row["power"], row["n_valid"]), (row, ours)


@pytest.mark.slow
def test_power_curve_and_extend_of_a_glmer():
    m = pilot("binomial")
    curve = jaxlmm.power_curve(m, along="subj", breaks=[6, 12], term="cond", nsim=100, seed=1)
    assert list(curve.table.subj) == [6, 12] and list(curve.table.nobs) == [72, 144]
    # the 12-subject point is the pilot's own design on the same simulations as power()
    whole = jaxlmm.power(m, term="cond", nsim=100, seed=1)
    assert curve.results[1].table.power.iloc[0] == pytest.approx(whole.table.power.iloc[0])
    values = jaxlmm.power_curve(m, coefficient="condb", values=[0.0, 1.5], test="z", nsim=100, seed=1)
    assert values.table.power.iloc[0] < 0.2 and values.table.power.iloc[1] > 0.6
    big = jaxlmm.extend(m, along="subj", n=24)
    assert big.nobs == 288 and big.ngroups["subj"] == 24
    assert big.fixef.to_dict() == pytest.approx(m.fixef.to_dict())
    assert jaxlmm.power(big, term="cond", fixef={"condb": 0.8}, nsim=100, seed=1).power() > (
        jaxlmm.power(m, term="cond", fixef={"condb": 0.8}, nsim=100, seed=1).power()
    )


def test_glmer_power_refuses_lmm_tests_and_sigma():
    m = pilot("poisson")
    with pytest.raises(DataError, match="does not apply to a glmer"):
        jaxlmm.power(m, test="satterthwaite", nsim=10)
    with pytest.raises(DataError, match="does not apply to a glmer"):
        jaxlmm.power(m, test="kr", nsim=10)
    with pytest.raises(DataError, match="no residual sd"):
        jaxlmm.power(m, sigma=1.0, nsim=10)
    with pytest.raises(DataError, match="not a coefficient"):
        jaxlmm.power(m, fixef={"nope": 1.0}, nsim=10)
    with pytest.raises(DataError, match="glmer fits"):
        jaxlmm.power(jaxlmm.lmer("y ~ x + (1 | g)", _lmm_data()), test="z", nsim=10)


def _lmm_data() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(6), 5)
    return pd.DataFrame(
        {"g": g, "x": rng.standard_normal(30), "y": rng.standard_normal(30) + rng.standard_normal(6)[g]}
    )
