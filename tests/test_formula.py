"""The formula parser against R's terms.formula / lme4's findbars rules."""

import pytest

from jaxlmm import FormulaError, parse_formula


def fixed_terms(text):
    return [":".join(t) for t in parse_formula(text).fixed.terms]


@pytest.mark.parametrize(
    "text, terms, intercept",
    [
        ("y ~ x", ["x"], True),
        ("y ~ 0 + x", ["x"], False),
        ("y ~ x - 1", ["x"], False),
        ("y ~ -1 + x", ["x"], False),
        ("y ~ a * b", ["a", "b", "a:b"], True),
        ("y ~ b:a + a", ["a", "b:a"], True),
        ("y ~ (a + b + c)^2 - a:b", ["a", "b", "c", "a:c", "b:c"], True),
        ("y ~ a / b", ["a", "a:b"], True),
        ("y ~ log(x) + I(x^2)", ["log(x)", "I(x^2)"], True),
        ("y ~ x + x", ["x"], True),
        ("y ~ `odd name` + x", ["`odd name`", "x"], True),  # R's term label keeps the backquotes
        ("y ~ `x` + poly(x,2) + factor(g %% 3)", ["x", "poly(x, 2)", "factor(g%%3)"], True),  # R's deparse
    ],
)
def test_fixed_part(text, terms, intercept):
    f = parse_formula(text + " + (1 | g)")
    assert [":".join(t) for t in f.fixed.terms] == terms
    assert f.fixed.intercept is intercept


def test_random_terms_expand_like_lme4():
    f = parse_formula("y ~ x + (x || g) + (1 | a/b) + (0 + x | c:d)")
    got = [(r.effects.intercept, [":".join(t) for t in r.effects.terms], r.group_name) for r in f.random]
    assert got == [
        (True, [], "g"),
        (False, ["x"], "g"),
        (True, [], "a"),
        (True, [], "b:a"),
        (False, ["x"], "c:d"),
    ]


@pytest.mark.parametrize(
    "text, position",
    [
        ("y ~ x + ", 8),
        ("y ~ x + (1 | )", 13),
        ("y ~ x + 1 | g", 10),
        ("y ~ (x", 6),
        ("y x", 2),
        ("y ~ x + (1 | g) + (1 | g)", 21),
        ("y ~ x + (0 | g)", 11),
        ("y ~ x + 2", 8),
        ("", 0),
        ("y ~ x $ z", 6),
    ],
)
def test_bad_formulas_say_where(text, position):
    with pytest.raises(FormulaError) as err:
        parse_formula(text)
    assert err.value.position == position
    assert isinstance(err.value, ValueError)
