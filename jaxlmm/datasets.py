"""Data sets shipped with jaxlmm."""

from importlib.resources import files

import pandas as pd


def load_seed() -> pd.DataFrame:
    """The seed-shaped example: about 1,000 rows of ``y``, ``x`` and ``Group`` (21 groups of very
    different sizes), simulated by ``scripts/make_seed_data.py``."""
    return pd.read_csv(files("jaxlmm").joinpath("data/seed.csv"))
