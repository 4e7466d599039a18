"""Bad input ends in a specific jaxlmm error (a ValueError) naming the problem, before any JAX work."""

import numpy as np
import pandas as pd
import pytest
from conftest import load_data

import jaxlmm
from jaxlmm import DataError, FormulaError, JaxlmmError, ModelComparisonError


@pytest.fixture(scope="module")
def sleep():
    return load_data("sleepstudy")


@pytest.mark.parametrize(
    "formula, message",
    [
        ("Reaction ~ Dayz + (1 | Subject)", "unknown column 'Dayz'"),
        ("Reaction ~ Days + (1 | Subjekt)", "unknown column 'Subjekt'"),
        ("Reaction ~ Days", "no random-effects term"),
        ("Reaction ~ Days + (Days | Subject) + (1 | Subject:Days)", "levels"),
    ],
)
def test_bad_models(sleep, formula, message):
    with pytest.raises(DataError, match=message):
        jaxlmm.lmer(formula, sleep)


def test_one_level_factor(sleep):
    data = sleep.assign(one="a")
    with pytest.raises(DataError, match="only one level"):
        jaxlmm.lmer("Reaction ~ Days + (1 | one)", data)


def test_more_random_effects_than_observations(sleep):
    small = sleep[sleep.Days < 2]
    with pytest.raises(DataError, match="number of random effects"):
        jaxlmm.lmer("Reaction ~ Days + (Days | Subject)", small)


@pytest.mark.parametrize("bad", [np.inf, "text"])
def test_bad_response_values(sleep, bad):
    data = sleep.astype({"Reaction": object})
    data.loc[0, "Reaction"] = bad
    with pytest.raises(DataError):
        jaxlmm.lmer("Reaction ~ Days + (1 | Subject)", data)


def test_constant_response_and_empty_data(sleep):
    with pytest.raises(DataError, match="constant"):
        jaxlmm.lmer("Reaction ~ Days + (1 | Subject)", sleep.assign(Reaction=1.0))
    with pytest.raises(DataError, match="no complete rows"):
        jaxlmm.lmer("Reaction ~ Days + (1 | Subject)", sleep.assign(Reaction=np.nan))
    with pytest.raises(DataError, match="no rows"):
        jaxlmm.lmer("Reaction ~ Days + (1 | Subject)", sleep.iloc[:0])


def test_rank_deficient_X_drops_aliased_column_like_lme4(sleep):
    data = sleep.assign(Days2=2 * sleep.Days)
    with pytest.warns(UserWarning, match="rank deficient so dropping 1 column"):
        m = jaxlmm.lmer("Reaction ~ Days + Days2 + (1 | Subject)", data)
    ref = jaxlmm.lmer("Reaction ~ Days + (1 | Subject)", sleep)
    assert list(m.fixef.index) == ["(Intercept)", "Days"]
    np.testing.assert_allclose(m.fixef.values, ref.fixef.values, rtol=1e-8)


def test_errors_are_value_errors():
    assert issubclass(DataError, JaxlmmError) and issubclass(FormulaError, JaxlmmError)
    assert issubclass(JaxlmmError, ValueError)
    with pytest.raises(FormulaError):
        jaxlmm.lmer("y ~ x + (1 |", pd.DataFrame({"y": [1.0], "x": [1.0]}))


def test_non_dataframe():
    with pytest.raises(DataError, match="DataFrame"):
        jaxlmm.lmer("y ~ x + (1 | g)", {"y": [1, 2]})


# ---------------------------------------------------------------- the battery: each ends in a named error
def small_data(n_groups: int = 10, per: int = 6, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = n_groups * per
    return pd.DataFrame(
        {
            "y": rng.normal(size=n),
            "x": rng.normal(size=n),
            "g": np.repeat([f"g{k}" for k in range(n_groups)], per),
            "f": np.tile(["u", "v", "w"], n // 3),
        }
    )


def _jax_untouched(monkeypatch):
    """Fail if the design stage lets bad input reach the compiled kernels."""
    import jaxlmm.model
    import jaxlmm.shapes

    def boom(*args, **kwargs):
        raise AssertionError("bad input reached JAX")

    monkeypatch.setattr(jaxlmm.shapes, "crossproducts", boom)
    monkeypatch.setattr(jaxlmm.model, "criterion_search", boom)


BAD_DATA = {
    "unknown column": ("y ~ z + (1 | g)", lambda d: d, "unknown column 'z'"),
    "text response": ("y ~ x + (1 | g)", lambda d: d.assign(y=d.f), "response 'y' is not numeric"),
    "logical response": ("y ~ x + (1 | g)", lambda d: d.assign(y=d.x > 0), "response 'y' is logical"),
    "factor response": ("y ~ x + (1 | g)", lambda d: d.assign(y=pd.Categorical(d.f)), "response 'y' is a factor"),
    "numbers as text response": (
        "y ~ x + (1 | g)",
        lambda d: d.assign(y=d.y.astype(str)),
        "response 'y' holds numbers stored as text",
    ),
    "constant response": ("y ~ x + (1 | g)", lambda d: d.assign(y=2.5), "response 'y' is constant"),
    "infinite response": ("y ~ x + (1 | g)", lambda d: d.assign(y=np.r_[np.inf, d.y[1:]]), "'y' has infinite"),
    "infinite covariate": ("y ~ x + (1 | g)", lambda d: d.assign(x=np.r_[d.x[:-1], -np.inf]), "'x' has infinite"),
    "infinite from expression": (
        "y ~ I(1/x) + (1 | g)",
        lambda d: d.assign(x=np.r_[0.0, d.x[1:]]),
        r"'I\(1/x\)' has infinite",
    ),
    "overflowing covariate": ("y ~ x + (1 | g)", lambda d: d.assign(x=d.x * 1e300), "'x' has values too large"),
    "numbers as text covariate": (
        "y ~ x + (1 | g)",
        lambda d: d.assign(x=d.x.astype(str)),
        "'x' holds numbers stored as text",
    ),
    "numbers as text slope": (
        "y ~ 1 + (x | g)",
        lambda d: d.assign(x=d.x.astype(str)),
        "'x' holds numbers stored as text",
    ),
    "mixed object covariate": (
        "y ~ x + (1 | g)",
        lambda d: d.assign(x=[1.0, "a"] * (len(d) // 2)),
        "'x' mixes numbers and text",
    ),
    "date covariate": (
        "y ~ x + (1 | g)",
        lambda d: d.assign(x=pd.date_range("2020-01-01", periods=len(d))),
        "'x' has dtype datetime64",
    ),
    "complex covariate": ("y ~ x + (1 | g)", lambda d: d.assign(x=d.x + 1j), "'x' has dtype complex"),
    "empty data": ("y ~ x + (1 | g)", lambda d: d.iloc[:0], "no rows"),
    "all-missing response": ("y ~ x + (1 | g)", lambda d: d.assign(y=np.nan), "'y' is missing"),
    "all-missing grouping": ("y ~ x + (1 | g)", lambda d: d.assign(g=None), "'g' is missing"),
    "all-NaN numeric grouping": ("y ~ x + (1 | g)", lambda d: d.assign(g=np.nan), "'g' is missing"),
    "no complete row": (
        "y ~ x + (1 | g)",
        lambda d: d.assign(
            y=np.where(np.arange(len(d)) % 2, np.nan, d.y), x=np.where(np.arange(len(d)) % 2, d.x, np.nan)
        ),
        "no complete rows.*'y'",
    ),
    "one-level grouping": ("y ~ x + (1 | g)", lambda d: d.assign(g="a"), "'g' has only one level"),
    "one level left after NA": (
        "y ~ x + (1 | g)",
        lambda d: d.assign(y=np.where(d.g == "g0", d.y, np.nan)),
        "'g' has only one level",
    ),
    "as many levels as rows": (
        "y ~ x + (1 | g)",
        lambda d: d.assign(g=np.arange(len(d))),
        "'g' has 60 levels for 60 observations",
    ),
    "more random effects than rows": (
        "y ~ x + (1 + x + I(x^2) | g)",
        lambda d: small_data(8, 3),
        r"number of random effects \(=24\) for term",
    ),
    "duplicated column names": (
        "y ~ x + (1 | g)",
        lambda d: pd.concat([d, d[["x"]]], axis=1),
        "more than one column named 'x'",
    ),
    "no residual": (
        "y ~ factor(id) + (1 | g)",
        lambda d: d.assign(id=np.arange(len(d))),
        "60 fixed-effect coefficients",
    ),
    "exact linear response": ("y ~ x + (1 | g)", lambda d: d.assign(y=1 + 2 * d.x), "exact linear function"),
    "dunder in expression": ("y ~ I(x.__class__) + (1 | g)", lambda d: d, "'__' are not allowed"),
    "expression of wrong length": ("y ~ I(x[1:3]) + (1 | g)", lambda d: d, "one value per row"),
    "no response": ("~ x + (1 | g)", lambda d: d, "no response"),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_named_error_before_jax(case, monkeypatch):
    formula, modify, message = BAD_DATA[case]
    _jax_untouched(monkeypatch)
    with pytest.raises(DataError, match=message):
        jaxlmm.lmer(formula, modify(small_data()))


@pytest.mark.parametrize(
    "formula, message",
    [
        (123, "must be a string"),
        (None, "must be a string"),
        (b"y ~ x + (1 | g)", "must be a string"),
        ("", "empty"),
        ("y ~ x + (1 | g", "expected '\\)' at position 14"),
        ("y ~ x + (1 | )", "unexpected '\\)' at position 13"),
        ("y ~ x + (1 |)", "at position 12"),
        ("y ~ x + (x | 1)", "grouping factor must be a variable"),
        ("y ~ x + (1 | g) + (1 | g)", "duplicated random-effects term \\(1 \\| g\\)"),
        ("y ~ x + (x || g) + (1 | g)", "duplicated random-effects term \\(1 \\| g\\)"),
        ("y ~ x + (0 | g)", "has no effects"),
        ("y ~ x $ (1 | g)", "unexpected character '\\$' at position 6"),
        ("y ~ " + "(" * 3000 + "x" + ")" * 3000, "nested too deeply"),
        ("y ~ (a+b+c+d+e+f+g+h+i+j+k+l+m+n+o+p)^16", "more than 10000 terms"),
        ("y ~ x^1e400 + (1 | g)", "positive whole number"),
    ],
)
def test_formula_errors_say_where(formula, message, monkeypatch):
    _jax_untouched(monkeypatch)
    with pytest.raises(FormulaError, match=message) as err:
        jaxlmm.lmer(formula, small_data())
    if isinstance(formula, str) and formula and "position" in message:
        assert err.value.position is not None and 0 <= err.value.position <= len(formula)


def test_duplicated_fixed_terms_merge_as_in_r():
    d = small_data()
    a, b = jaxlmm.lmer("y ~ x + x + (1 | g)", d), jaxlmm.lmer("y ~ x + (1 | g)", d)
    assert list(a.fixef.index) == ["(Intercept)", "x"]
    np.testing.assert_allclose(a.fixef.values, b.fixef.values, rtol=1e-10)


def test_numbers_in_object_column_are_numbers_and_nan_from_expression_warns():
    d = small_data()
    m = jaxlmm.lmer("y ~ x + (1 | g)", d.assign(x=d.x.astype(object)))
    assert list(m.fixef.index) == ["(Intercept)", "x"]
    with pytest.warns(UserWarning, match="'log\\(y\\)' is NaN/missing in"):
        m = jaxlmm.lmer("log(y) ~ x + (1 | g)", d)
    assert m.nobs == int((d.y > 0).sum()) and np.isfinite(m.fixef.values).all()


def test_argument_errors():
    d = small_data()
    with pytest.raises(JaxlmmError, match="reml must be True or False"):
        jaxlmm.lmer("y ~ x + (1 | g)", d, reml="no")
    m = jaxlmm.lmer("y ~ x + (1 | g)", d)
    for call in (
        lambda: m.simulate(0),
        lambda: m.bootstrap(-1),
        lambda: m.confint(method="likelihood"),  # profile intervals exist now (jaxlmm.profile)
        lambda: m.confint(level=95),
    ):
        with pytest.raises(JaxlmmError):
            call()


def test_anova_refuses_what_it_cannot_compare():
    d = small_data()
    m1 = jaxlmm.lmer("y ~ x + (1 | g)", d, reml=False)
    with pytest.raises(ModelComparisonError, match="argument 2 is a str"):
        jaxlmm.anova(m1, "m2")
    with pytest.raises(ModelComparisonError, match="argument 1 is a int"):
        jaxlmm.anova(3, m1)
    with pytest.raises(ModelComparisonError, match="at least two"):
        jaxlmm.anova(m1)
    with pytest.raises(ModelComparisonError, match="same observations"):
        jaxlmm.anova(m1, jaxlmm.lmer("y ~ x + (1 | g)", d.iloc[:54], reml=False))
    with pytest.raises(ModelComparisonError, match="same observations"):
        jaxlmm.anova(m1, jaxlmm.lmer("y ~ x + (1 | g)", d.assign(y=2 * d.y), reml=False))
    with pytest.raises(ModelComparisonError, match="not a fitted model"):
        jaxlmm.pbtest(m1, None, nsim=5)


def test_fit_batch_responses_of_wrong_length_or_missing():
    d = small_data()
    rng = np.random.default_rng(1)
    for Y, message in [
        (rng.normal(size=(59, 2)), "59 rows"),
        (rng.normal(size=(3, 60)), "3 rows"),
        (np.full((60, 2), np.nan), "missing or infinite"),
    ]:
        with pytest.raises(DataError, match=message):
            jaxlmm.fit_batch("y ~ x + (1 | g)", d, responses=Y)


def test_numbers_as_text_with_few_values_are_a_factor_like_r():
    from conftest import load_data

    cake = load_data("cake").astype({"temperature": str})
    with pytest.warns(UserWarning, match="used as a factor with 6 levels"):
        m = jaxlmm.lmer("angle ~ recipe * temperature + (1 | recipe:replicate)", cake)
    assert "recipeB:temperature185" in m.fixef.index
    ref = jaxlmm.lmer("angle ~ recipe * temperature + (1 | recipe:replicate)", load_data("cake"))
    np.testing.assert_allclose(m.fixef.values, ref.fixef.values, rtol=1e-8)
