"""Shape buckets, exact padding, shared executables, and the bound on live executables."""

import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxlmm
from jaxlmm import cache
from jaxlmm.crossprod import crossproducts
from jaxlmm.design import build_design
from jaxlmm.deviance import profiled_deviance
from jaxlmm.formula import parse_formula
from jaxlmm.shapes import (
    DENSE_FINE_FROM,
    FINE_FROM,
    FINE_STEPS_PER_OCTAVE,
    LONG_LIST,
    STEPS_PER_OCTAVE,
    bucket,
    columns_bucket,
    dense_bucket,
    list_bucket,
    pad_to_bucket,
)


def test_bucket_grid_is_powers_of_two_then_eight_steps_per_octave():
    assert [bucket(k) for k in (1, 2, 3, 5, 8, 9, 1000, 1024)] == [1, 2, 4, 8, 8, 16, 1024, 1024]
    assert bucket(1025) == 1024 + 1024 // STEPS_PER_OCTAVE
    assert bucket(3000) == 3072 and bucket(2972) == 3072  # InstEval's students: 3% of padding
    sizes = np.arange(1, 20_000)
    grid = np.array([bucket(k) for k in sizes])
    assert np.all(grid >= sizes) and np.all(np.diff(grid) >= 0)
    large = sizes > FINE_FROM
    assert np.max(grid[large] / sizes[large]) <= 1 + 1 / STEPS_PER_OCTAVE + 1e-12
    assert bucket(3, minimum=8) == 8


def test_dense_block_levels_columns_and_long_lists_have_finer_grids():
    """The dense Schur block costs the cube of its levels: a 601-level crossed factor pads to 608, not to
    1,024 (4.2x the Cholesky work), and InstEval's 1,128 lecturers to 1,136; long pair lists pad < 2%."""
    assert dense_bucket(601) == 608 and dense_bucket(1128) == 1136 and dense_bucket(3) == 4
    assert dense_bucket(100) == 128
    sizes = np.arange(1, 20_000)
    grid = np.array([dense_bucket(k) for k in sizes])
    assert np.all(grid >= sizes) and np.all(np.diff(grid) >= 0)
    large = sizes > DENSE_FINE_FROM
    assert np.max(grid[large] / sizes[large]) <= 1 + 1 / FINE_STEPS_PER_OCTAVE + 1e-12
    assert len(np.unique(grid)) < 0.03 * sizes.size  # still a grid: 64 sizes per octave
    assert list_bucket(1_062_300) == 1_064_960  # InstEval's pairs: 0.25% of padding
    assert [columns_bucket(p) for p in range(1, 14)] == [1, 2, 4, 4, 6, 6, 8, 8, 12, 12, 12, 12, 16]
    assert columns_bucket(9, fine_from=8) == 9  # batch lanes: every count above 8
    assert list_bucket(1000) == bucket(1000) and list_bucket(LONG_LIST + 1) <= (LONG_LIST + 1) * (1 + 1 / 64)


def _groups(G: int, rows: int, seed: int, crossed: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(G), rows)
    x = rng.uniform(0, 5, g.size)
    data = {
        "g": g,
        "x": x,
        "z": rng.normal(size=g.size),
        "y": 1 + 0.5 * x + rng.normal(size=G)[g] + rng.normal(size=g.size),
    }
    if crossed:
        data["h"] = rng.integers(0, 5, g.size)
        data["y"] = data["y"] + rng.normal(size=5)[data["h"]]
    return pd.DataFrame(data)


@pytest.mark.parametrize(
    "formula, crossed", [("y ~ x + z + (1 + x | g)", False), ("y ~ x + (1 | g) + (1 + x | h)", True)]
)
@pytest.mark.parametrize("reml", [False, True])
def test_padding_leaves_the_criterion_unchanged(formula, crossed, reml):
    design = build_design(parse_formula(formula), _groups(11, 4, 1, crossed))
    cp = crossproducts(design.y, design.X, design.codes, design.Z, design.structure)
    padded, structure = pad_to_bucket(cp, design.structure)
    assert structure.blocks[0].n_levels > design.structure.blocks[0].n_levels
    assert padded.AXX.shape[0] == 4 if design.p == 3 else padded.AXX.shape[0] == design.p  # inert X columns
    assert padded.pair_val.shape[0] >= cp.pair_val.shape[0] and np.all(np.diff(padded.pair_out) >= 0)
    rng = np.random.default_rng(2)
    for _ in range(3):
        theta = jnp.asarray(rng.uniform(0.1, 2.0, design.structure.n_theta))
        real = profiled_deviance(theta, cp, design.structure, reml)
        assert float(profiled_deviance(theta, padded, structure, reml)) == pytest.approx(float(real), rel=1e-12)


def test_fits_of_one_bucket_and_both_criteria_share_one_executable():
    first = jaxlmm.lmer("y ~ x + (1 + x | g)", _groups(9, 5, 0))  # compiles the 16-level bucket's kernels
    first.tidy(), first.ranef()
    before = cache.live_executables()
    for G, reml in zip(range(10, 17), [True, False] * 4):
        m = jaxlmm.lmer("y ~ x + (1 + x | g)", _groups(G, 5, G), reml=reml)
        m.tidy()  # the Satterthwaite derivatives run through the same kernel
        assert m.ngroups == {"g": G} and m.ranef().shape[0] == 2 * G
    assert cache.live_executables() == before


def test_dropping_the_live_executables_keeps_fitting():
    data = _groups(12, 5, 3)
    first = jaxlmm.lmer("y ~ x + (1 | g)", data)
    assert cache.bound_executables(limit=10**9) is False
    assert cache.bound_executables(limit=0) is True and cache.live_executables() == 0
    again = jaxlmm.lmer("y ~ x + (1 | g)", data)  # compiles (or reloads) what it needs
    assert cache.live_executables() >= 1
    assert again.loglik == pytest.approx(first.loglik, rel=1e-12)
    np.testing.assert_allclose(again.theta, first.theta, rtol=1e-10)


@pytest.mark.slow
def test_three_hundred_shapes_in_one_process_keep_memory_mappings_bounded(tmp_path):
    """A long session fitting 300 designs of all-different sizes (and three formulas) neither crashes nor
    grows its memory mappings without bound (the kernel's limit is 65,530)."""
    script = textwrap.dedent("""
        import numpy as np, pandas as pd, jaxlmm
        from jaxlmm import cache
        rng = np.random.default_rng(0)
        formulas = ["y ~ x + (1 | g)", "y ~ x + (1 + x | g)", "y ~ x + (1 | g) + (0 + x | g)"]
        for k, G in enumerate(range(5, 305)):
            g = np.repeat(np.arange(G), 4)
            x = rng.uniform(0, 5, g.size)
            y = 1 + 0.5 * x + rng.normal(size=G)[g] + rng.normal(size=g.size)
            m = jaxlmm.lmer(formulas[k % 3], pd.DataFrame({"y": y, "x": x, "g": g}), reml=bool(k % 2))
            m.tidy()
        print(sum(1 for _ in open("/proc/self/maps")), cache.live_executables())
    """)
    env = {**os.environ, "JAXLMM_CACHE_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, env=env, timeout=1200
    )
    assert out.returncode == 0, out.stderr[-2000:]
    maps, live = map(int, out.stdout.split()[-2:])
    assert maps < 20_000
    assert live <= cache.MAX_EXECUTABLES + 10
