"""Exception classes: every input problem jaxlmm detects is a ``JaxlmmError`` (a ValueError)."""


class JaxlmmError(ValueError):
    """Base class of all errors jaxlmm raises about its input."""


class FormulaError(JaxlmmError):
    """The formula cannot be parsed; ``position`` is the 0-based character offset of the problem."""

    def __init__(self, message: str, formula: str = "", position: int | None = None):
        self.formula = formula
        self.position = position
        if position is not None and formula:
            message = f"{message} at position {position}:\n  {formula}\n  {' ' * position}^"
        super().__init__(message)


class DataError(JaxlmmError):
    """The data do not fit the formula (unknown column, bad values, too few observations, ...)."""


class ModelComparisonError(JaxlmmError):
    """Models given to ``anova``/``pbtest`` cannot be compared."""
