"""jaxlmm: linear mixed-effects models (lme4's lmer) with a JIT-compiled, autodiff profiled deviance.

Importing jaxlmm switches JAX to float64 (``jax_enable_x64``): lme4 parity needs it.
"""

import jax

jax.config.update("jax_enable_x64", True)

from .batch import BatchFit, fit_batch
from .bootstrap import pbtest
from .compare import anova
from .datasets import load_seed
from .errors import DataError, FormulaError, JaxlmmError, ModelComparisonError
from .formula import parse_formula
from .model import ConvergenceWarning, LinearMixedModel, lmer

__all__ = [
    "BatchFit",
    "ConvergenceWarning",
    "DataError",
    "FormulaError",
    "JaxlmmError",
    "LinearMixedModel",
    "ModelComparisonError",
    "anova",
    "fit_batch",
    "lmer",
    "load_seed",
    "parse_formula",
    "pbtest",
]
__version__ = "0.1.0"
