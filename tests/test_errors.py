"""Bad input ends in a specific jaxlmm error (a ValueError) naming the problem, before any JAX work."""

import numpy as np
import pandas as pd
import pytest
from conftest import load_data

import jaxlmm
from jaxlmm import DataError, FormulaError, JaxlmmError


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
