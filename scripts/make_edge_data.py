"""The large edge-case data set: 10,000 groups of 2-5 rows (~35,000 rows), written for R and the tests.

Usage (from the repository root): ``python scripts/make_edge_data.py``; then
``Rscript scripts/make_edge_fixtures.R`` fits it with lme4.  NumPy's generator with a fixed seed makes
the same file on every machine, so R and jaxlmm read identical data.
"""

from pathlib import Path

import numpy as np
import pandas as pd

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "data"


def many_groups(n_groups: int = 10_000, seed: int = 20261125) -> pd.DataFrame:
    """y = 1 + 0.5 x + b0_g + b1_g x + e with sd(b0) = 0.8, sd(b1) = 0.3, cor 0.2, sigma = 1."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 6, size=n_groups)
    g = np.repeat(np.arange(1, n_groups + 1), sizes)
    x = np.round(rng.normal(size=g.size), 4)
    cov = np.array([[0.64, 0.2 * 0.8 * 0.3], [0.2 * 0.8 * 0.3, 0.09]])
    b = rng.multivariate_normal(np.zeros(2), cov, size=n_groups)
    y = 1 + 0.5 * x + b[g - 1, 0] + b[g - 1, 1] * x + rng.normal(size=g.size)
    return pd.DataFrame({"y": np.round(y, 6), "x": x, "g": [f"g{k:05d}" for k in g]})


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    many_groups().to_csv(OUT / "edge_many_groups.csv", index=False)
