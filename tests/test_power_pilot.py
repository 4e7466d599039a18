"""Power from a fitted pilot model, extend and power curves, against brute-force lme4/lmerTest simulations
(scripts/make_power_fixtures.R -> tests/fixtures/power/).

The pilot is a crossed subjects x items design (12 x 12) with a two-level condition within subjects and items
and a three-level item factor ``freq``; R simulated 1,000 data sets from the pilot's theta and sigma with
changed fixed effects, on the pilot design and on the design extended to 24 subjects, and counted the
rejections of the LRT (ML, vs the model without the term) and of lmerTest's Satterthwaite F (type III anova)
for ``cond`` (1 df) and ``freq`` (2 df).  jaxlmm's random stream differs from R's, so power agrees within
Monte Carlo error: |jaxlmm - R| < 4 combined binomial standard errors.  On the pilot's own response, the
batched tests give lmerTest's and lme4's p-values to 1e-6.
"""

import functools
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.special
import scipy.stats

import jaxlmm
import jaxlmm.power  # the module (jaxlmm.power is the function)
from jaxlmm.crossprod import response_products

P = sys.modules["jaxlmm.power"]
FIXTURES = Path(__file__).parent / "fixtures" / "power"
REF = json.loads((FIXTURES / "power.json").read_text())
FORMULA = REF["formula"]
CHANGED = REF["changed_fixef"]


def read(name: str) -> pd.DataFrame:
    data = pd.read_csv(FIXTURES / name)
    data["freq"] = pd.Categorical(data.freq, categories=["lo", "mid", "hi"])
    return data


@functools.cache
def pilot():
    return jaxlmm.lmer(FORMULA, read("pilot.csv"))


def within_monte_carlo(ours: float, n_ours: int, reference: dict) -> bool:
    theirs, n_theirs = reference["power"], reference["n_valid"]
    pooled = (ours * n_ours + theirs * n_theirs) / (n_ours + n_theirs)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n_ours + 1 / n_theirs))
    return abs(ours - theirs) < 4 * se


def test_pilot_fit_is_lme4s():
    m = pilot()
    assert m.fixef.to_dict() == pytest.approx(REF["pilot"]["fixef"], abs=1e-5)
    assert m.theta == pytest.approx(REF["pilot"]["theta"], rel=1e-4)


@pytest.mark.slow  # crossed-model Satterthwaite jets (vmapped grad through a Cholesky) can deadlock on 2 CPU threads: see report
def test_batched_tests_of_the_pilots_own_response_are_lmertests_and_lme4s():
    """The engine's LRT (ML refits without each term's columns) and Satterthwaite F (contestMD's df for the
    2-df factor) applied to the pilot's response: lme4's LRT and lmerTest's type III anova p-values."""
    m = pilot()
    d = m.design
    terms = P.resolve_terms(d, None)
    assert terms == {"cond": [1], "freq": [2, 3]}
    (point,) = P.make_points([(d, m.params)], terms)
    products = dict(zip(("A1y", "A2y", "AXy", "yy"), response_products(d.y[:, None], d.X, d.codes, d.Z, d.structure)))
    out = P.test_point(point, products, ("lrt", "satterthwaite"), 1, None, False)
    anova = REF["pilot"]["anova"]
    for k, (name, df) in enumerate([("cond", 1), ("freq", 2)]):
        p_lrt, ok, _ = out[(name, "lrt")]
        assert ok.all()
        assert p_lrt[0] == pytest.approx(scipy.special.chdtrc(df, REF["pilot"]["lrt"][name]), rel=1e-5)
        p_f, ok, _ = out[(name, "satterthwaite")]
        assert ok.all() and anova["NumDF"][k] == df
        assert p_f[0] == pytest.approx(anova["p"][k], rel=1e-5)


@functools.cache
def pilot_power(nsim: int):
    return jaxlmm.power(pilot(), fixef=CHANGED, test=["lrt", "satterthwaite"], nsim=nsim, seed=11)


@pytest.mark.slow  # crossed-model Satterthwaite jets (vmapped grad through a Cholesky) can deadlock on 2 CPU threads: see report
def test_power_of_every_term_from_a_pilot_with_changed_effects_is_lme4s():
    res = pilot_power(400)
    assert list(zip(res.table.term, res.table.test)) == [
        ("cond", "lrt"),
        ("cond", "satterthwaite"),
        ("freq", "lrt"),
        ("freq", "satterthwaite"),
    ]
    assert list(res.table.df) == [1, 1, 2, 2]
    ref = REF["scenarios"]["pilot"]
    for row in res.table.itertuples():
        assert row.n_failed == 0 and row.n_valid == 400
        assert within_monte_carlo(row.power, row.n_valid, ref[row.test][row.term]), (row, ref[row.test][row.term])
        lower, upper = scipy.stats.binomtest(row.successes, row.n_valid).proportion_ci(method="exact")
        assert (row.lower, row.upper) == pytest.approx((lower, upper), rel=1e-9)
    # the fixture's design has singular fits (R: 51 of 1,000 by ML): counted, not failed
    lrt_cond = res.table.iloc[0]
    assert 0 < lrt_cond.n_singular < 0.2 * 400
    # every p-value is kept, NaN for failed fits only
    assert res.p_values[("freq", "satterthwaite")].shape == (400,)


def test_extend_along_is_simrs_design():
    ext = jaxlmm.extend(pilot(), along="subj", n=24)
    expected = pd.read_csv(FIXTURES / "extended_subj.csv")
    assert ext.nobs == REF["extended"]["subj_24"]["nrow"] == 288
    assert ext.ngroups == {"subj": 24, "item": 12}
    got = ext.data.reset_index(drop=True)
    assert list(got.subj) == list(expected.subj)  # labels 1..24, the pilot's subjects' rows recycled in order
    assert list(got.item) == list(expected["item"]) and np.allclose(got.y, expected.y)
    assert ext.fixef.equals(pilot().fixef) and np.array_equal(ext.theta, pilot().theta)
    fewer = jaxlmm.extend(pilot(), along="subj", n=5)  # n below the pilot's count keeps the first n slices
    assert fewer.nobs == 60 and list(pd.unique(fewer.data.subj)) == [1, 2, 3, 4, 5]
    labelled = pilot().design.data.assign(subj=lambda df: pd.Categorical(df.subj))
    lettered = jaxlmm.extend(jaxlmm.lmer(FORMULA, labelled), along="subj", n=28)
    assert list(pd.unique(lettered.data.subj))[24:] == ["y", "z", "a.1", "b.1"]  # R's make.unique(letters)


def test_extend_within_is_simrs_design():
    ext = jaxlmm.extend(pilot(), within="subj + cond", n=9)
    expected = pd.read_csv(FIXTURES / "extended_within.csv")
    assert ext.nobs == REF["extended"]["within_subj_cond_9"]["nrow"] == 216
    got = ext.data
    for column in ("subj", "item", "cond"):
        assert list(got[column].astype(str)) == list(expected[column].astype(str))
    assert ext.data.groupby(["subj", "cond"], observed=True).size().eq(9).all()


@functools.cache
def size_curve(nsim: int):
    ext = jaxlmm.extend(pilot(), along="subj", n=24)
    return jaxlmm.power_curve(ext, along="subj", breaks=[12, 24], fixef=CHANGED, test="lrt", nsim=nsim, seed=5)


def test_power_curve_over_subjects_is_lme4s_at_the_pilot_and_the_extended_size():
    """The curve's 12-subject point is the pilot design (the extended data's first 12 subjects are the
    pilot's), its 24-subject point the extended design: both against R's brute-force power."""
    curve = size_curve(400)
    assert list(curve.table.subj) == [12, 12, 24, 24] and list(curve.table.nobs) == [144, 144, 288, 288]
    for row in curve.table.itertuples():
        scenario = "pilot" if row.subj == 12 else "extended_subj_24"
        assert within_monte_carlo(row.power, row.n_valid, REF["scenarios"][scenario]["lrt"][row.term])
    cond = curve.table[curve.table.term == "cond"].power.to_numpy()
    assert cond[1] > cond[0] + 0.1  # R: 0.547 -> 0.784


@pytest.mark.slow  # crossed-model Satterthwaite jets (vmapped grad through a Cholesky) can deadlock on 2 CPU threads: see report
def test_power_curve_over_an_effect_size():
    """At condb = 0 the LRT's power is its size (lme4's LRT is slightly liberal on 12 subjects); at 0.35 it
    is R's power for the changed pilot.  Common random numbers: the points share their draws."""
    curve = jaxlmm.power_curve(
        pilot(), coefficient="condb", values=[0.0, 0.35], fixef=CHANGED, test="satterthwaite", nsim=400, seed=2
    )
    assert list(curve.table.term) == ["condb", "condb"] and list(curve.table.condb) == [0.0, 0.35]
    null, alt = curve.table.power
    assert abs(null - 0.05) < 4 * np.sqrt(0.05 * 0.95 / 400)
    assert within_monte_carlo(alt, 400, REF["scenarios"]["pilot"]["satterthwaite"]["cond"])


@pytest.mark.slow
def test_power_from_the_pilot_and_after_extend_with_1000_simulations():
    res = jaxlmm.power(pilot(), fixef=CHANGED, test=["lrt", "satterthwaite", "pb"], nsim=1000, nboot=400, seed=3)
    for row in res.table[res.table.test != "pb"].itertuples():
        assert within_monte_carlo(row.power, row.n_valid, REF["scenarios"]["pilot"][row.test][row.term])
    # the bootstrap LRT's size is corrected: its power lies below the liberal chi^2 LRT's for freq (12 items)
    pb, lrt = (res.power("freq", t) for t in ("pb", "lrt"))
    assert pb < lrt
    ext = jaxlmm.extend(pilot(), along="subj", n=24)
    res = jaxlmm.power(ext, fixef=CHANGED, test=["lrt", "satterthwaite"], nsim=1000, seed=4)
    for row in res.table.itertuples():
        assert within_monte_carlo(row.power, row.n_valid, REF["scenarios"]["extended_subj_24"][row.test][row.term])


def test_clopper_pearson_known_values():
    lower, upper = P.clopper_pearson([0, 10, 3], [10, 10, 10])
    assert lower[0] == 0 and upper[1] == 1
    assert upper[0] == pytest.approx(1 - 0.025 ** (1 / 10), rel=1e-12)  # (x = 0): 1 - (alpha/2)^(1/n)
    assert lower[1] == pytest.approx(0.025 ** (1 / 10), rel=1e-12)
    assert (lower[2], upper[2]) == pytest.approx((0.06673951, 0.65245285), abs=1e-8)  # R: binom.test(3, 10)


def test_terms_overrides_and_errors():
    m = pilot()
    assert P.resolve_terms(m.design, "condb") == {"condb": [1]}
    assert P.resolve_terms(m.design, ["freq", "cond"]) == {"freq": [2, 3], "cond": [1]}
    params = P.truth(m.design, m.params, {"condb": 1.0}, {"item": [[0.5]]}, 2.0)
    assert params.beta[1] == 1.0 and params.sigma == 2.0
    assert (2.0 * params.theta[1]) ** 2 == pytest.approx(0.5)  # item's covariance as given
    assert (2.0 * params.theta[0]) == pytest.approx(m.sigma * m.theta[0])  # subj's kept (absolute)
    with pytest.raises(jaxlmm.DataError, match="not a fixed-effect term"):
        jaxlmm.power(m, term="zzz", nsim=10)
    with pytest.raises(jaxlmm.DataError, match="not a coefficient"):
        jaxlmm.power(m, fixef={"condc": 1.0}, nsim=10)
    with pytest.raises(jaxlmm.DataError, match="test must be"):
        jaxlmm.power(m, test="wald", nsim=10)  # "kr" is a test now (issue 16)
    with pytest.raises(jaxlmm.DataError, match="fixed factor"):
        jaxlmm.extend(m, along="cond", n=3)
    with pytest.raises(jaxlmm.DataError, match="extend the model first"):
        jaxlmm.power_curve(m, along="subj", breaks=[6, 20], nsim=10)
    with pytest.raises(jaxlmm.DataError, match="one of along"):
        jaxlmm.extend(m, along="subj", within="subj", n=3)


@pytest.mark.slow  # crossed-model Satterthwaite jets (vmapped grad through a Cholesky) can deadlock on 2 CPU threads: see report
def test_plots():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = pilot_power(400).plot()
    assert len(fig.axes[0].get_yticklabels()) == 4
    fig = size_curve(400).plot()
    assert len(fig.axes[0].get_lines()) >= 2
    plt.close("all")


@pytest.mark.slow  # 24 s on a loaded 2-core machine: 6 REML fits, 6 krtests, the KR lanes' compile
def test_kenward_roger_power_lanes_are_krtests_on_each_simulated_response():
    """test="kr": per simulated response, the batched Kenward-Roger p-values are jaxlmm.krtest's (validated
    against pbkrtest's KRmodcomp) on REML refits of the full and reduced models to that response."""
    from jaxlmm.bootstrap import simulate_blocks

    m = pilot()
    d = m.design
    terms = P.resolve_terms(d, None)
    (point,) = P.make_points([(d, m.params)], terms)
    Y = np.concatenate(list(simulate_blocks(d, m.params._replace(beta=np.array(list(CHANGED.values()))), 3, 5)), axis=1)
    products = dict(zip(("A1y", "A2y", "AXy", "yy"), response_products(Y, d.X, d.codes, d.Z, d.structure)))
    out = P.test_point(point, products, ("kr",), 1, None, False)
    reduced = {"cond": "y ~ freq + (1 | subj) + (1 | item)", "freq": "y ~ cond + (1 | subj) + (1 | item)"}
    for k in range(Y.shape[1]):
        data = d.data.assign(y=Y[:, k])
        large = jaxlmm.lmer(FORMULA, data)
        for name, small_formula in reduced.items():
            kr = jaxlmm.krtest(large, jaxlmm.lmer(small_formula, data))
            p, ok, _ = out[(name, "kr")]
            assert ok[k]
            assert p[k] == pytest.approx(kr.p_value, rel=1e-4, abs=1e-8), (name, k)
