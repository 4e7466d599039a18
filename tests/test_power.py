"""Power by simulation and the bootstrap LRT against their exact values on a design where they have closed forms.

Every group has the same covariate values, so x is orthogonal to the groups: the slope is estimated from
the within-group stratum alone, the REML sigma is the within-group residual mean square on
df = n - g - 1, and (away from a zero group variance, which has probability < 1e-3 here) the Satterthwaite
t statistic follows a noncentral t(df, slope sqrt(Sxx) / sigma) with df = n - g - 1 exactly.  The ML
likelihood ratio of the slope is (n - g) log(1 + t^2 / df), a monotone function of the same t.  So the
power of each test is a noncentral t tail, and the power estimate only has Monte Carlo error.
"""

import numpy as np
import pandas as pd
import pytest
import scipy.stats

import jaxlmm
from jaxlmm.power import power, power_curve

X_VALUES = np.linspace(0, 1, 8)
SPEC = {"fixef": {"(Intercept)": 1.0, "x": 0.5}, "covariance": {"Group": [[0.3]]}, "sigma": 1.0, "term": "x"}
FORMULA = "y ~ x + (1 | Group)"


def design(groups: int) -> pd.DataFrame:
    return pd.DataFrame({"x": np.tile(X_VALUES, groups), "Group": np.repeat(np.arange(groups), X_VALUES.size)})


def t_law(groups: int):
    """The slope's t statistic: its df and the noncentral t law under SPEC."""
    df = groups * X_VALUES.size - groups - 1
    sxx = groups * np.sum((X_VALUES - X_VALUES.mean()) ** 2)
    return df, scipy.stats.nct(df, SPEC["fixef"]["x"] * np.sqrt(sxx) / SPEC["sigma"])


def prob_t2_above(groups: int, c2):
    """P(t^2 > c2) under SPEC."""
    _, law = t_law(groups)
    c = np.sqrt(c2)
    return law.sf(c) + law.cdf(-c)


def t2_critical(groups: int, test: str, a):
    """The t^2 above which the test's p-value is below a."""
    df = t_law(groups)[0]
    if test == "satterthwaite":
        return scipy.stats.t.isf(np.asarray(a) / 2, df) ** 2
    return df * np.expm1(scipy.stats.chi2.isf(a, 1) / (df + 1))  # lrt: (n - g) log(1 + t^2 / df) > chi2


def within_monte_carlo(estimate: float, exact: float, n: int, extra_var: float = 0.0) -> bool:
    return abs(estimate - exact) < 4 * np.sqrt(exact * (1 - exact) / n + extra_var)


@pytest.mark.parametrize("test", ["lrt", "satterthwaite"])
def test_power_matches_the_exact_noncentral_t_power(test):
    res = power(FORMULA, design(24), test=test, nsim=6000, seed=4, **SPEC)
    assert res["n_failed"] == 0 and res["n_valid"] == 6000
    exact = prob_t2_above(24, t2_critical(24, test, 0.05))  # 0.619 (lrt), 0.616 (satterthwaite)
    assert within_monte_carlo(res["power"], exact, 6000)
    assert res["se"] == pytest.approx(np.sqrt(res["power"] * (1 - res["power"]) / 6000))
    # the whole law of the p-values, not only the share below 0.05
    p = res["p_values"]
    ks = scipy.stats.kstest(p, lambda a: prob_t2_above(24, t2_critical(24, test, np.clip(a, 1e-300, 1))))
    assert ks.pvalue > 1e-3


def test_pb_power_matches_the_exact_power_given_its_reference_size():
    """The bootstrap test rejects when at most k of its B reference statistics reach the observed one: the
    critical value is an order statistic of the null law, whose CDF value is Beta(B - k, k + 1).  The exact
    power averages the t tail over that Beta; the single reference draw adds its spread to the Monte Carlo
    error of the nsim replicates."""
    nsim, nboot = 3000, 3999
    res = power(FORMULA, design(24), test="pb", nsim=nsim, nboot=nboot, seed=3, **SPEC)
    assert res["n_valid"] == nsim
    k = int(np.ceil(0.05 * (nboot + 1) - 1)) - 1  # p = (1 + #ref >= lrt) / (1 + B) < 0.05
    u = scipy.stats.beta.ppf((np.arange(2000) + 0.5) / 2000, nboot - k, k + 1)
    df = t_law(24)[0]
    given_reference = prob_t2_above(24, scipy.stats.f.ppf(u, 1, df))
    exact = given_reference.mean()
    assert within_monte_carlo(res["power"], exact, nsim, given_reference.var())


def test_power_curve_matches_the_exact_power_at_each_size():
    curve = power_curve(FORMULA, design, [12, 24], nsim=3000, seed=2, **SPEC)
    assert list(curve.n_groups) == [12, 24] and (curve.n_valid == 3000).all()
    for g, estimate in zip(curve.n_groups, curve.power):
        assert within_monte_carlo(estimate, prob_t2_above(g, t2_critical(g, "lrt", 0.05)), 3000)


@pytest.mark.parametrize("simulation", ["plain", "direct"])
def test_pbtest_against_the_exact_lrt_and_its_exact_null_law(simulation):
    """pbtest on data from the balanced design: its LRT equals (n - g) log(1 + t^2 / df), with t the
    within-group least-squares t of the slope computed here; its reference statistics follow the exact
    null law of that statistic (t^2 ~ F(1, df)); its p-values are the chi^2 tail of the LRT and, within
    Monte Carlo error, the exact F tail of t^2."""
    groups, nsim = 24, 3000
    data = design(groups)
    rng = np.random.default_rng(17)
    g = data.Group.to_numpy()
    data["y"] = 1 + 0.6 * data.x + rng.normal(scale=0.8, size=groups)[g] + rng.normal(size=len(data))
    large = jaxlmm.lmer(FORMULA, data, reml=False)
    small = jaxlmm.lmer("y ~ 1 + (1 | Group)", data, reml=False)
    assert large.theta[0] > 0.1 and small.theta[0] > 0.1  # away from the boundary, where the law is exact
    res = jaxlmm.pbtest(large, small, nsim=nsim, seed=5, simulation=simulation)
    df = t_law(groups)[0]
    xc = data.x - data.groupby("Group").x.transform("mean")
    yc = data.y - data.groupby("Group").y.transform("mean")
    slope = np.sum(xc * yc) / np.sum(xc**2)
    t2 = slope**2 * np.sum(xc**2) / (np.sum((yc - slope * xc) ** 2) / df)
    # LRT 2.55 (exact p 0.112); a difference of two optima of criteria near 600, each reached to ~1e-12
    assert res.lrt == pytest.approx((df + 1) * np.log1p(t2 / df), rel=1e-9)
    assert res.p_chisq == pytest.approx(scipy.stats.chi2.sf(res.lrt, 1), rel=1e-9)
    assert res.n_failed == 0 and res.reference.size == nsim
    ks = scipy.stats.kstest(res.reference, lambda s: scipy.stats.f.cdf(df * np.expm1(s / (df + 1)), 1, df))
    assert ks.pvalue > 1e-3
    exact = scipy.stats.f.sf(t2, 1, df)
    assert abs(res.p_boot - exact) < 4 * np.sqrt(exact * (1 - exact) / nsim) + 1 / nsim


def test_power_input_errors():
    with pytest.raises(jaxlmm.DataError, match="not a fixed-effect term"):
        power(FORMULA, design(8), **{**SPEC, "term": "z"}, nsim=10)
    with pytest.raises(jaxlmm.DataError, match="1 x 1"):
        power(FORMULA, design(8), **{**SPEC, "covariance": {"Group": np.eye(2)}}, nsim=10)
    with pytest.raises(jaxlmm.DataError, match="test must be"):
        power(FORMULA, design(8), test="wald", nsim=10, **SPEC)


@pytest.mark.slow
def test_kenward_roger_power_is_satterthwaites_on_a_balanced_design():
    """On a balanced design KR's and Satterthwaite's F tests nearly coincide: on the same simulations
    their power agrees within Monte Carlo error, and per response p-values to 1e-3 (8.4e-4 at worst here;
    they part at fits near the boundary)."""
    rng = np.random.default_rng(4)
    g = np.repeat(np.arange(12), 6)
    x = np.tile([0.0, 1.0], 36)
    data = pd.DataFrame({"g": g, "x": x, "y": 0.3 * x + rng.normal(0, 0.7, 12)[g] + rng.standard_normal(72)})
    pilot = jaxlmm.lmer("y ~ x + (1 | g)", data)
    res = jaxlmm.power(pilot, term="x", fixef={"x": 0.4}, test=["satterthwaite", "kr"], nsim=300, seed=2)
    sat, kr = res.power(test="satterthwaite"), res.power(test="kr")
    assert res.table.n_failed.sum() == 0
    assert abs(sat - kr) < 4 * np.sqrt(sat * (1 - sat) * 2 / 300)
    np.testing.assert_allclose(res.p_values[("x", "kr")], res.p_values[("x", "satterthwaite")], rtol=0, atol=2e-3)
