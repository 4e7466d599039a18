"""Random GLMM designs for a broad check of glmer against lme4, written for R and the tests.

Usage (from the repository root): ``python scripts/make_random_glmm_cases.py``; then ``Rscript
scripts/make_random_glmm_fixtures.R`` fits every case with several of lme4's optimisers and keeps the best
criterion. The cases mix what makes a glmer hard: every binomial response form (0/1 numbers, booleans, a
two-level factor, ``cbind`` with varying trials, proportions with ``weights=``), Poisson counts with
``offset(log(t))`` and with ``offset=``, crossed and nested grouping factors, correlated and uncorrelated
random slopes, a factor fixed effect with an interaction, covariates in units of 1e-3 or 1e3, true variances
of zero (singular fits), near-separation, groups of one or two rows, cbind rows without trials, Poisson prior
weights, rows with missing values, and scalar single-term models with ``nAGQ = 25``. Each case has a
``newdata`` frame of fitted rows and rows with unseen grouping levels (predicted with ``allow_new_levels``).
NumPy's generator with a fixed seed makes the same files on every machine.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "glmm_random"


def logistic(eta):
    return 1.0 / (1.0 + np.exp(-eta))


def grouped(rng, n_groups, low, high, prefix="g"):
    """Group labels with ``low``..``high`` rows per group (varying group sizes)."""
    sizes = rng.integers(low, high + 1, n_groups)
    return np.repeat([f"{prefix}{k:02d}" for k in range(n_groups)], sizes)


def effects(rng, labels, sd):
    levels, codes = np.unique(labels, return_inverse=True)
    return (rng.normal(size=len(levels)) * sd)[codes]


def crossed(rng, n_subj, n_item, keep=1.0):
    rows = [(f"s{s:02d}", f"i{i:02d}") for s in range(n_subj) for i in range(n_item)]
    d = pd.DataFrame(rows, columns=["subj", "item"])
    return d[rng.random(len(d)) < keep].reset_index(drop=True)


def nested(rng, n_a, n_b, low, high):
    """Groups b nested in a (b's labels repeat across a's: only ``a:b`` or ``a/b`` identifies them)."""
    rows = []
    for a in range(n_a):
        for b in range(n_b):
            rows += [(f"a{a}", f"b{b}")] * int(rng.integers(low, high + 1))
    return pd.DataFrame(rows, columns=["a", "b"])


def case_binary_crossed(rng):
    d = crossed(rng, 24, 14, keep=0.85)
    d["cond"] = np.where(rng.random(len(d)) < 0.5, "ctl", "trt")
    d["x"] = np.round(rng.normal(size=len(d)) * 1e3, 2)  # a covariate in units of 1e3
    eta = 0.4 + 0.7 * (d.cond == "trt") + 4e-4 * d.x + effects(rng, d.subj, 0.9) + effects(rng, d.item, 0.5)
    d["y"] = (rng.random(len(d)) < logistic(eta)).astype(int)
    return d, "y ~ cond + x + (1 | subj) + (1 | item)", {"family": "binomial", "factors": ["subj", "item", "cond"]}


def case_boolean_slopes(rng):
    d = pd.DataFrame({"g": grouped(rng, 30, 4, 12)})
    d["x"] = np.round(rng.normal(size=len(d)), 3)
    u0, u1 = effects(rng, d.g, 1.0), effects(rng, d.g, 0.6)
    eta = -0.3 + 0.8 * d.x + u0 + (0.5 * u0 + u1) * d.x  # correlated intercepts and slopes
    d["y"] = rng.random(len(d)) < logistic(eta)
    return d, "y ~ x + (1 + x | g)", {"family": "binomial", "factors": ["g"]}


def case_factor_response_nested(rng):
    d = nested(rng, 10, 4, 3, 8)
    d["f"] = rng.choice(["lo", "mid", "hi"], size=len(d))
    eta = 0.2 + 0.6 * (d.f == "mid") - 0.5 * (d.f == "hi") + effects(rng, d.a, 0.8) + effects(rng, d.a + d.b, 0.6)
    d["y"] = np.where(rng.random(len(d)) < logistic(eta), "yes", "no")  # first level "no" = failure
    return d, "y ~ f + (1 | a/b)", {"family": "binomial", "factors": ["a", "b", "f", "y"]}


def case_cbind_interaction(rng):
    d = pd.DataFrame({"g": grouped(rng, 25, 2, 6)})
    d["x"] = np.round(rng.normal(size=len(d)) * 1e-3, 7)  # a covariate in units of 1e-3
    d["f"] = rng.choice(["A", "B"], size=len(d))
    d["n"] = rng.integers(1, 15, len(d))
    eta = -0.6 + 500 * d.x + 0.4 * (d.f == "B") - 300 * d.x * (d.f == "B") + effects(rng, d.g, 0.7)
    d["s"] = rng.binomial(d.n, logistic(eta))
    return d, "cbind(s, n - s) ~ x * f + (1 | g)", {"family": "binomial", "factors": ["g", "f"]}


def case_proportion_uncorrelated(rng):
    d = pd.DataFrame({"g": grouped(rng, 20, 3, 9)})
    d["x"] = np.round(rng.uniform(-1, 1, len(d)), 3)
    d["trials"] = rng.integers(2, 20, len(d))
    eta = 0.3 - 0.9 * d.x + effects(rng, d.g, 0.5) + effects(rng, d.g, 0.7) * d.x
    d["p"] = rng.binomial(d.trials, logistic(eta)) / d.trials
    return d, "p ~ x + (x || g)", {"family": "binomial", "factors": ["g"], "weights": "trials"}


def case_poisson_offset_crossed(rng):
    d = crossed(rng, 18, 12, keep=0.9)
    d["x"] = np.round(rng.normal(size=len(d)), 3)
    d["t"] = np.round(rng.uniform(0.2, 5.0, len(d)), 2)
    eta = np.log(d.t) + 0.5 + 0.3 * d.x + effects(rng, d.subj, 0.5) + effects(rng, d.item, 0.3)
    d["count"] = rng.poisson(np.exp(eta))
    return d, "count ~ x + offset(log(t)) + (1 | subj) + (1 | item)", {"family": "poisson", "factors": ["subj", "item"]}


def case_poisson_offset_argument_nested(rng):
    d = nested(rng, 8, 5, 2, 6)
    d["f"] = rng.choice(["u", "v"], size=len(d))
    d["logt"] = np.round(np.log(rng.uniform(1, 10, len(d))), 5)
    eta = d.logt - 1.0 + 0.4 * (d.f == "v") + effects(rng, d.a, 0.6) + effects(rng, d.a + d.b, 0.4)
    d["count"] = rng.poisson(np.exp(eta))
    return d, "count ~ f + (1 | a) + (1 | a:b)", {"family": "poisson", "factors": ["a", "b", "f"], "offset": "logt"}


def case_poisson_singular_slope(rng):
    d = pd.DataFrame({"g": grouped(rng, 15, 5, 15)})
    d["x"] = np.round(rng.normal(size=len(d)) * 1e3, 1)  # true slope variance 0
    d["count"] = rng.poisson(np.exp(1.0 + 2e-4 * d.x + effects(rng, d.g, 0.4)))
    return d, "count ~ x + (1 + x | g)", {"family": "poisson", "factors": ["g"]}


def case_binary_zero_variance(rng):
    d = pd.DataFrame({"g": grouped(rng, 20, 3, 10)})
    d["h"] = rng.choice([f"h{k}" for k in range(8)], size=len(d))
    d["x"] = np.round(rng.normal(size=len(d)), 3)
    d["y"] = (rng.random(len(d)) < logistic(0.2 + 0.7 * d.x + effects(rng, d.g, 0.8))).astype(int)  # h: no effect
    return d, "y ~ x + (1 | g) + (1 | h)", {"family": "binomial", "factors": ["g", "h"]}


def case_near_separation(rng):
    d = pd.DataFrame({"g": grouped(rng, 30, 2, 5)})
    d["x"] = np.round(rng.normal(size=len(d)), 3)
    u = effects(rng, d.g, 2.5)  # large group effects: many groups all 0 or all 1
    d["y"] = (rng.random(len(d)) < logistic(-0.5 + 2.5 * d.x + u)).astype(int)
    return d, "y ~ x + (1 | g)", {"family": "binomial", "factors": ["g"]}


def case_poisson_tiny_groups(rng):
    d = pd.DataFrame({"g": grouped(rng, 60, 1, 3)})  # groups of one to three rows
    d["x"] = np.round(rng.normal(size=len(d)) * 1e-3, 7)
    d["f"] = rng.choice(["p", "q", "r"], size=len(d))
    eta = 0.8 + 300 * d.x + 0.3 * (d.f == "q") - 0.4 * (d.f == "r") + effects(rng, d.g, 0.5)
    d["count"] = rng.poisson(np.exp(eta))
    return d, "count ~ x + f + (1 | g)", {"family": "poisson", "factors": ["g", "f"]}


def case_binary_crossed_slope(rng):
    d = crossed(rng, 20, 10, keep=0.9)
    d["cond"] = np.where((np.arange(len(d)) + rng.integers(0, 2, len(d))) % 2 == 0, "a", "b")
    b = d.cond == "b"
    eta = 0.5 + 0.5 * b + effects(rng, d.subj, 0.7) + effects(rng, d.subj, 0.5) * b + effects(rng, d.item, 0.4)
    d["y"] = (rng.random(len(d)) < logistic(eta)).astype(int)
    return d, "y ~ cond + (1 + cond | subj) + (1 | item)", {"family": "binomial", "factors": ["subj", "item", "cond"]}


def case_agq_binary(rng):
    d = pd.DataFrame({"g": grouped(rng, 40, 2, 8)})
    d["x"] = np.round(rng.normal(size=len(d)), 3)
    d["y"] = (rng.random(len(d)) < logistic(-0.4 + 0.9 * d.x + effects(rng, d.g, 1.5))).astype(int)
    return d, "y ~ x + (1 | g)", {"family": "binomial", "factors": ["g"], "nagq": 25}


def case_agq_cbind(rng):
    d = pd.DataFrame({"g": grouped(rng, 15, 3, 6)})
    d["f"] = rng.choice(["c1", "c2", "c3"], size=len(d))
    d["n"] = rng.integers(1, 25, len(d))
    eta = -1.0 + 0.5 * (d.f == "c2") + 1.0 * (d.f == "c3") + effects(rng, d.g, 0.8)
    d["s"] = rng.binomial(d.n, logistic(eta))
    return d, "cbind(s, n - s) ~ f + (1 | g)", {"family": "binomial", "factors": ["g", "f"], "nagq": 25}


def case_agq_poisson_offset(rng):
    d = pd.DataFrame({"g": grouped(rng, 25, 2, 10)})
    d["x"] = np.round(rng.normal(size=len(d)) * 1e3, 1)
    d["t"] = np.round(rng.uniform(0.5, 3.0, len(d)), 2)
    d["count"] = rng.poisson(d.t * np.exp(0.1 - 3e-4 * d.x + effects(rng, d.g, 0.7)))
    return d, "count ~ x + offset(log(t)) + (1 | g)", {"family": "poisson", "factors": ["g"], "nagq": 25}


def case_agq_proportion_small_variance(rng):
    d = pd.DataFrame({"g": grouped(rng, 12, 4, 10)})
    d["x"] = np.round(rng.uniform(0, 1, len(d)), 3)
    d["trials"] = rng.integers(1, 8, len(d))
    d["p"] = rng.binomial(d.trials, logistic(0.5 - 1.0 * d.x + effects(rng, d.g, 0.05))) / d.trials
    return d, "p ~ x + (1 | g)", {"family": "binomial", "factors": ["g"], "weights": "trials", "nagq": 25}


def case_cbind_zero_trials(rng):
    d = pd.DataFrame({"g": grouped(rng, 20, 2, 6)})
    d["x"] = np.round(rng.normal(size=len(d)), 3)
    d["n"] = rng.integers(0, 6, len(d))  # some rows with no trials
    d["s"] = rng.binomial(d.n, logistic(0.2 + 0.5 * d.x + effects(rng, d.g, 0.8)))
    return d, "cbind(s, n - s) ~ x + (1 | g)", {"family": "binomial", "factors": ["g"]}


def case_factor_slopes(rng):
    d = pd.DataFrame({"g": grouped(rng, 25, 6, 14)})
    d["f"] = rng.choice(["a", "b", "c"], size=len(d))
    b = d.f == "b"
    eta = 0.3 + 0.5 * b - 0.4 * (d.f == "c") + effects(rng, d.g, 0.7) + effects(rng, d.g, 0.5) * b
    d["y"] = (rng.random(len(d)) < logistic(eta)).astype(int)
    return d, "y ~ f + (0 + f | g)", {"family": "binomial", "factors": ["g", "f"]}


def case_poisson_both_offsets_nested(rng):
    d = nested(rng, 6, 4, 3, 7)
    d["t"] = np.round(rng.uniform(0.5, 4, len(d)), 2)
    d["o2"] = np.round(rng.normal(size=len(d)) * 0.3, 3)
    d["x"] = np.round(rng.normal(size=len(d)), 3)
    eta = np.log(d.t) + d.o2 + 0.3 + 0.2 * d.x + effects(rng, d.a, 0.5) + effects(rng, d.a + d.b, 0.01)
    d["count"] = rng.poisson(np.exp(eta))
    return d, "count ~ x + offset(log(t)) + (1 | a/b)", {"family": "poisson", "factors": ["a", "b"], "offset": "o2"}


def case_poisson_weights_missing(rng):
    d = pd.DataFrame({"g": grouped(rng, 20, 3, 8)})
    d["x"] = np.round(rng.normal(size=len(d)), 3)
    d["w"] = rng.integers(1, 4, len(d)).astype(float)  # prior weights
    d["count"] = rng.poisson(np.exp(1.0 + 0.3 * d.x + effects(rng, d.g, 0.5))).astype(float)
    d.loc[rng.choice(len(d), 5, replace=False), "x"] = np.nan  # rows lme4 drops
    return d, "count ~ x + (1 | g)", {"family": "poisson", "factors": ["g"], "weights": "w"}


def case_cbind_uncorrelated_scaled(rng):
    d = pd.DataFrame({"g": grouped(rng, 20, 4, 9)})
    d["x"] = np.round(rng.normal(size=len(d)) * 1e3, 1)
    d["z"] = np.round(rng.normal(size=len(d)), 3)
    d["n"] = rng.integers(1, 10, len(d))
    eta = -0.2 + 5e-4 * d.x + 0.4 * d.z + effects(rng, d.g, 0.6) + effects(rng, d.g, 3e-4) * d.x
    d["s"] = rng.binomial(d.n, logistic(eta))
    return d, "cbind(s, n - s) ~ x + z + (x + z || g)", {"family": "binomial", "factors": ["g"]}


CASES = [
    case_binary_crossed,
    case_boolean_slopes,
    case_factor_response_nested,
    case_cbind_interaction,
    case_proportion_uncorrelated,
    case_poisson_offset_crossed,
    case_poisson_offset_argument_nested,
    case_poisson_singular_slope,
    case_binary_zero_variance,
    case_near_separation,
    case_poisson_tiny_groups,
    case_binary_crossed_slope,
    case_agq_binary,
    case_agq_cbind,
    case_agq_poisson_offset,
    case_agq_proportion_small_variance,
    case_cbind_zero_trials,
    case_factor_slopes,
    case_poisson_both_offsets_nested,
    case_poisson_weights_missing,
    case_cbind_uncorrelated_scaled,
]


def new_rows(rng, d: pd.DataFrame, groups: list[str]) -> pd.DataFrame:
    """Five fitted rows and two rows whose grouping levels were not in the fit."""
    d = d.dropna().reset_index(drop=True)
    new = d.iloc[np.sort(rng.choice(len(d), 5, replace=False))].copy()
    unseen = d.iloc[rng.choice(len(d), 2, replace=False)].copy()
    for g in groups:
        unseen[g] = [f"new_{g}{k}" for k in range(len(unseen))]
    return pd.concat([new, unseen], ignore_index=True)


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261127)
    cases = []
    for make in CASES:
        name = make.__name__.removeprefix("case_")
        d, formula, spec = make(rng)
        d = d.reset_index(drop=True)
        assert len(d) <= 600, (name, len(d))
        groups = [g for g in ("g", "h", "subj", "item", "a", "b") if g in d.columns]
        d.to_csv(OUT / f"{name}.csv", index=False)
        new_rows(rng, d, groups).to_csv(OUT / f"{name}_new.csv", index=False)
        cases.append(
            {
                "name": name,
                "formula": formula,
                "family": spec["family"],
                "nagq": spec.get("nagq", 1),
                "factors": spec["factors"],
                "weights": spec.get("weights"),
                "offset": spec.get("offset"),
                "n": len(d),
            }
        )
    (OUT / "cases.json").write_text(json.dumps(cases, indent=1))
