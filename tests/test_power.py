"""Power by simulation against the normal-theory power of a slope test."""

import numpy as np
import pandas as pd
import pytest
import scipy.stats

import jaxlmm
from jaxlmm.power import power, power_curve


def design(groups: int, per: int = 8) -> pd.DataFrame:
    rng = np.random.default_rng(groups)
    return pd.DataFrame({"x": rng.uniform(0, 1, groups * per), "Group": np.repeat(np.arange(groups), per)})


SPEC = {"fixef": {"(Intercept)": 1.0, "x": 0.5}, "covariance": {"Group": [[0.3]]}, "sigma": 1.0, "term": "x"}


def normal_power(data: pd.DataFrame, slope: float, sigma: float, alpha: float = 0.05) -> float:
    """x varies within groups, so its SE is close to the OLS one: sigma / sqrt(Sxx)."""
    x = data.x.to_numpy()
    z = slope / (sigma / np.sqrt(np.sum((x - x.mean()) ** 2)))
    c = scipy.stats.norm.ppf(1 - alpha / 2)
    return scipy.stats.norm.sf(c - z) + scipy.stats.norm.cdf(-c - z)


@pytest.mark.parametrize("test", ["lrt", "satterthwaite"])
def test_power_matches_normal_theory(test):
    data = design(24)
    res = power("y ~ x + (1 | Group)", data, test=test, nsim=300, seed=4, **SPEC)
    assert res["n_failed"] == 0 and res["n_valid"] == 300
    expected = normal_power(data, 0.5, 1.0)
    assert abs(res["power"] - expected) < 4 * np.sqrt(expected * (1 - expected) / 300) + 0.03


def test_power_curve_increases_and_pb_runs():
    curve = power_curve("y ~ x + (1 | Group)", design, [8, 32], nsim=200, seed=2, **SPEC)
    assert list(curve.n_groups) == [8, 32]
    assert curve.power.iloc[1] > curve.power.iloc[0]
    pb = power("y ~ x + (1 | Group)", design(8), test="pb", nsim=100, nboot=100, seed=3, **SPEC)
    assert 0 <= pb["power"] <= 1 and pb["n_valid"] == 100


def test_power_input_errors():
    with pytest.raises(jaxlmm.DataError, match="not a fixed-effect term"):
        power("y ~ x + (1 | Group)", design(8), **{**SPEC, "term": "z"}, nsim=10)
    with pytest.raises(jaxlmm.DataError, match="1 x 1"):
        power("y ~ x + (1 | Group)", design(8), **{**SPEC, "covariance": {"Group": np.eye(2)}}, nsim=10)
    with pytest.raises(jaxlmm.DataError, match="test must be"):
        power("y ~ x + (1 | Group)", design(8), test="wald", nsim=10, **SPEC)
