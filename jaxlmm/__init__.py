"""jaxlmm: linear mixed-effects models (lme4's lmer) with a JIT-compiled, autodiff profiled deviance.

Importing jaxlmm switches JAX to float64 (``jax_enable_x64``), which lme4 parity needs, and turns on
JAX's persistent compilation cache in a user cache folder (``JAXLMM_CACHE_DIR=""`` turns it off).
"""

import jax

jax.config.update("jax_enable_x64", True)

from .cache import count_executables, default_folder, use_compilation_cache

use_compilation_cache(default_folder())
count_executables()

from .api import anova, fit_batch, glmer, glmer_power, krtest, lmer, pbtest, power, power_curve
from .batch import BatchFit
from .datasets import load_seed
from .errors import DataError, FormulaError, JaxlmmError, ModelComparisonError
from .extend import SimulationModel, extend
from .formula import parse_formula
from .glmm import GeneralizedLinearMixedModel
from .model import ConvergenceWarning, LinearMixedModel
from .params import Params

__all__ = [
    "BatchFit",
    "ConvergenceWarning",
    "DataError",
    "FormulaError",
    "GeneralizedLinearMixedModel",
    "JaxlmmError",
    "LinearMixedModel",
    "ModelComparisonError",
    "Params",
    "SimulationModel",
    "anova",
    "extend",
    "fit_batch",
    "glmer",
    "glmer_power",
    "krtest",
    "lmer",
    "load_seed",
    "parse_formula",
    "pbtest",
    "power",
    "power_curve",
]
__version__ = "0.1.0"
