"""Shared helpers: lme4 reference fixtures (made by scripts/make_lme4_fixtures.R) and cached fits."""

import json
import os
import warnings
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd

os.environ["JAXLMM_CACHE_DIR"] = ""  # no persistent compilation cache in the test process (jaxlmm/cache.py)

import jaxlmm
from jaxlmm.datasets import load_seed

FIXTURES = Path(__file__).parent / "fixtures"
CASES = sorted(p.stem for p in (FIXTURES / "lme4").glob("*.json") if not p.stem.startswith("anova_"))
FACTORS_CODED_BY_NUMBERS = {"cake": ["temperature"], "Assay": ["dilut"]}
ANOVA_CASES = sorted(p.stem[len("anova_") :] for p in (FIXTURES / "lme4").glob("anova_*.json"))


def load_data(name: str) -> pd.DataFrame:
    if name == "seed":
        return load_seed()
    data = pd.read_csv(FIXTURES / "data" / f"{name}.csv")
    for column in FACTORS_CODED_BY_NUMBERS.get(name, ()):  # factors in R, numbers in the CSV
        data[column] = pd.Categorical(data[column])
    return data


@cache
def reference(name: str) -> dict:
    fx = json.loads((FIXTURES / "lme4" / f"{name}.json").read_text())
    if "theta" in fx:
        fx["theta"] = np.atleast_1d(np.asarray(fx["theta"], dtype=float))
        fx["jaxlmm_theta"] = np.atleast_1d(np.asarray(fx["jaxlmm_theta"], dtype=float))
        fx["vcov"] = np.atleast_2d(np.asarray(fx["vcov"], dtype=float))
        fx["vcov_names"] = list(np.atleast_1d(fx["vcov_names"]))
    return fx


@cache
def fitted(name: str) -> jaxlmm.LinearMixedModel:
    fx = reference(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return jaxlmm.lmer(fx["formula"], load_data(fx["data"]), reml=fx["REML"])
