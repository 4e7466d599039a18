"""A broad check of the optimum: 36 random designs against the best of three lme4 optimisers.

Made by ``scripts/make_random_cases.py`` and ``scripts/make_random_fixtures.R``: covariates in units of 1e-3 or
1e4, groups of one row, true variances of zero, correlated and factor slopes, crossed and nested factors, by
ML and REML.  jaxlmm must reach lme4's best criterion or lower and say that it converged, or refuse the
cases that lme4 refuses.
"""

import json
import warnings
from pathlib import Path

import pandas as pd
import pytest

import jaxlmm

FOLDER = Path(__file__).parent / "fixtures" / "random"
CASES = json.loads((FOLDER / "lme4_best.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize(
    "case", CASES, ids=[f"{c['data']}-{c['formula']}-{'REML' if c['reml'] else 'ML'}" for c in CASES]
)
def test_reaches_lme4s_best_optimum(case):
    data = pd.read_csv(FOLDER / f"{case['data']}.csv", dtype={"f": str, "g": str, "h": str})
    if "lme4_error" in case:  # lme4 refuses the case (too many random effects for the data): so must jaxlmm
        with pytest.raises(jaxlmm.DataError, match="number of observations"):
            jaxlmm.lmer(case["formula"], data, reml=case["reml"])
        assert "number of observations" in case["lme4_error"]
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # rank-deficiency and singular-fit notes are expected
        m = jaxlmm.lmer(case["formula"], data, reml=case["reml"])
    assert m.converged
    criterion = -2 * m.loglik
    assert criterion <= case["lme4_best_criterion"] + 1e-6 * max(1.0, abs(criterion))
