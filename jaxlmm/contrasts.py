"""R's contrasts: how a factor with L levels becomes L - 1 columns of a model matrix.

``contr.treatment`` (R's default for unordered factors; columns named by the levels 2..L),
``contr.sum`` and ``contr.helmert`` (columns ``1..L-1``), ``contr.poly`` (R's default for ordered factors:
orthonormal polynomials in the scores 1..L, columns ``.L``, ``.Q``, ``.C``, ``^4``, ...), or a user's
matrix (columns named by its column names, else ``1..``).  A model-matrix column is the factor's name
followed by the contrast's column name (``f.L``, ``f1``, ``f2``), as R's ``model.matrix`` pastes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import DataError

NAMES = ("contr.treatment", "contr.sum", "contr.helmert", "contr.poly")


@dataclass(frozen=True)
class Contrast:
    """A contrast matrix (L levels x k columns, nested tuples so that it hashes) and its column suffixes."""

    matrix: tuple[tuple[float, ...], ...]
    suffixes: tuple[str, ...]

    @property
    def array(self) -> np.ndarray:
        return np.array(self.matrix, dtype=float).reshape(len(self.matrix), len(self.suffixes))


def contr_poly(n_levels: int) -> np.ndarray:
    """R's ``contr.poly(n)``: the orthonormal polynomials of degree 1..n-1 in the scores 1..n (QR of the
    Vandermonde matrix of the centred scores, each column scaled to unit length)."""
    scores = np.arange(1, n_levels + 1, dtype=float)
    Q, R = np.linalg.qr(np.vander(scores - scores.mean(), n_levels, increasing=True))
    Z = Q * np.diag(R)
    Z = Z / np.sqrt(np.sum(Z**2, axis=0))
    return Z[:, 1:]


def poly_suffixes(k: int) -> tuple[str, ...]:
    """``.L``, ``.Q``, ``.C``, ``^4``, ``^5``, ... (R's ``make.poly`` names)."""
    return tuple([".L", ".Q", ".C"][:k] + [f"^{d}" for d in range(4, k + 1)])


def named_contrast(name: str, levels: tuple[str, ...]) -> Contrast:
    """The contrast R's function ``name`` gives for these levels."""
    L = len(levels)
    if name == "contr.treatment":
        return Contrast(tuple(map(tuple, np.eye(L)[:, 1:].tolist())), tuple(levels[1:]))
    if name == "contr.sum":
        m = np.vstack([np.eye(L - 1), -np.ones((1, L - 1))])
        return Contrast(tuple(map(tuple, m.tolist())), tuple(str(j) for j in range(1, L)))
    if name == "contr.helmert":
        m = np.zeros((L, L - 1))
        for j in range(L - 1):
            m[: j + 1, j] = -1.0
            m[j + 1, j] = j + 1
        return Contrast(tuple(map(tuple, m.tolist())), tuple(str(j) for j in range(1, L)))
    if name == "contr.poly":
        return Contrast(tuple(map(tuple, contr_poly(L).tolist())), poly_suffixes(L - 1))
    raise DataError(f"unknown contrast {name!r}: use one of {', '.join(NAMES)}, or a matrix")


def default_contrast(levels: tuple[str, ...], ordered: bool) -> Contrast:
    """R's ``options(contrasts = c("contr.treatment", "contr.poly"))``."""
    return named_contrast("contr.poly" if ordered else "contr.treatment", levels)


def user_contrast(variable: str, spec, levels: tuple[str, ...]) -> Contrast:
    """A ``contrasts=`` entry: a contrast's name, or a matrix (NumPy array or DataFrame, one row per
    level) whose column names, when it has them, name the columns."""
    if isinstance(spec, str):
        return named_contrast(spec, levels)
    if isinstance(spec, pd.DataFrame):
        matrix, suffixes = spec.to_numpy(dtype=float), tuple(str(c) for c in spec.columns)
    else:
        try:
            matrix = np.asarray(spec, dtype=float)
        except (TypeError, ValueError):
            raise DataError(f"contrasts[{variable!r}] must be a contrast's name or a numeric matrix") from None
        if matrix.ndim == 1:
            matrix = matrix[:, None]
        suffixes = tuple(str(j) for j in range(1, matrix.shape[1] + 1))
    if matrix.ndim != 2 or matrix.shape[0] != len(levels):
        raise DataError(
            f"contrasts[{variable!r}] has {matrix.shape[0]} rows; factor {variable!r} has {len(levels)} levels"
        )
    if not np.all(np.isfinite(matrix)):
        raise DataError(f"contrasts[{variable!r}] has non-finite values")
    if matrix.shape[1] != len(levels) - 1:
        raise DataError(
            f"contrasts[{variable!r}] has {matrix.shape[1]} columns; give {len(levels) - 1} "
            f"(the levels of {variable!r} less one)"
        )
    if np.linalg.matrix_rank(np.column_stack([np.ones(len(levels)), matrix])) < matrix.shape[1] + 1:
        raise DataError(f"contrasts[{variable!r}]: its columns and a column of ones are linearly dependent")
    return Contrast(tuple(map(tuple, matrix.tolist())), suffixes)
