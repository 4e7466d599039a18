"""Prior weights and offsets (lme4's ``weights=``, ``offset(...)`` terms and ``offset=``) against lme4,
lmerTest and performance (fixtures by scripts/make_weights_fixtures.R), through the fitted model's
accessors, predictions, simulation, the batched refits and the comparisons."""

import json
import warnings
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import jaxlmm
from jaxlmm import DataError, FormulaError, JaxlmmError, ModelComparisonError
from jaxlmm.crossprod import sparse_Z

WEIGHTS = Path(__file__).parent / "fixtures" / "weights"
CASES = sorted(p.stem for p in WEIGHTS.glob("*.json") if not p.stem.startswith(("anova_", "jaxlmm_")))


@cache
def reference(name: str) -> dict:
    return json.loads((WEIGHTS / f"{name}.json").read_text())


@cache
def load(dataname: str) -> pd.DataFrame:
    return pd.read_csv(WEIGHTS / f"{dataname}.csv")


def fit(formula, data, reml, weights=None, offset=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return jaxlmm.lmer(formula, data, reml=reml, weights=weights, offset=offset)


@cache
def fitted(name: str) -> jaxlmm.LinearMixedModel:
    fx = reference(name)
    return fit(fx["formula"], load(fx["data"]), fx["REML"], fx["weights"], fx["offset"])


def close(actual, expected, rtol, atol=0.0):
    np.testing.assert_allclose(np.asarray(actual, dtype=float), np.asarray(expected, dtype=float), rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", CASES)
def test_criterion_two_sided(name):
    """jaxlmm's optimum is at least lme4's best, and lme4's own deviance function (devFunOnly, with its
    −Σ log wᵢ) at jaxlmm's θ is jaxlmm's criterion."""
    fx, m = reference(name), fitted(name)
    crit = m.reml_criterion if m.reml else m.deviance
    assert crit <= fx["criterion"] + 1e-6 * abs(fx["criterion"])
    assert crit == pytest.approx(fx["criterion"], rel=1e-8)
    if "lme4_criterion_at_jaxlmm_theta" in fx:
        assert np.allclose(m.theta, fx["jaxlmm_theta"], rtol=1e-6, atol=1e-8)  # the fixture is of this fit
        assert crit == pytest.approx(fx["lme4_criterion_at_jaxlmm_theta"], rel=1e-10)
    value, _ = m.criterion_and_gradient(np.asarray(fx["theta"]))
    assert value == pytest.approx(fx["criterion"], rel=1e-9)  # lme4's devfun at lme4's θ, as lme4 has it


@pytest.mark.parametrize("name", CASES)
def test_estimates(name):
    fx, m = reference(name), fitted(name)
    assert m.nobs == fx["nobs"]
    assert list(m.fixef.index) == list(fx["fixef"])
    # tolerances a few times the worst agreement over the cases (fixef 1.5e-9, theta 2.1e-6 absolute,
    # SEs 8.8e-7, sigma 6e-8 relative: penicillin_crossed_w_offset_ml); issue 14 asks 1e-4 and 1e-3
    close(m.fixef.values, list(fx["fixef"].values()), 1e-7, 1e-9)
    close(m.theta, fx["theta"], 1e-4, 1e-5)
    close(m.sigma, fx["sigma"], 1e-6)
    p = len(np.atleast_1d(fx["vcov_names"]))
    se = np.sqrt(np.diag(np.asarray(fx["vcov"], dtype=float).reshape(p, p)))
    close(np.sqrt(np.diag(m.vcov.values)), se, 1e-5)
    close([m.loglik, m.aic, m.bic], [fx["loglik"], fx["aic"], fx["bic"]], 1e-10)  # worst 3.4e-13
    close(m.refit_ml().deviance, fx["deviance_ml"], 1e-10)


@pytest.mark.parametrize("name", CASES)
def test_satterthwaite(name):
    fx, m = reference(name), fitted(name)
    table = m.coef_table()
    # worst df 3.0e-6, p 4.7e-5 relative (lmerTest's finite differences on a p of 1e-9)
    close(table["df"].values, [r["df"] for r in fx["coef_table"]], 3e-5)
    close(table["Pr(>|t|)"].values, [r["p"] for r in fx["coef_table"]], 3e-4, 1e-12)


@pytest.mark.parametrize("name", CASES)
def test_fitted_residuals_ranef(name):
    fx, m = reference(name), fitted(name)
    # worst: fitted 2.2e-8 relative, residuals 4.3e-8 of the largest, scaled-residual quantiles 4.5e-7,
    # condval 1.4e-7 of the largest, condsd 9.3e-8, coef 1.8e-8 of the largest, r2 2e-7
    close(m.fitted(), fx["fitted"], 2e-7)
    close(m.residuals(), fx["residuals"], 0, 3e-7 * np.max(np.abs(fx["residuals"])))
    close(m.residuals("pearson"), fx["residuals_pearson"], 0, 3e-7 * np.max(np.abs(fx["residuals_pearson"])))
    close(m.predict(re_form="~0"), fx["predict_re_na"], 1e-7)
    quantiles = np.quantile(m.residuals("pearson") / m.sigma, [0, 0.25, 0.5, 0.75, 1])
    close(quantiles, fx["scaled_residual_quantiles"], 3e-6)
    ours = m.ranef().set_index(["grpvar", "term", "grp"]).sort_index()
    theirs = pd.DataFrame(fx["ranef"]).astype({"grp": str}).set_index(["grpvar", "term", "grp"]).sort_index()
    assert ours.index.equals(theirs.index)
    big = np.max(np.abs(theirs.condval))
    close(ours.condval, theirs.condval, 0, 1e-6 * big)
    close(ours.condsd, theirs.condsd, 1e-6)
    for group, rows in fx["coef"].items():  # coef(m): fixed + random effects per level (no offset)
        ref = pd.DataFrame(rows).set_index("level").drop(columns="_row", errors="ignore")
        ref.index = ref.index.astype(str)
        table = m.coef()[group].loc[ref.index, ref.columns].values
        close(table, ref.values, 0, 2e-7 * np.max(np.abs(ref.values)))
    # performance: sigma² at unit weight, the offset left out (it mishandles a second term on one factor,
    # "Subject.1" of ||, as test_tables notes)
    if "r2_nakagawa" in fx and "||" not in fx["formula"]:
        r2 = m.r2_nakagawa()
        ref = [fx["r2_nakagawa"]["conditional"], fx["r2_nakagawa"]["marginal"]]
        close([r2["conditional"], r2["marginal"]], ref, 0, 2e-6)


@pytest.mark.parametrize("name", [c for c in CASES if "predict_newdata" in reference(c)])
def test_predict_newdata(name):
    """Formula offsets are evaluated on the new data; an offset= argument is not applied there (lme4)."""
    fx, m = reference(name), fitted(name)
    newdata = pd.DataFrame(fx["newdata"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pred = m.predict(newdata)
        pop = m.predict(newdata, re_form="NA")
    assert any("offset= argument" in str(w.message) for w in caught) == (fx["offset"] is not None)
    close(pred, fx["predict_newdata"], 1e-7)  # worst 1.1e-8 relative; issue 14 asks 1e-4
    close(pop, fx["predict_newdata_re_na"], 1e-7)


def test_anova_of_weighted_models():
    fx = json.loads((WEIGHTS / "anova_sleepstudy_w.json").read_text())
    data = load(fx["data"])
    small = fit(fx["small"], data, False, fx["weights"])
    large = fit(fx["large"], data, False, fx["weights"])
    table = jaxlmm.anova(small, large)
    ref = pd.DataFrame(fx["table"])
    close(table["logLik"].values, ref["logLik"].values, 1e-8)
    close(table["deviance"].values, ref["deviance"].values, 1e-8)
    close(table["Chisq"].values[1], ref["Chisq"].values[1], 1e-6)
    close(table["Pr(>Chisq)"].values[1], ref["Pr(>Chisq)"].values[1], 1e-5)
    with pytest.raises(ModelComparisonError, match="weights"):
        jaxlmm.anova(small, fit(fx["large"], data, False))


def test_weights_as_array_and_column_agree_and_missing_rows_are_dropped():
    fx = reference("penicillin_crossed_w_reml")
    data = load(fx["data"])
    by_array = fit(fx["formula"], data, True, data["w"].to_numpy())
    assert by_array.nobs == fitted("penicillin_crossed_w_reml").nobs == data.shape[0] - 2
    assert by_array.n_dropped == 2
    close(by_array.theta, fitted("penicillin_crossed_w_reml").theta, 1e-10)


def test_offset_term_equals_offset_argument_and_shifted_response():
    """offset(o) in the formula, offset="o", and the response y − o all give the same estimates; the
    fitted values differ by the offset."""
    data = load("sleepstudy_w")
    term = fit("Reaction ~ Days + offset(o) + (1 | Subject)", data, False, "w")
    arg = fit("Reaction ~ Days + (1 | Subject)", data, False, "w", offset="o")
    shifted = fit("Reaction ~ Days + (1 | Subject)", data.assign(Reaction=data.Reaction - data.o), False, "w")
    expression = fit("Reaction ~ Days + (1 | Subject)", data.assign(v=1 / data.w), False, "1 / v", offset="0 + o")
    for m in (arg, shifted, expression):
        close(m.theta, term.theta, 1e-6)
        close(m.fixef.values, term.fixef.values, 1e-8)
        assert m.deviance == pytest.approx(term.deviance, rel=1e-10)
    close(term.fitted(), shifted.fitted() + data.o, 1e-10)
    close(term.residuals(), shifted.residuals(), 1e-8, 1e-8)


def test_simulate_moments():
    """Simulated responses have mean offset + Xβ and variance σ²/wᵢ + (ZΛΛᵀZᵀσ²)ᵢᵢ (the model's law)."""
    m = fitted("sleepstudy_w_offset_reml")
    d = m.design
    Y = m.simulate(nsim=20000, seed=3)
    mean = d.offset + d.X @ m.fixef.values
    var = m.sigma**2 / d.weights
    for b, Z, codes in zip(d.structure.blocks, d.Z, d.codes):
        ZL = sparse_Z(codes, Z, b.n_levels) @ sp.kron(sp.eye(b.n_levels), b.lambda_of(m.theta))
        var = var + m.sigma**2 * np.asarray(ZL.multiply(ZL).sum(axis=1)).ravel()
    sd = np.sqrt(var)
    z_mean = (Y.mean(axis=1) - mean) / (sd / np.sqrt(Y.shape[1]))
    assert np.max(np.abs(z_mean)) < 4.5
    ratio = Y.var(axis=1, ddof=1) / var
    assert np.max(np.abs(ratio - 1)) < 4.5 * np.sqrt(2 / Y.shape[1])  # σ² instead of σ²/wᵢ: off by up to 5x


def _single_fits(formula, data, Y, reml, **kwargs):
    return [fit(formula, data.assign(Reaction=Y[:, j]), reml, **kwargs) for j in range(Y.shape[1])]


def test_fit_batch_responses_with_weights_and_offset_equal_single_fits():
    m = fitted("sleepstudy_w_offset_reml")
    data = load("sleepstudy_w")
    Y = np.column_stack([data.Reaction.to_numpy(), m.simulate(nsim=3, seed=11)])
    batch = jaxlmm.fit_batch(m.formula, data, responses=Y, weights="w")
    singles = _single_fits(m.formula, data, Y, True, weights="w")
    assert batch.converged.all()
    for j, s in enumerate(singles):
        close(batch.theta[j], s.theta, 1e-4, 1e-5)
        close(batch.beta[j], s.fixef.values, 1e-6)
        close(batch.sigma[j], s.sigma, 1e-6)
        assert batch.criterion[j] == pytest.approx(s.reml_criterion, rel=1e-9)
    assert batch.criterion[0] == pytest.approx(m.reml_criterion, rel=1e-9)


@pytest.mark.slow  # compiles the data-set lanes
def test_fit_batch_datasets_and_by_with_weights_and_offset():
    data = load("sleepstudy_w")
    formula = "Reaction ~ Days + (Days | Subject)"
    first = data.Subject.isin(sorted(data.Subject.unique())[:10])
    parts = [data[first].reset_index(drop=True), data[~first].reset_index(drop=True)]
    batch = jaxlmm.fit_batch(formula, datasets=parts, reml=False, weights="w", offset="o")
    by = jaxlmm.fit_batch(
        formula, data.assign(half=np.where(first, "a", "b")), by="half", reml=False, weights="w", offset="o"
    )
    for k, part in enumerate(parts):
        single = fit(formula, part, False, "w", "o")
        for b in (batch, by):
            close(b.theta[k], single.theta, 1e-4, 1e-5)
            close(b.beta[k], single.fixef.values, 1e-6)
            assert b.criterion[k] == pytest.approx(single.deviance, rel=1e-9)
    offset_term = jaxlmm.fit_batch(
        "Reaction ~ Days + offset(o) + (Days | Subject)", datasets=parts, reml=False, weights="w"
    )
    close(offset_term.criterion, batch.criterion, 1e-9)
    with pytest.raises(DataError, match="column name"):
        jaxlmm.fit_batch(formula, datasets=parts, weights=parts[0].w.to_numpy())


def test_summary_scaled_residuals_and_rsq():
    m = fitted("sleepstudy_slope_w_reml")
    text = jaxlmm.tables.summary_text(m)
    q = np.quantile(m.residuals("pearson") / m.sigma, [0, 0.5])
    assert f"{q[0]:.4f}"[:5] in text
    with pytest.raises(JaxlmmError, match="r2_nakagawa"):
        m.rsq()
    with pytest.raises(JaxlmmError, match="type"):
        m.residuals("deviance")


def test_cli_weights(capsys):
    from jaxlmm import cli

    name = "sleepstudy_slope_w_ml"
    fx = reference(name)
    status = cli.main(["fit", str(WEIGHTS / "sleepstudy_w.csv"), fx["formula"], "--ml", "--weights", "w", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert status == 0
    assert doc["loglik"] == pytest.approx(fx["loglik"], rel=1e-9)
    assert doc["fixef"] == pytest.approx(fx["fixef"], rel=1e-6)
    status = cli.main(["fit", str(WEIGHTS / "sleepstudy_w.csv"), fx["formula"], "--weights", "nowhere"])
    assert status == 2 and "unknown column 'nowhere'" in capsys.readouterr().err


# ------------------------------------------------------------------ bad input: clear errors, no compiled work


@pytest.fixture
def no_compiling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the fit was started: the input should have been refused before")

    monkeypatch.setattr(jaxlmm.api, "fit_design", refuse)


@pytest.mark.parametrize(
    ("weights", "offset", "error", "message"),
    [
        (-1.0, None, DataError, "negative"),
        (0.0, None, DataError, "zero weights"),
        (np.inf, None, DataError, "infinite"),
        ("short", None, DataError, "variable lengths differ"),
        ("2d", None, DataError, "shape"),
        ("text", None, DataError, "numeric"),
        ("logical", None, DataError, "logical"),
        ("nowhere", None, DataError, "unknown column"),
        (None, "text", DataError, "numeric"),
        (None, np.inf, DataError, "infinite"),
        (None, "short", DataError, "variable lengths differ"),
    ],
)
def test_bad_weights_and_offsets(no_compiling, weights, offset, error, message):
    data = load("sleepstudy_w").copy()
    data["text"] = np.where(data.Days > 4, "a", "b")
    data["logical"] = data.Days > 4

    def value(v):
        if v is None or v in ("text", "logical", "nowhere"):
            return v
        if v == "short":
            return np.ones(len(data) - 1)
        if v == "2d":
            return np.ones((len(data), 1))
        out = np.ones(len(data))
        out[7] = v
        return out

    with pytest.raises(error, match=message):
        jaxlmm.lmer("Reaction ~ Days + (1 | Subject)", data, weights=value(weights), offset=value(offset))


def test_bad_offset_terms(no_compiling):
    data = load("sleepstudy_w").assign(text=lambda d: np.where(d.Days > 4, "a", "b"))
    with pytest.raises(DataError, match=r"offset\(text\) must be numeric"):
        jaxlmm.lmer("Reaction ~ Days + offset(text) + (1 | Subject)", data)
    with pytest.raises(DataError, match="infinite"):
        jaxlmm.lmer("Reaction ~ Days + offset(log(Days)) + (1 | Subject)", data)
    with pytest.raises(FormulaError, match="interaction"):
        jaxlmm.lmer("Reaction ~ Days * offset(o) + (1 | Subject)", data)
    with pytest.raises(FormulaError, match="random-effects"):
        jaxlmm.lmer("Reaction ~ Days + (offset(o) | Subject)", data)


@pytest.mark.slow
def test_bootstrap_and_pbtest_with_weights():
    """The parametric bootstrap simulates with σ²/wᵢ and the offset and refits the weighted model: the
    bootstrap means of β and σ are near the generating values, and pbtest runs on weighted models."""
    m = fitted("sleepstudy_w_offset_reml")
    fits = m.bootstrap(nsim=400, seed=5)
    assert fits.converged.mean() > 0.95
    se = np.sqrt(np.diag(m.vcov.values))
    assert np.all(np.abs(fits.beta.mean(axis=0) - m.fixef.values) < 4 * se / np.sqrt(400))
    assert abs(np.median(fits.sigma) / m.sigma - 1) < 0.03
    direct = m.bootstrap(nsim=400, seed=5, simulation="direct")  # the products drawn with √w-scaled rows
    assert np.all(np.abs(direct.beta.mean(axis=0) - m.fixef.values) < 4 * se / np.sqrt(400))
    assert abs(np.median(direct.sigma) / m.sigma - 1) < 0.03
    close(np.median(direct.theta, axis=0), np.median(fits.theta, axis=0), 0.1)
    ci = m.confint(method="boot", nsim=200, seed=2)
    assert list(ci.index[:2]) == list(m.fixef.index)
    data = load("sleepstudy_w")
    large = fit("Reaction ~ Days + (Days | Subject)", data, False, "w")
    small = fit("Reaction ~ Days + (1 | Subject)", data, False, "w")
    res = jaxlmm.pbtest(large, small, nsim=100, seed=1)
    assert 0 <= res.p_boot <= 1
