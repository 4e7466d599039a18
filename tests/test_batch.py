"""Batched refits: equal to one-at-a-time fits, reproducible, and the bootstrap LRT is sane."""

import json
import warnings
from dataclasses import replace

import numpy as np
import pytest
import scipy.stats
from conftest import FIXTURES, fitted

import jaxlmm
from jaxlmm.batch import fit_responses
from jaxlmm.compare import bootstrap_p_value
from jaxlmm.model import fit_design


@pytest.fixture(scope="module")
def slope_model():
    return fitted("seed2_lmm3_ml")


def test_batch_equals_single_fits(slope_model):
    m = slope_model
    Y = m.simulate(6, seed=3)
    batch = fit_responses(m, Y)
    assert batch.converged.all()
    for b in range(Y.shape[1]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            single = fit_design(replace(m.design, y=Y[:, b]), reml=False)
        assert batch.criterion[b] == pytest.approx(-2 * single.loglik, abs=1e-6)
        np.testing.assert_allclose(batch.beta[b], single.fixef.values, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(batch.sigma[b], single.sigma, rtol=1e-5)


def test_theta_is_canonical_and_reml_batch(slope_model):
    batch = fit_responses(slope_model, slope_model.simulate(5, seed=4), reml=True)
    low = slope_model.design.structure.lower
    assert np.all(batch.theta[:, low == 0] >= 0)
    frame = batch.to_frame()
    assert set(frame.columns) == {"replicate", "term", "estimate", "converged"}
    assert frame.replicate.nunique() == 5


def test_simulation_and_bootstrap_reproducible(slope_model):
    np.testing.assert_array_equal(slope_model.simulate(3, seed=9), slope_model.simulate(3, seed=9))
    a = slope_model.bootstrap(8, seed=5)
    b = slope_model.bootstrap(8, seed=5)
    np.testing.assert_array_equal(a.theta, b.theta)


def test_wrong_length_response_rejected(slope_model):
    with pytest.raises(jaxlmm.DataError, match="rows"):
        fit_responses(slope_model, np.zeros((slope_model.nobs + 1, 2)))


def test_pbtest_against_chisq_and_ordering():
    small, large = fitted("seed2_lmm1_ml"), fitted("seed2_lmm3_ml")
    res = jaxlmm.pbtest(large, small, nsim=100, seed=1)
    assert res.df == 2
    assert res.n_failed == 0 and res.reference.size == 100
    assert np.all(res.reference >= 0)
    # the observed LRT against lme4's anova of the same models (lmm3's deviance minus lmm1's, in R)
    table = {row["model"]: row for row in json.loads((FIXTURES / "lme4" / "anova_seed2.json").read_text())["table"]}
    assert res.lrt == pytest.approx(table["lmm1"]["deviance"] - table["lmm3"]["deviance"], rel=1e-9)
    assert res.p_chisq == pytest.approx(scipy.stats.chi2.sf(res.lrt, 2), rel=1e-12)
    with pytest.raises(jaxlmm.ModelComparisonError):
        jaxlmm.pbtest(small, large, nsim=10, seed=1)


@pytest.mark.slow  # ~15 s, mostly compiling its shapes: kept out of the default tier's 4-minute budget
def test_datasets_of_different_sizes_equal_single_fits():
    from conftest import load_data

    seed2 = load_data("seed2")
    groups = sorted(seed2.Group.unique())
    # sizes chosen so that each formula needs one shape bucket (one compilation)
    datasets = [seed2[seed2.Group.isin(groups[: 5 + k])].sample(frac=0.9, random_state=k) for k in range(3)]
    pen = load_data("Penicillin")
    datasets_crossed = [pen[pen.plate.isin(sorted(pen.plate.unique())[: 10 + 3 * k])] for k in range(2)]
    for formula, sets, reml in [
        ("y ~ x + (1 + x | Group)", datasets, False),
        ("diameter ~ 1 + (1 | plate) + (1 | sample)", datasets_crossed, True),
    ]:
        batch = jaxlmm.fit_batch(formula, datasets=sets, reml=reml)
        assert batch.converged.all()
        for k, data in enumerate(sets):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                single = jaxlmm.lmer(formula, data, reml=reml)
            assert batch.criterion[k] <= -2 * single.loglik + 1e-6
            np.testing.assert_allclose(batch.beta[k], single.fixef.values, rtol=1e-5, atol=1e-8)
            np.testing.assert_allclose(batch.sigma[k], single.sigma, rtol=1e-4)


def test_fit_batch_needs_one_source():
    with pytest.raises(jaxlmm.DataError):
        jaxlmm.fit_batch("y ~ x + (1 | Group)")


@pytest.mark.slow
def test_lanes_split_over_four_cpu_devices_give_the_same_fits(tmp_path):
    """The batch axis sharded over 4 forced host devices reproduces the single-device fits."""
    import os
    import subprocess
    import sys

    script = (
        "import sys, numpy as np, jax, jaxlmm\n"
        "from jaxlmm.batch import fit_responses\n"
        "m = jaxlmm.lmer('y ~ x + (1 | Group)', jaxlmm.load_seed(), reml=False)\n"
        "fb = fit_responses(m, m.simulate(40, seed=3), chunk_size=16)\n"
        "assert jax.local_device_count() == int(sys.argv[2]), jax.local_device_count()\n"
        "np.save(sys.argv[1], fb.criterion)\n"
    )
    results = []
    for devices in (1, 4):
        out = tmp_path / f"crit{devices}.npy"
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
        subprocess.run([sys.executable, "-c", script, str(out), str(devices)], check=True, env=env, timeout=300)
        results.append(np.load(out))
    np.testing.assert_allclose(results[0], results[1], rtol=0, atol=1e-8)


@pytest.mark.parametrize("name", ["penicillin_reml", "seed2_lmm3_ml"])
def test_direct_products_have_the_distribution_of_plain_simulation(name):
    """Drawing Kᵀy* and y*ᵀy* directly matches simulating y (means and sds within Monte Carlo error)."""
    from jaxlmm.bootstrap import simulated_products

    m = fitted(name)
    (plain,) = simulated_products([m.design], m.params, 4000, seed=1)
    (direct,) = simulated_products([m.design], m.params, 4000, seed=2, simulation="direct")
    for field in plain:
        a, b = plain[field].reshape(4000, -1), direct[field].reshape(4000, -1)
        assert a.shape == b.shape
        if a.shape[1] == 0:
            continue
        sd = a.std(axis=0) + 1e-12
        assert np.all(np.abs(a.mean(axis=0) - b.mean(axis=0)) < 5 * sd / np.sqrt(4000) * np.sqrt(2) + 1e-9)
        np.testing.assert_allclose(b.std(axis=0), a.std(axis=0), rtol=0.1, atol=1e-9)


def test_pbtest_reference_same_law_both_simulations():
    small, large = fitted("seed2_lmm1_ml"), fitted("seed2_lmm3_ml")
    a = jaxlmm.pbtest(large, small, nsim=400, seed=1)
    b = jaxlmm.pbtest(large, small, nsim=400, seed=2, simulation="direct")
    assert scipy.stats.ks_2samp(a.reference, b.reference).pvalue > 1e-3


@pytest.mark.slow
def test_two_processes_under_jax_distributed_share_and_gather(tmp_path):
    """jax.distributed on two local CPU processes: each fits half the simulations, both return all of them."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        port = sock.getsockname()[1]
    script = (
        "import sys, numpy as np, jax\n"
        "jax.config.update('jax_cpu_collectives_implementation', 'gloo')\n"
        "jax.distributed.initialize(coordinator_address=f'localhost:{sys.argv[2]}', num_processes=2,"
        " process_id=int(sys.argv[1]))\n"
        "import jaxlmm\n"
        "data = jaxlmm.load_seed()\n"
        "m1 = jaxlmm.lmer('y ~ x + (1 | Group)', data, reml=False)\n"
        "m3 = jaxlmm.lmer('y ~ x + (1 + x | Group)', data, reml=False)\n"
        "res = jaxlmm.pbtest(m3, m1, nsim=31, seed=5)\n"
        "boot = m3.bootstrap(11, seed=6)\n"
        "np.save(sys.argv[3], np.concatenate([[res.p_boot, res.reference.size, boot.beta.shape[0]],"
        " res.reference, boot.beta.ravel()]))\n"
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    outs = [tmp_path / f"p{k}.npy" for k in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(k), str(port), str(outs[k])],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for k in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
    first, second = np.load(outs[0]), np.load(outs[1])
    np.testing.assert_array_equal(first, second)  # both processes hold the whole result
    assert first[1] == 31 and first[2] == 11
    reference = first[3:34]
    lrt = 2 * (fitted_seed_loglik("y ~ x + (1 + x | Group)") - fitted_seed_loglik("y ~ x + (1 | Group)"))
    # the p-value (its formula is tested against closed forms elsewhere) comes from the gathered reference of
    # both processes, not from this process's share
    assert first[0] == pytest.approx(bootstrap_p_value(reference, lrt))


def fitted_seed_loglik(formula):
    return jaxlmm.lmer(formula, jaxlmm.load_seed(), reml=False).loglik


def test_pbtest_agrees_with_pbkrtest():
    """PBmodcomp (R, 500 simulations) against pbtest: same statistic, same reference law, same p."""
    from conftest import load_data

    ref = json.loads((FIXTURES / "pbkrtest_seed2.json").read_text())
    data = load_data(ref["data"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        large, small = jaxlmm.lmer(ref["large"], data), jaxlmm.lmer(ref["small"], data)
        res = jaxlmm.pbtest(large, small, nsim=400, seed=11)
    assert res.lrt >= ref["lrt"] - 1e-6 and res.lrt == pytest.approx(ref["lrt"], rel=1e-3)
    theirs = np.maximum(np.asarray(ref["reference"]), 0.0)
    assert scipy.stats.ks_2samp(res.reference, theirs).pvalue > 1e-3
    p = ref["p_boot"]
    assert abs(res.p_boot - p) < 4 * np.sqrt(max(p * (1 - p), 0.01) * (1 / 400 + 1 / theirs.size))


def test_lanes_per_call_follow_the_device_and_the_memory(slope_model):
    import jax
    import pandas as pd

    from jaxlmm.batch import LANE_MEMORY, LANES_PER_CPU_DEVICE, default_chunk_size
    from jaxlmm.design import build_design
    from jaxlmm.formula import parse_formula

    d = slope_model.design
    assert default_chunk_size(d.structure, d.p) == LANES_PER_CPU_DEVICE * jax.local_device_count()  # CPU here
    rng = np.random.default_rng(0)
    n = 12_000  # (1 | a) with 6,000 levels and (1 | b) with 3,000: a dense Schur block of 3,000²
    crossed = pd.DataFrame(
        {"y": rng.normal(size=n), "a": rng.permutation(np.arange(n) % 6000), "b": np.arange(n) % 3000}
    )
    big = build_design(parse_formula("y ~ 1 + (1 | a) + (1 | b)"), crossed)
    # ten copies of a 3,000² float64 block (720 MB) per lane: one lane per call and device fits 1 GiB
    assert LANE_MEMORY == 1 << 30
    assert default_chunk_size(big.structure, big.p) == jax.local_device_count()
