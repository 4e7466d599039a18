"""jaxlmm: linear mixed-effects models (lme4's lmer) with a JIT-compiled, autodiff profiled deviance.

Importing jaxlmm switches JAX to float64 (``jax_enable_x64``): lme4 parity needs it.
"""

import jax

jax.config.update("jax_enable_x64", True)

from .errors import DataError, FormulaError, JaxlmmError, ModelComparisonError  # noqa: E402
from .batch import BatchFit, fit_batch  # noqa: E402
from .bootstrap import pbtest  # noqa: E402
from .compare import anova  # noqa: E402
from .datasets import load_seed  # noqa: E402
from .formula import parse_formula  # noqa: E402
from .model import ConvergenceWarning, LinearMixedModel, lmer  # noqa: E402

__all__ = [
    "BatchFit", "fit_batch", "pbtest",
    "ConvergenceWarning", "DataError", "FormulaError", "JaxlmmError", "LinearMixedModel",
    "ModelComparisonError", "anova", "lmer", "load_seed", "parse_formula",
]
__version__ = "0.1.0"
