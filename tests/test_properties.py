"""Invariances a correct fit must have, checked on random small data sets (hypothesis).

Row order and the labels of group levels do not matter; adding a constant to y moves only the intercept;
scaling y by s scales the fixed effects, the standard deviations and sigma by s (theta unchanged); a batched
fit equals one-at-a-time fits; a seed reproduces a bootstrap exactly.  Every data set has 10 groups, so
the compiled kernels (whose shapes depend on the group count, not on n) are reused across examples.
"""

import warnings
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxlmm
from jaxlmm.batch import fit_responses
from jaxlmm.model import fit_design

N_GROUPS = 10
SETTINGS = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def datasets(draw):
    """10 groups of 3-8 rows: y = 1 + 0.5 x + b0 + b1 x + e with real variance in b0 and b1."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    sizes = rng.integers(3, 9, size=N_GROUPS)
    g = np.repeat(np.arange(N_GROUPS), sizes)
    x = rng.normal(size=g.size)
    b = rng.normal(size=(N_GROUPS, 2)) * [1.0, 0.5]
    y = 1 + 0.5 * x + b[g, 0] + b[g, 1] * x + rng.normal(scale=0.5, size=g.size)
    return pd.DataFrame({"y": y, "x": x, "g": [f"grp{k}" for k in g]}), seed


def fit(formula, data, reml=False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jaxlmm.ConvergenceWarning)
        return jaxlmm.lmer(formula, data, reml=reml)


def assert_same_fit(a, b, scale=1.0):
    assert a.converged and b.converged
    np.testing.assert_allclose(
        b.fixef.values, scale * a.fixef.values, rtol=1e-5, atol=1e-6 * scale * np.max(np.abs(a.fixef.values))
    )
    np.testing.assert_allclose(b.sigma, scale * a.sigma, rtol=1e-5)
    sd_a, sd_b = a.varcorr.sdcor.to_numpy(), b.varcorr.sdcor.to_numpy()
    is_sd = a.varcorr.var2.isna().to_numpy()
    np.testing.assert_allclose(sd_b[is_sd], scale * sd_a[is_sd], rtol=1e-4, atol=1e-5 * scale * sd_a.max())
    np.testing.assert_allclose(b.theta, a.theta, rtol=1e-4, atol=1e-5 * np.max(np.abs(a.theta)))


FORMULAS = ["y ~ x + (1 | g)", "y ~ x + (1 + x | g)"]


@SETTINGS
@given(datasets(), st.sampled_from(FORMULAS), st.randoms(use_true_random=False))
def test_row_order_does_not_matter(ds, formula, rnd):
    data, _ = ds
    order = list(range(len(data)))
    rnd.shuffle(order)
    a, b = fit(formula, data), fit(formula, data.iloc[order].reset_index(drop=True))
    assert -2 * b.loglik == pytest.approx(-2 * a.loglik, rel=1e-9)
    assert_same_fit(a, b)


@SETTINGS
@given(datasets(), st.sampled_from(FORMULAS), st.randoms(use_true_random=False))
def test_relabelling_group_levels_does_not_matter(ds, formula, rnd):
    data, _ = ds
    labels = sorted(data.g.unique())
    new = [f"L{k}" for k in range(len(labels))]
    rnd.shuffle(new)
    relabelled = data.assign(g=data.g.map(dict(zip(labels, new))))
    a, b = fit(formula, data), fit(formula, relabelled)
    assert -2 * b.loglik == pytest.approx(-2 * a.loglik, rel=1e-9)
    assert_same_fit(a, b)
    mapping = dict(zip(labels, new))
    ra = a.ranef().assign(grp=lambda r: r.grp.map(mapping)).set_index(["term", "grp"]).sort_index()
    rb = b.ranef().set_index(["term", "grp"]).sort_index()
    np.testing.assert_allclose(
        rb.condval.to_numpy(), ra.condval.to_numpy(), rtol=1e-4, atol=1e-5 * np.max(np.abs(ra.condval.to_numpy()))
    )


@SETTINGS
@given(datasets(), st.floats(-1e3, 1e3, allow_nan=False).filter(lambda c: abs(c) > 1e-3))
def test_adding_a_constant_to_y_moves_only_the_intercept(ds, c):
    data, _ = ds
    a, b = fit("y ~ x + (1 | g)", data, reml=True), fit("y ~ x + (1 | g)", data.assign(y=data.y + c), reml=True)
    assert b.fixef["(Intercept)"] == pytest.approx(a.fixef["(Intercept)"] + c, rel=1e-6, abs=1e-6)
    assert b.fixef["x"] == pytest.approx(a.fixef["x"], rel=1e-5, abs=1e-7)
    assert b.sigma == pytest.approx(a.sigma, rel=1e-5)
    np.testing.assert_allclose(b.theta, a.theta, rtol=1e-4, atol=1e-6)


@SETTINGS
@given(datasets(), st.sampled_from(FORMULAS), st.floats(1e-3, 1e3))
def test_scaling_y_scales_estimates_sds_and_sigma(ds, formula, s):
    data, _ = ds
    a, b = fit(formula, data), fit(formula, data.assign(y=data.y * s))
    n = len(data)
    assert -2 * b.loglik == pytest.approx(-2 * a.loglik + 2 * n * np.log(s), rel=1e-8, abs=1e-7)
    assert_same_fit(a, b, scale=s)


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets(), st.integers(0, 1000))
def test_batch_equals_one_at_a_time(ds, seed):
    data, _ = ds
    m = fit("y ~ x + (1 + x | g)", data)
    Y = m.simulate(3, seed=seed)
    batch = fit_responses(m, Y)
    for k in range(Y.shape[1]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            single = fit_design(replace(m.design, y=Y[:, k]), reml=False)
        if not (batch.converged[k] and single.converged):
            continue
        assert batch.criterion[k] == pytest.approx(-2 * single.loglik, abs=1e-6)
        np.testing.assert_allclose(batch.beta[k], single.fixef.values, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(batch.sigma[k], single.sigma, rtol=1e-4)
    assert batch.converged.sum() >= 2


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets(), st.integers(0, 2**31 - 1))
def test_a_seed_reproduces_a_bootstrap_exactly(ds, seed):
    data, _ = ds
    m = fit("y ~ x + (1 | g)", data)
    a, b = m.bootstrap(4, seed=seed), m.bootstrap(4, seed=seed)
    np.testing.assert_array_equal(a.theta, b.theta)
    np.testing.assert_array_equal(a.beta, b.beta)
    np.testing.assert_array_equal(a.sigma, b.sigma)
    np.testing.assert_array_equal(m.simulate(2, seed=seed), m.simulate(2, seed=seed))
    assert not np.array_equal(m.simulate(2, seed=seed), m.simulate(2, seed=seed + 1))
