"""R's model-matrix coding against lme4 (fixtures by scripts/make_formula_fixtures.R): contrasts (ordered
factors' contr.poly, contr.sum, contr.helmert, matrices), poly() orthogonal and raw (in interactions and
in a bar), ns(), bs(), scale(), nested grouping names, and predict() on new data with the training data's
statistics, re_form and allow_new_levels."""

import json
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import jaxlmm
from jaxlmm import DataError, FormulaError
from jaxlmm.bases import poly_basis, poly_coefficients, spline_design
from jaxlmm.contrasts import contr_poly, named_contrast

FIXTURES = Path(__file__).parent / "fixtures"
CASES = sorted(p.stem for p in (FIXTURES / "formula").glob("*.json"))
# fits whose shapes no default-tier case compiles: the slow tier
SLOW = {
    "cake_helmert_sum",
    "machines_matrix_contrast",
    "machines_ordered_in_bar",
    "machines_unnamed_matrix",
    "nested_abc",
    "orthodont_sum",
    "sleep_poly_in_bar",
}


def case_param(name, *rest):
    return pytest.param(name, *rest, marks=pytest.mark.slow) if name in SLOW else pytest.param(name, *rest)


@cache
def reference(name: str) -> dict:
    return json.loads((FIXTURES / "formula" / f"{name}.json").read_text())


def load(fx: dict) -> pd.DataFrame:
    path = FIXTURES / "formula" / "nested.csv" if fx["data"] == "nested" else FIXTURES / "data" / f"{fx['data']}.csv"
    data = pd.read_csv(path)
    for v in fx["ordered"] if isinstance(fx["ordered"], list) else [fx["ordered"]]:
        data[v] = pd.Categorical(data[v], categories=sorted(data[v].unique()), ordered=True)
    return data


def contrasts_of(fx: dict) -> dict | None:
    if not fx["contrasts"]:
        return None
    out = {}
    for name, spec in fx["contrasts"].items():
        if isinstance(spec, str):
            out[name] = spec
        elif spec.get("columns"):
            out[name] = pd.DataFrame(spec["matrix"], columns=spec["columns"])
        else:
            out[name] = np.array(spec["matrix"])
    return out


@cache
def fit(name: str) -> jaxlmm.LinearMixedModel:
    fx = reference(name)
    return jaxlmm.lmer(fx["formula"], load(fx), reml=fx["reml"], contrasts=contrasts_of(fx))


@pytest.mark.parametrize("name", [case_param(name) for name in CASES])
def test_fit_matches_lme4(name):
    fx, m = reference(name), fit(name)
    assert list(m.fixef.index) == list(np.atleast_1d(fx["fixef_names"]))
    assert m.result.criterion <= fx["criterion"] + 1e-6 * abs(fx["criterion"])
    # agreement reached: estimates 1e-8 relative or better, theta 2e-6, SEs 3e-7 (issue 14 asks 1e-4 and 1e-3)
    np.testing.assert_allclose(m.fixef.to_numpy(), fx["fixef"], rtol=1e-6, atol=1e-9 * np.abs(fx["fixef"]).max())
    np.testing.assert_allclose(m.theta, fx["theta"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.sqrt(np.diag(m.vcov)), fx["se"], rtol=1e-5)
    assert m.ngroups == fx["ngrps"]
    assert list(m.varcorr.grp) == fx["varcorr_grp"]


def prediction_cases():
    return [case_param(name, k) for name in CASES for k in range(len(reference(name)["predictions"]))]


@pytest.mark.parametrize("name, k", prediction_cases())
def test_predict_matches_lme4(name, k):
    p = reference(name)["predictions"][k]
    newdata = pd.DataFrame(p["newdata"])
    re_form = None if p["re_form"] == "NULL" else p["re_form"]
    got = fit(name).predict(newdata, re_form=re_form, allow_new_levels=p["allow_new_levels"])
    np.testing.assert_allclose(got, p["values"], rtol=1e-6)  # agreement reached: 3e-8 (issue 14 asks 1e-4)


def test_unseen_level_is_an_error_naming_it():
    m = fit("sleep_poly")
    new = pd.DataFrame({"Days": [1.0, 2.0], "Subject": [308, 999]})
    with pytest.raises(DataError, match="grouping factor 'Subject': 999"):
        m.predict(new)
    assert np.isfinite(m.predict(new, allow_new_levels=True)).all()
    assert np.isfinite(m.predict(new, re_form="NA")).all()  # no random effects: no levels needed
    with pytest.raises(DataError, match="factor 'Sex' of newdata has levels not in the fitted data: 'Other'"):
        fit("orthodont_sum").predict(pd.DataFrame({"age": [8.0], "Sex": ["Other"], "Subject": ["M01"]}))


def test_re_form_terms_must_be_the_models():
    m = fit("sleep_poly")
    with pytest.raises(DataError, match="not in the model"):
        m.predict(re_form="~(Days | Subject)")
    with pytest.raises(JaxlmmErrorOrFormula):
        m.predict(re_form="~(1 | ")
    # on the fitted rows, the terms' parts add up
    full, pop = m.predict(), m.predict(re_form="NA")
    parts = m.predict(re_form="~(1 | Subject)") + m.predict(re_form="~(0 + Days | Subject)") - pop
    np.testing.assert_allclose(parts, full, rtol=1e-12)
    np.testing.assert_allclose(m.predict(re_form="~0"), pop)


JaxlmmErrorOrFormula = (FormulaError, DataError)


def test_one_row_predictions_equal_the_same_rows_among_many():
    m = fit("sleep_scale")
    grid = pd.DataFrame({"Days": [0.0, 3.0, 7.5], "Subject": [308, 309, 330]})
    many = m.predict(grid)
    one = [m.predict(grid.iloc[[i]])[0] for i in range(len(grid))]
    np.testing.assert_allclose(one, many, rtol=1e-13)


def test_centring_uses_the_training_mean():
    data = load(reference("sleep_ns"))
    m = jaxlmm.lmer("Reaction ~ I(Days - mean(Days)) + (I(Days - mean(Days)) | Subject)", data)
    assert list(m.fixef.index) == ["(Intercept)", "I(Days - mean(Days))"]
    got = m.predict(pd.DataFrame({"Days": [3.0]}), re_form="NA")
    np.testing.assert_allclose(got, m.fixef.iloc[0] + m.fixef.iloc[1] * (3.0 - data.Days.mean()), rtol=1e-12)


def test_bad_input_is_a_clear_error():
    data = load(reference("sleep_ns"))
    with pytest.raises(DataError, match="'degree' .* must be less than number of unique points"):
        jaxlmm.lmer("Reaction ~ poly(Days, 10) + (1 | Subject)", data)
    cake = load(reference("cake_ordered"))
    with pytest.raises(DataError, match="unknown contrast 'contr.foo'"):
        jaxlmm.lmer("angle ~ recipe + (1 | replicate)", cake, contrasts={"recipe": "contr.foo"})
    with pytest.raises(DataError, match="contrasts apply only to factors"):
        jaxlmm.lmer("angle ~ temp + (1 | replicate)", cake, contrasts={"temp": "contr.sum"})
    with pytest.raises(DataError, match="not a variable of the fixed effects"):
        jaxlmm.lmer("angle ~ temp + (1 | replicate)", cake, contrasts={"recipe": "contr.sum"})
    with pytest.raises(DataError, match="has 2 rows; factor 'recipe' has 3 levels"):
        jaxlmm.lmer("angle ~ recipe + (1 | replicate)", cake, contrasts={"recipe": np.eye(2)})
    with pytest.raises(DataError, match="unknown function"):
        jaxlmm.lmer("angle ~ foo(temp) + (1 | replicate)", cake)
    with pytest.raises(DataError, match="poly\\(\\) needs a numeric variable"):
        jaxlmm.lmer("angle ~ poly(recipe, 2) + (1 | replicate)", cake)


def test_modulo_and_integer_division_in_calls():
    data = load(reference("sleep_ns"))
    m = jaxlmm.lmer("Reaction ~ factor(Days %% 3) + factor(Days %/% 4) + (1 | Subject)", data)
    # R's names (lme4 fit of the same formula)
    assert list(m.fixef.index) == [
        "(Intercept)",
        "factor(Days%%3)1",
        "factor(Days%%3)2",
        "factor(Days%/%4)1",
        "factor(Days%/%4)2",
    ]


def test_backquoted_names_keep_their_quotes():
    data = load(reference("sleep_ns")).rename(columns={"Days": "my days", "Subject": "my subject"})
    m = jaxlmm.lmer("Reaction ~ `my days` + (1 | `my subject`)", data)
    assert list(m.fixef.index) == ["(Intercept)", "`my days`"]  # lme4's names
    assert list(m.ngroups) == ["my subject"]


def test_contrast_matrices_equal_rs():
    # contr.poly(5) and contr.helmert(4) as R prints them
    np.testing.assert_allclose(
        contr_poly(5)[:, :2],
        [
            [-0.6324555, 0.5345225],
            [-0.3162278, -0.2672612],
            [0, -0.5345225],
            [0.3162278, -0.2672612],
            [0.6324555, 0.5345225],
        ],
        atol=1e-7,
    )
    helmert = named_contrast("contr.helmert", ("a", "b", "c", "d"))
    np.testing.assert_array_equal(helmert.array, [[-1, -1, -1], [1, -1, -1], [0, 2, -1], [0, 0, 3]])
    assert named_contrast("contr.poly", tuple("abcdef")).suffixes == (".L", ".Q", ".C", "^4", "^5")


def test_bases_equal_rs_printed_values():
    x = np.array([0.0, 1, 3, 7, 9])
    alpha, norm2 = poly_coefficients(np.arange(1.0, 6), 2)  # R: poly(1:5, 2) coefs
    np.testing.assert_allclose(alpha, [3, 3])
    np.testing.assert_allclose(norm2, [1, 5, 10, 14])
    np.testing.assert_allclose(
        poly_basis(np.arange(1.0, 6), alpha, norm2)[:, 1],
        [0.5345225, -0.2672612, -0.5345225, -0.2672612, 0.5345225],
        atol=1e-7,
    )
    # splines::splineDesign(c(0,0,0,0,3,9,9,9,9), x, 4): R's bs(x, 4, intercept = TRUE)
    B = spline_design(np.array([0, 0, 0, 0, 3, 9, 9, 9, 9.0]), x, 4)
    np.testing.assert_allclose(B.sum(axis=1), 1.0)
    np.testing.assert_allclose(B[1, 1:4], [0.60905350, 0.09053498, 0.004115226], rtol=1e-7)
    np.testing.assert_allclose(B[3, 1:], [0.01646091, 0.16460905, 0.522633745, 0.2962963], rtol=1e-6)


def test_r_expressions_follow_rs_precedence_and_deparse():
    from jaxlmm.expressions import deparse, evaluate_expression, parse_expression

    data = pd.DataFrame({"a": [2.0, 3.0], "b": [4.0, 5.0], "g": ["u", "v"]})

    def value(text):
        return evaluate_expression(parse_expression(text), data)[0]

    np.testing.assert_array_equal(value("a * b %% 3"), [2.0, 6.0])  # %% binds tighter than *
    np.testing.assert_array_equal(value("-a^2"), [-4.0, -9.0])  # ^ binds tighter than unary minus
    np.testing.assert_array_equal(value("a > 2 & b < 6"), [False, True])
    np.testing.assert_array_equal(value("-7 %/% a"), [-4.0, -3.0])  # floor division, as R
    np.testing.assert_array_equal(value('g == "v"'), [False, True])
    # R's deparse(quote(...)) of the same expressions
    assert deparse(parse_expression("f(x,2,raw=TRUE, z=1e5, w=0.50, v=1e-8, q=c(1, 2))")) == (
        "f(x, 2, raw = TRUE, z = 1e+05, w = 0.5, v = 1e-08, q = c(1, 2))"
    )
    assert deparse(parse_expression("I(-x^2 + (a*b)/c)")) == "I(-x^2 + (a * b)/c)"
    assert deparse(parse_expression("I(a %in% b + a%/%b + 123456 + 0.001)")) == "I(a %in% b + a%/%b + 123456 + 0.001)"
