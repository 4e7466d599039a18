"""Random designs for a broad check of the optimum against lme4, written for R and the tests.

Usage (from the repository root): ``python scripts/make_random_cases.py``; then
``Rscript scripts/make_random_fixtures.R`` fits every case with three of lme4's optimisers and keeps the best
criterion.  Six data sets mix what makes optimisation hard: a covariate measured in units of 1e-3 or 1e4,
groups of one row, true variances of zero (singular fits), correlated slopes and factor slopes, crossed and
nested factors.  NumPy's generator with a fixed seed makes the same files on every machine.
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "random"
FORMULAS = [
    "y ~ x + (x + z | g)",
    "y ~ x + (f | g)",
    "y ~ x + (1 + x | g) + (1 + x | h)",
    "y ~ x + z + (1 | g) + (0 + x | h) + (1 | h)",
    "y ~ x + (0 + f | g)",
    "y ~ f + (1 | g:h) + (1 | h)",
]


def data_set(rng: np.random.Generator) -> pd.DataFrame:
    n_groups = int(rng.choice([8, 40, 120]))
    g = np.repeat(np.arange(n_groups), rng.integers(1, 8, n_groups))
    n = g.size
    x = np.round(rng.normal(size=n) * rng.choice([1e-3, 1.0, 1e4]), 8)
    z = np.round(rng.uniform(size=n), 6)
    f = rng.integers(0, 3, n)
    h = rng.integers(0, int(rng.integers(4, 30)), n)
    L = np.tril(rng.normal(size=(3, 3))) * rng.choice([0.0, 0.5, 2.0], size=3)  # some variances exactly 0
    b = rng.normal(size=(n_groups, 3)) @ L.T
    c = rng.normal(size=h.max() + 1) * rng.choice([0.0, 1.0])
    y = 2 + x / x.std() + b[g, 0] + b[g, 1] * x / x.std() + b[g, 2] * (f == 1) + c[h] + rng.normal(size=n)
    return pd.DataFrame(
        {
            "y": np.round(y, 6),
            "x": x,
            "z": z,
            "f": [f"f{v}" for v in f],
            "g": [f"g{v}" for v in g],
            "h": [f"h{v}" for v in h],
        }
    )


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261126)
    cases = []
    for k in range(6):
        data_set(rng).to_csv(OUT / f"random{k}.csv", index=False)
        for j, formula in enumerate(FORMULAS):
            cases.append({"data": f"random{k}", "formula": formula, "reml": bool((j + k) % 2)})
    (OUT / "cases.json").write_text(json.dumps(cases, indent=1))
