"""Fuzzing the formula parser: random strings and random valid formulas end in a Formula or a FormulaError.

Parsing is pure Python; each parse is timed, so an exponential blow-up or a loop shows as a failure rather
than a hang.  Evaluated against data (the design stage, no JAX), only FormulaError or DataError escapes.
"""

import string
import time

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxlmm import DataError, FormulaError
from jaxlmm.design import build_design
from jaxlmm.formula import Formula, parse_formula

ALPHABET = "yxzgh01 ()|~+-*/:^.`'$I,e2" + "log"
DATA = pd.DataFrame(
    {
        "y": np.linspace(0.0, 1.0, 24) ** 2,
        "x": np.tile(np.arange(6.0), 4),
        "z": np.repeat(["a", "b", "c"], 8),
        "g": np.repeat(["g1", "g2", "g3", "g4"], 6),
        "h": np.tile(["h1", "h2"], 12),
    }
)


def parse_quickly(text):
    start = time.perf_counter()
    try:
        return parse_formula(text)
    finally:
        assert time.perf_counter() - start < 2.0, f"parsing {text!r} took too long"


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=ALPHABET, max_size=40))
def test_random_strings_parse_or_raise_formula_error(text):
    try:
        parsed = parse_quickly(text)
    except FormulaError as err:
        assert err.position is None or 0 <= err.position <= len(text)
        return
    assert isinstance(parsed, Formula)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=string.printable, max_size=30).map(lambda s: "y ~ " + s))
def test_random_printable_right_hand_sides(text):
    try:
        parse_quickly(text)
    except FormulaError:
        pass


# ------------------------------------------------------------------ a small grammar of valid formulas
variables = st.sampled_from(["x", "z", "log(x + 1)", "I(x^2)", "`x`"])
groups = st.sampled_from(["g", "h", "g:h", "g/h", "(g)"])


@st.composite
def fixed_parts(draw, depth=2):
    if depth == 0 or draw(st.booleans()):
        return draw(variables)
    op = draw(st.sampled_from([" + ", " * ", ":", " - ", " / "]))
    left, right = draw(fixed_parts(depth - 1)), draw(fixed_parts(depth - 1))
    text = f"{left}{op}{right}"
    return f"({text})" if draw(st.booleans()) else text


@st.composite
def formulas(draw):
    bars = draw(
        st.lists(
            st.tuples(st.sampled_from(["1", "x", "1 + x", "0 + x", "z"]), st.sampled_from(["|", "||"]), groups),
            min_size=1,
            max_size=2,
        )
    )
    random = " + ".join(f"({e} {op} {g})" for e, op, g in bars)
    fixed = draw(fixed_parts())
    power = draw(st.sampled_from(["", "^2"]))
    intercept = draw(st.sampled_from(["", " + 1", " - 1", " + 0"]))
    return f"{draw(st.sampled_from(['y', 'log(y + 1)']))} ~ ({fixed}){power}{intercept} + {random}"


@settings(max_examples=150, deadline=None)
@given(formulas())
def test_valid_formulas_parse_and_build_or_raise_documented_errors(text):
    try:
        parsed = parse_quickly(text)
    except FormulaError as err:  # the same bar twice (lme4 fits it twice), or x * (x - x): jaxlmm refuses
        assert any(m in str(err) for m in ("duplicated", "no effects", "needs variables on both sides")), text
        return
    assert parsed.random and parsed.response is not None
    try:
        design = build_design(parsed, DATA)
    except DataError:
        return
    assert design.X.shape[0] == design.n and np.isfinite(design.X).all()


def test_known_valid_formulas_round_trip():
    f = parse_quickly("log(y + 1) ~ (x * z)^2 - 1 + (1 + x || g/h)")
    assert f.response == "log(y + 1)" and not f.fixed.intercept
    assert [r.group for r in f.random] == [("g",), ("g",), ("h", "g"), ("h", "g")]
