"""Data-set batches (jaxlmm.buckets): the vectorised front end against build_design/crossproducts per data set,
fit_batch(datasets=...) and fit_batch(long, by=...) against lmer per data set, and each validation error."""

import warnings

import numpy as np
import pandas as pd
import pytest

import jaxlmm
from jaxlmm import buckets, cache
from jaxlmm.crossprod import crossproducts
from jaxlmm.design import build_design
from jaxlmm.model import theta_scale
from jaxlmm.shapes import pad_crossproducts, padded_sizes


def make_sets(sizes, seed=0):
    """Data sets with groups of 4 to 8 rows, a random intercept and slope, a covariate z and a factor f."""
    rng = np.random.default_rng(seed)
    sets = []
    for G in sizes:
        m = rng.integers(4, 9, G)
        g = np.repeat(np.arange(G), m)
        x = rng.normal(size=g.size)
        u, v = rng.normal(0, 1.0, G), rng.normal(0, 0.5, G)
        y = 1 + 0.5 * x + u[g] + v[g] * x + rng.normal(0, 0.5, g.size)
        sets.append(
            pd.DataFrame(
                {
                    "y": y,
                    "x": x,
                    "z": rng.normal(size=g.size),
                    "f": rng.choice(["a", "b", "c"], g.size),
                    "g": [f"g{j:02d}" for j in g],
                }
            )
        )
    return sets


def long_frame(sets, labels):
    return pd.concat([d.assign(rep=lab) for d, lab in zip(sets, labels)], ignore_index=True)


def no_fit(*args, **kwargs):
    raise AssertionError("fitting started")


def no_fallback(*args, **kwargs):
    raise AssertionError("the per-data-set path was taken")


@pytest.mark.parametrize(
    "formula",
    [
        "y ~ x + (1 | g)",
        "y ~ x + (1 + x | g)",
        "y ~ x * f + (1 | g) + (0 + z | g)",
        "log(abs(y) + 1) ~ 0 + I(x^2) + (x || g)",
    ],
)
def test_stacked_crossproducts_equal_single_designs(formula):
    sets = make_sets([5, 9, 3, 12], seed=1)
    sets[1].loc[[0, 7], "x"] = np.nan  # dropped rows
    sets[2].loc[3, "g"] = None
    parsed = jaxlmm.parse_formula(formula)
    long = pd.concat(sets, ignore_index=True)
    ids = np.repeat(np.arange(len(sets)), [len(d) for d in sets])
    perm = np.random.default_rng(0).permutation(len(long))  # rows in any order
    stacked = buckets.stack_designs(parsed, long.iloc[perm], ids[perm], len(sets), str)
    for k, data in enumerate(sets):
        d = build_design(parsed, data)
        ref, mine = crossproducts(d.y, d.X, d.codes, d.Z, d.structure), stacked.crossproducts(k)
        assert stacked.structure(k) == d.structure
        assert stacked.fixef_names == d.fixef_names
        assert stacked.n_dropped[k] == d.n_dropped and stacked.n_obs[k] == d.n
        for name, a, b in zip(ref._fields, ref, mine):
            a, b = np.asarray(a), np.asarray(b)
            assert a.shape == b.shape and a.dtype == b.dtype, name
            np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12 * max(1.0, np.abs(a).max(initial=0)), err_msg=name)
        np.testing.assert_allclose(stacked.scale[k], theta_scale(d), rtol=1e-12)


def test_stacked_buckets_equal_pad_to_bucket(monkeypatch):
    """fit_stacked's stacked arrays are each data set's crossproducts padded to the (merged) bucket."""
    sets = make_sets([3, 12, 5, 20, 9], seed=3)
    parsed = jaxlmm.parse_formula("y ~ x * f + (1 + x | g)")
    stacked = buckets.stack_designs(
        parsed,
        pd.concat(sets, ignore_index=True),
        np.repeat(np.arange(len(sets)), [len(d) for d in sets]),
        len(sets),
        str,
    )
    seen = {}

    def capture(cp, scale, target, reml, chunk_size, progress):
        seen[target] = (cp, scale)
        m, p = scale.shape[0], len(stacked.fixef_names)
        return (np.zeros((m, stacked.n_theta)), np.zeros((m, p)), *np.zeros((3, m)), np.zeros(m, dtype=int))

    monkeypatch.setattr(buckets, "_fit_bucket", capture)
    buckets.fit_stacked(stacked, reml=True)
    assert len(seen) == 1  # the batch grid: 3, 5 -> 8 levels (the minimum); 9, 12, 20 as they are; all within
    (target,) = seen  # MERGE_RATIO of 20
    assert target.blocks[0].n_levels == 20
    lanes = {target: 0}
    for k, data in enumerate(sets):
        d = build_design(parsed, data)
        cp0 = crossproducts(d.y, d.X, d.codes, d.Z, d.structure)
        ref = pad_crossproducts(cp0, d.structure, target, *padded_sizes(cp0))
        cp, scale = seen[target]
        for name, a, b in zip(ref._fields, ref, cp):
            b = np.asarray(b)[lanes[target]]
            assert np.shape(a) == b.shape and np.asarray(a).dtype == b.dtype, name
            np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12 * max(1.0, np.abs(a).max(initial=0)), err_msg=name)
        np.testing.assert_allclose(scale[lanes[target]], theta_scale(d), rtol=1e-12)
        lanes[target] += 1


def test_level_buckets_merge_within_a_factor_of_sixteen():
    assert list(buckets.merged_buckets(np.array([8, 16, 32]))) == [32, 32, 32]
    assert list(buckets.merged_buckets(np.array([8, 64, 256, 2048]))) == [64, 64, 2048, 2048]
    assert list(buckets.merged_buckets(np.array([8]))) == [8]


def assert_equal_to_lmer(batch, formula, sets, reml):
    assert batch.n_failed == 0
    for k, data in enumerate(sets):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            single = jaxlmm.lmer(formula, data, reml=reml)
        assert batch.criterion[k] <= -2 * single.loglik + 1e-7 * abs(single.loglik)
        np.testing.assert_allclose(batch.loglik[k], single.loglik, rtol=1e-9)
        np.testing.assert_allclose(batch.theta[k], single.theta, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(batch.beta[k], single.fixef.values, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(batch.sigma[k], single.sigma, rtol=1e-6)


@pytest.mark.parametrize("formula", ["y ~ x + (1 | g)", "y ~ x + (1 + x | g)"])
@pytest.mark.parametrize("reml", [False, True])
def test_datasets_and_by_equal_lmer(formula, reml, monkeypatch):
    sets = make_sets([5, 8, 6, 7], seed=2)  # one bucket of 8 levels; data sets of different sizes
    sets[2].loc[[1, 4], "y"] = np.nan
    monkeypatch.setattr(buckets, "_fit_frames", no_fallback)  # one grouping factor: the vectorised path
    own_levels = [d.assign(g=pd.Categorical(d.g, categories=sorted(d.g.unique(), reverse=True))) for d in sets]
    listed = jaxlmm.fit_batch(formula, datasets=own_levels, reml=reml)  # a Categorical of its own in each
    assert_equal_to_lmer(listed, formula, sets, reml)
    assert list(listed.n_dropped) == [0, 0, 2, 0]
    assert list(listed.labels) == [0, 1, 2, 3]
    labels = ["d", "b", "c", "a"]  # results in order of first appearance, not sorted
    long = long_frame(sets, labels).sample(frac=1.0, random_state=3)  # interleaved rows
    first = list(dict.fromkeys(long.rep))
    by = jaxlmm.fit_batch(formula, long, by="rep", reml=reml)
    assert list(by.labels) == first
    order = [labels.index(lab) for lab in first]
    np.testing.assert_allclose(by.criterion, listed.criterion[order], rtol=1e-9)
    np.testing.assert_allclose(by.beta, listed.beta[order], rtol=1e-6, atol=1e-8)
    frame = by.to_frame()
    assert list(frame.columns[:3]) == ["replicate", "rep", "term"]
    assert list(frame.rep.unique()) == first


@pytest.mark.slow  # 6 s: the default tier keeps under its 4 minutes (CI runs this tier too)
def test_crossed_model_takes_the_per_data_set_path():
    rng = np.random.default_rng(4)
    sets = []
    for n_a, n_b in [(6, 4), (7, 4), (8, 4)]:  # one shape bucket
        a, b = np.meshgrid(np.arange(n_a), np.arange(n_b), indexing="ij")
        a, b = np.repeat(a.ravel(), 2), np.repeat(b.ravel(), 2)
        y = rng.normal(0, 1, n_a)[a] + rng.normal(0, 0.7, n_b)[b] + rng.normal(0, 0.5, a.size)
        sets.append(pd.DataFrame({"y": y, "a": a, "b": [f"b{j}" for j in b]}))
    formula = "y ~ 1 + (1 | a) + (1 | b)"
    listed = jaxlmm.fit_batch(formula, datasets=sets, reml=True)
    assert_equal_to_lmer(listed, formula, sets, True)
    by = jaxlmm.fit_batch(formula, long_frame(sets, [10, 20, 30]), by="rep", reml=True)
    assert list(by.labels) == [10, 20, 30]
    np.testing.assert_allclose(by.criterion, listed.criterion, rtol=1e-9)


ERROR_CASES = [  # formula, how data set 1 is spoilt, the error
    ("y ~ x + (1 | g)", lambda d: d.assign(y=2.0), "is constant"),
    ("y ~ x + (1 | g)", lambda d: d.assign(g="g00"), "has only one level"),
    ("y ~ x + (1 | g)", lambda d: d.assign(g=[f"h{j}" for j in range(len(d))]), "levels for"),
    ("y ~ x + (1 + x + z | g)", lambda d: d.groupby("g").head(2).iloc[:6], "number of random effects"),
    ("y ~ x + (1 | g)", lambda d: d.assign(y=1 + 2 * d.x), "exact linear function"),
    ("y ~ x + (1 | g)", lambda d: d.assign(x=np.nan), "no complete rows"),
    ("y ~ x + (1 | g)", lambda d: d.assign(x=np.where(d.index == 2, np.inf, d.x)), "infinite values"),
    ("y ~ x + f + (1 | g)", lambda d: d.assign(f="a"), "has fixed effects"),  # a level absent
    ("y ~ x + z + (1 | g)", lambda d: d.assign(z=3.0), "has fixed effects"),  # rank-deficient X: z dropped
]


@pytest.mark.parametrize("formula, spoil, message", ERROR_CASES)
def test_validation_errors_name_the_data_set(formula, spoil, message, monkeypatch):
    sets = make_sets([5, 6, 5], seed=5)
    sets[1] = spoil(sets[1])
    monkeypatch.setattr(buckets, "fit_stacked", no_fit)  # raised before any fitting
    with pytest.raises(jaxlmm.DataError, match=f"^data set 1.*{message}"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        jaxlmm.fit_batch(formula, datasets=sets)
    with pytest.raises(jaxlmm.DataError, match=f"^data set rep = b.*{message}"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        jaxlmm.fit_batch(formula, long_frame(sets, ["a", "b", "c"]), by="rep")


def test_by_argument_errors():
    long = long_frame(make_sets([5, 5]), [1, 2])
    with pytest.raises(jaxlmm.DataError, match="unknown column 'replicate'"):
        jaxlmm.fit_batch("y ~ x + (1 | g)", long, by="replicate")
    with pytest.raises(jaxlmm.DataError, match="missing"):
        jaxlmm.fit_batch("y ~ x + (1 | g)", long.assign(rep=long.rep.where(long.index > 3)), by="rep")
    with pytest.raises(jaxlmm.DataError, match="neither responses nor datasets"):
        jaxlmm.fit_batch("y ~ x + (1 | g)", long, by="rep", datasets=[long])
    with pytest.raises(jaxlmm.DataError, match="empty|no rows"):
        jaxlmm.fit_batch("y ~ x + (1 | g)", datasets=[long, long.iloc[:0]])


def test_dataset_ids_in_order_of_first_appearance():
    for values, labels in [
        ([7, 7, 3, 3, 3, 5], [7, 3, 5]),  # blocks: numbered from their boundaries
        ([7, 3, 7, 5, 3], [7, 3, 5]),  # interleaved: factorized
        ([1, 1, 2, 1], [1, 2]),  # a label in two blocks
        (["b", "a", "b"], ["b", "a"]),
    ]:
        ids, found = buckets._dataset_ids(pd.Series(values))
        assert list(found) == labels
        assert [labels[i] for i in ids] == values


def test_a_covariate_of_another_dtype_takes_the_per_data_set_path(monkeypatch):
    sets = make_sets([5, 6, 5], seed=6)
    sets[0]["x"] = np.round(10 * sets[0].x).astype(int)  # int in one data set, float in the others
    calls = []
    fit_frames = buckets._fit_frames
    monkeypatch.setattr(buckets, "_fit_frames", lambda *a, **k: calls.append(1) or fit_frames(*a, **k))
    fit = jaxlmm.fit_batch("y ~ x + (1 | g)", datasets=sets)
    assert calls and fit.n_failed == 0
    single = jaxlmm.lmer("y ~ x + (1 | g)", sets[0])
    np.testing.assert_allclose(fit.loglik[0], single.loglik, rtol=1e-9)


def test_batches_of_other_sizes_reuse_the_compiled_kernels():
    formula = "y ~ x + (1 | g)"
    jaxlmm.fit_batch(formula, datasets=make_sets([5, 6, 7], seed=7), reml=False)
    loaded = cache.live_executables()
    fit = jaxlmm.fit_batch(formula, datasets=make_sets([8, 5, 6, 7, 5], seed=8), reml=True)  # same bucket
    assert fit.n_failed == 0 and cache.live_executables() == loaded


def test_grouping_column_shared_by_every_data_set_is_coded_from_one_copy():
    """Data sets with the same (Arrow string) grouping column: the codes from one copy, tiled, equal the codes
    of the whole column; a data set whose column differs anywhere takes the whole-column path."""
    groups = pd.Series(["b", "a", "c", "a", "b", "c"], dtype="string[pyarrow]")
    same = pd.concat([groups] * 3, ignore_index=True)
    assert buckets._repeated_chunk(same) == 3
    codes, n = buckets._group_codes(("g",), {"g": same})
    assert n == 3 and codes.tolist() == [1, 0, 2, 0, 1, 2] * 3
    changed = pd.concat([groups, groups.replace("c", "d"), groups], ignore_index=True)
    assert buckets._repeated_chunk(changed) == 0
    codes, n = buckets._group_codes(("g",), {"g": changed})
    assert n == 4 and codes.tolist() == [1, 0, 2, 0, 1, 2] + [1, 0, 3, 0, 1, 3] + [1, 0, 2, 0, 1, 2]
    assert buckets._repeated_chunk(pd.Series(["a", "b"] * 3, dtype=object)) == 0  # not Arrow-backed


def test_datasets_sharing_a_string_grouping_column_fit_as_separate_lmer_fits():
    rng = np.random.default_rng(3)
    base = pd.DataFrame({"g": pd.Series(np.repeat(list("pqrstu"), 5), dtype="string[pyarrow]")})
    base["x"] = rng.normal(size=len(base))
    sets = [
        base.assign(y=1 + base.x + rng.normal(size=6)[np.repeat(np.arange(6), 5)] + rng.normal(size=30))
        for _ in range(3)
    ]
    fits = jaxlmm.fit_batch("y ~ x + (1 | g)", datasets=sets, reml=False)
    for k, data in enumerate(sets):
        m = jaxlmm.lmer("y ~ x + (1 | g)", data, reml=False)
        np.testing.assert_allclose(fits.criterion[k], m.deviance, rtol=1e-9)
        np.testing.assert_allclose(fits.beta[k], m.fixef.to_numpy(), rtol=1e-5, atol=1e-8)
