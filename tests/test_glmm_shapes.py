"""glmer's kernels on bucketed shapes: exact padding (rows of weight 0, empty levels) and no new
compilation for a data set of another size in the same bucket."""

import numpy as np
import pandas as pd
import pytest
from jax import monitoring

import jaxlmm
from jaxlmm.family import make_family
from jaxlmm.formula import parse_formula
from jaxlmm.glmm_design import build_glmm_design
from jaxlmm.glmm_kernel import glmm_problem, value_and_gradient
from jaxlmm.pirls import GlmmData


def small_data(n_groups: int, seed: int = 0, poisson: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), rng.integers(2, 7, n_groups))
    x = rng.standard_normal(g.size)
    eta = -0.2 + 0.6 * x + 0.7 * rng.standard_normal(n_groups)[g]
    y = rng.poisson(np.exp(eta)) if poisson else (rng.random(g.size) < 1 / (1 + np.exp(-eta)))
    return pd.DataFrame({"y": y.astype(float), "x": x, "g": pd.Categorical(g.astype(str))})


def unpadded_data(gd) -> GlmmData:
    d = gd.design
    return GlmmData(d.y, gd.wt, gd.offset, d.X, tuple(d.Z), tuple(d.codes))


@pytest.mark.parametrize(
    ("family", "nagq", "weights"),
    [
        ("binomial", 1, True),
        pytest.param("poisson", 1, True, marks=pytest.mark.slow),
        pytest.param("binomial", 5, False, marks=pytest.mark.slow),
    ],
)
def test_padded_criterion_and_gradient_equal_the_unpadded(family, nagq, weights):
    data = small_data(13, seed=3, poisson=family == "poisson")
    w = np.where(np.arange(len(data)) % 7 == 0, 0.0, 1.0 + (np.arange(len(data)) % 3)) if weights else None
    gd = build_glmm_design(parse_formula("y ~ x + (1 | g)"), data, make_family(family), weights=w)
    problem = glmm_problem(gd)
    assert problem.data.y.shape[0] > gd.n and problem.structure.blocks[0].n_levels > 13  # really padded
    x = np.array([0.9, -0.3, 0.5])
    f, g = value_and_gradient(x, unpadded_data(gd), gd.design.structure, gd.family, nagq)
    fp, gp = value_and_gradient(x, problem.data, problem.structure, gd.family, nagq)
    assert float(fp) == pytest.approx(float(f), rel=1e-12, abs=1e-10)
    np.testing.assert_allclose(np.asarray(gp), np.asarray(g), rtol=1e-9, atol=1e-10)


def test_a_fit_of_another_size_in_the_same_bucket_compiles_nothing():
    compiles = [0]

    def count(event: str, duration: float, **kwargs) -> None:
        compiles[0] += event == "/jax/core/compile/backend_compile_duration"

    first, second = small_data(19, seed=1), small_data(23, seed=2)  # 32 levels, 128 rows once padded
    m1 = jaxlmm.glmer("y ~ x + (1 | g)", first, family="binomial")
    _ = m1.criterion, m1.deviance, m1.vcov, m1.fitted()
    monitoring.register_event_duration_secs_listener(count)
    try:
        m2 = jaxlmm.glmer("y ~ x + (1 | g)", second, family="binomial")
        _ = m2.criterion, m2.deviance, m2.vcov, m2.fitted()
    finally:
        monitoring.unregister_event_duration_listener(count)
    assert m1.problem.structure == m2.problem.structure and m1.problem.data.y.shape == m2.problem.data.y.shape
    assert compiles[0] == 0
    assert m2.converged and m2.u.shape == (23,) and m2.fitted().shape == (len(second),)


def test_fit_batch_of_glmm_datasets_equals_single_fits():
    datasets = [small_data(17 + 4 * k, seed=10 + k, poisson=True) for k in range(4)]  # 32 levels each
    fit = jaxlmm.fit_batch("y ~ x + (1 | g)", datasets=datasets, family="poisson")
    assert fit.n_failed == 0 and list(fit.labels) == list(range(4))
    for k, data in enumerate(datasets):
        m = jaxlmm.glmer("y ~ x + (1 | g)", data, family="poisson")
        assert fit.criterion[k] == pytest.approx(m.criterion, rel=1e-6)
        np.testing.assert_allclose(fit.beta[k], m.beta, atol=1e-4)
        np.testing.assert_allclose(fit.theta[k], m.theta, atol=1e-4)
        assert fit.n_obs[k] == len(data) and fit.n_levels[k] == data.g.nunique()
    long = pd.concat([d.assign(replicate=f"r{k}") for k, d in enumerate(datasets)][::-1], ignore_index=True)
    by = jaxlmm.fit_batch("y ~ x + (1 | g)", long, by="replicate", family="poisson")
    assert list(by.labels) == [f"r{k}" for k in range(4)][::-1]
    np.testing.assert_allclose(by.criterion[::-1], fit.criterion, rtol=1e-8)
