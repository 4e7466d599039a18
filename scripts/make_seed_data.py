"""Write jaxlmm/data/seed.csv (and tests/fixtures/data/seed2.csv): a seed-shaped data set (about 1,000 rows, 21 groups of very different
sizes, x from 0 to 80) simulated from y = 2 + 0.01 x + b0[g] + b1[g] x + e.

Run once: python scripts/make_seed_data.py (the CSV is committed; the numbers are fixed by the seed).
"""

from pathlib import Path

import numpy as np
import pandas as pd


def seed_shaped(rng: np.random.Generator, n_groups: int = 21, n_total: int = 1000) -> pd.DataFrame:
    weights = rng.lognormal(0.0, 1.0, n_groups)
    sizes = np.maximum(3, np.round(weights / weights.sum() * n_total)).astype(int)
    group = np.repeat(np.arange(1, n_groups + 1), sizes)
    x = rng.uniform(0, 80, group.size)
    b0 = rng.normal(0, 0.25, n_groups)
    b1 = rng.normal(0, 0.0015, n_groups)
    y = 2.0 + 0.01 * x + b0[group - 1] + b1[group - 1] * x + rng.normal(0, 0.25, group.size)
    return pd.DataFrame({"y": y.round(5), "x": x.round(4), "Group": [f"G{g:02d}" for g in group]})


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1]
    seed_shaped(np.random.default_rng(20261125)).to_csv(root / "jaxlmm/data/seed.csv", index=False)
    # a second, smaller seed-shaped set used only by the tests
    (root / "tests/fixtures/data").mkdir(parents=True, exist_ok=True)
    small = seed_shaped(np.random.default_rng(7), n_groups=15, n_total=600)
    small.to_csv(root / "tests/fixtures/data/seed2.csv", index=False)
