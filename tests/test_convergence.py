"""Non-convergence is loud, as in lme4: a ConvergenceWarning, ``m.converged`` False, failures counted in batches."""

import pytest
from conftest import load_data

import jaxlmm
from jaxlmm import JaxlmmError


@pytest.fixture(scope="module")
def sleep():
    return load_data("sleepstudy")


def test_non_convergence_is_reported_like_lme4(sleep):
    with pytest.warns(jaxlmm.ConvergenceWarning, match="Model failed to converge"):
        m = jaxlmm.lmer("Reaction ~ Days + (Days | Subject)", sleep, max_iter=1)
    assert not m.converged and "not converged" in m.opt.message
    with pytest.raises(JaxlmmError, match="max_iter"):
        jaxlmm.lmer("Reaction ~ Days + (Days | Subject)", sleep, max_iter=0)


def test_failed_replicates_are_counted(sleep):
    from jaxlmm.batch import fit_responses

    m = jaxlmm.lmer("Reaction ~ Days + (Days | Subject)", sleep, reml=False)
    Y = m.simulate(3, seed=1)
    Y[:, 1] = 5.0  # constant: no optimum
    Y[:, 2] = 3 + 2 * sleep.Days.to_numpy()  # exactly linear: residual variance 0
    fits = fit_responses(m, Y)
    assert list(fits.converged) == [True, False, False] and fits.n_failed == 2
