"""simr's ``extend``: a pilot model's design made larger, the pilot's parameters kept.

Green & MacLeod (2016), *SIMR: an R package for power analysis of generalized linear mixed models by
simulation*, Methods Ecol. Evol. 7(4); simr's ``R/extend.R`` (``extend.data.frame``) defines the rules
followed here:

* ``along="subj", n=40``: the extended data are ``n`` *slices*; slice j is the pilot's rows of the j-th
  value of ``along`` (values in order of first appearance, recycled when n exceeds them) with ``along``
  set to the j-th new label.  New labels are ``1, 2, …, n`` — or, for a categorical column (R's factor),
  ``a, b, …, z, a.1, …`` (R's ``make.unique(letters)``) — or the ``values`` given.  n below the pilot's
  count keeps the first n slices.
* ``within="subj + cond", n=5``: each row is numbered within its combination of the ``within`` columns
  (1, 2, … in row order); the extended data are ``n`` slices of those numbers recycled, so that every
  combination gets n rows (its own rows repeated in turn).

The result is a :class:`SimulationModel`: the extended data, their design with the pilot's formula, and
the pilot's (β, θ, σ), which :func:`jaxlmm.power` and :func:`jaxlmm.power_curve` simulate from.  As simr
does, extending along a factor used in the fixed effects is refused (it would change the coefficients).

:func:`first_levels` is simr's ``powerCurve`` subsetting: the rows of the first k values of ``along``.
"""

from __future__ import annotations

import functools
import re
import string
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .bootstrap import simulate
from .design import Design, build_design
from .errors import DataError
from .glmm_power import GlmmSimulationModel, glmm_pilot, is_glmm, rebuilt
from .params import Params
from .shapes import Problem, padded_problem


@dataclass(frozen=True)
class SimulationModel:
    """A design and the parameters to simulate from (simr's extended model): ``data`` the frame,
    ``design`` built from it with the pilot's formula, ``params`` the pilot's (β, θ, σ)."""

    data: pd.DataFrame
    design: Design
    params: Params

    @functools.cached_property
    def problem(self) -> Problem:
        return padded_problem(self.design)

    @property
    def formula(self) -> str:
        return self.design.formula.text

    @property
    def fixef(self) -> pd.Series:
        return pd.Series(self.params.beta, index=self.design.fixef_names, name="estimate")

    @property
    def theta(self) -> np.ndarray:
        return np.array(self.params.theta)

    @property
    def sigma(self) -> float:
        return float(self.params.sigma)

    @property
    def nobs(self) -> int:
        return self.design.n

    @property
    def ngroups(self) -> dict[str, int]:
        return {name: len(levels) for name, levels in zip(self.design.group_names, self.design.group_levels)}

    def extend(
        self, along: str | None = None, within: str | None = None, n: int | None = None, values=None
    ) -> SimulationModel:
        """:func:`extend` this model again."""
        return extend(self, along=along, within=within, n=n, values=values)

    def simulate(self, nsim: int = 1, seed: int | None = None) -> np.ndarray:
        """(n, nsim) responses simulated with the parameters (lme4's ``simulate``)."""
        return simulate(self.design, self.params, nsim, seed)

    def __repr__(self) -> str:
        return f"<SimulationModel {self.formula!r}: {self.nobs} obs, groups {self.ngroups}>"


def pilot_parts(model) -> tuple[Design, Params]:
    """The design and parameters of a fitted :class:`~jaxlmm.model.LinearMixedModel` or a
    :class:`SimulationModel`."""
    design, params = getattr(model, "design", None), getattr(model, "params", None)
    if not isinstance(design, Design) or not isinstance(params, Params):
        raise DataError(f"expected a fitted model (jaxlmm.lmer) or a jaxlmm.extend result, not {type(model).__name__}")
    return design, params


def pilot_data(model) -> pd.DataFrame:
    """The frame the model's design was built from (simr's ``getData``)."""
    design, _ = pilot_parts(model)
    if design.data is None:
        raise DataError("the model does not hold its data (fit it with jaxlmm.lmer)")
    return design.data


def _make_unique(names: list[str]) -> list[str]:
    """R's ``make.unique``: later duplicates get ``.1``, ``.2``, … (skipping names already used)."""
    seen, out = set(names), []
    counts: dict[str, int] = {}
    first = set()
    for name in names:
        if name not in first:
            first.add(name)
            out.append(name)
            continue
        k = counts.get(name, 0)
        while True:
            k += 1
            candidate = f"{name}.{k}"
            if candidate not in seen:
                break
        counts[name] = k
        seen.add(candidate)
        out.append(candidate)
    return out


def _check_count(n, name: str) -> int:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise DataError(f"{name} must be a positive integer, not {n!r}")
    return int(n)


def extend_frame(
    data: pd.DataFrame, along: str | None = None, within: str | None = None, n: int | None = None, values=None
) -> pd.DataFrame:
    """simr's ``extend`` of a data frame (see the module's docstring)."""
    if (along is None) == (within is None):
        raise DataError("give one of along= (a column to add levels to) or within= (columns to add rows within)")
    if values is not None:
        values = list(values)
        if not values or len(set(values)) != len(values):
            raise DataError("values must be distinct labels")
        if n is not None and n != len(values):
            raise DataError(f"n = {n} but {len(values)} values given")
    elif n is None:
        raise DataError("give the new number of levels n= (or their labels, values=)")
    n = _check_count(n if values is None else len(values), "n")
    if within is not None:
        columns = [c.strip() for c in re.split(r"[+,]", within) if c.strip()]
        missing = [c for c in columns if c not in data.columns]
        if not columns or missing:
            raise DataError(f"within= names columns the data lack: {missing or within!r}")
        if values is not None:
            raise DataError("values= goes with along=, not within=")
        replicate = data.groupby(columns, sort=False, dropna=False).cumcount() + 1
        old = list(pd.unique(replicate))
        old = [old[j % len(old)] for j in range(n)]
        positions = np.concatenate([np.flatnonzero(replicate.to_numpy() == v) for v in old])
        return data.iloc[positions].reset_index(drop=True)
    if along not in data.columns:
        raise DataError(f"along= names a column the data lack: {along!r}")
    column = data[along]
    categorical = isinstance(column.dtype, pd.CategoricalDtype)
    if values is None:
        values = (
            _make_unique([string.ascii_lowercase[j % 26] for j in range(n)]) if categorical else list(range(1, n + 1))
        )
    present = list(pd.unique(column.dropna()))
    old = [present[j % len(present)] for j in range(n)]
    positions = {v: np.flatnonzero((column == v).to_numpy()) for v in present}
    out = data.iloc[np.concatenate([positions[v] for v in old])].reset_index(drop=True)
    labels = np.repeat(np.array(values, dtype=object), [positions[v].size for v in old])
    if categorical or any(isinstance(v, str) for v in values):
        out[along] = pd.Categorical(labels, categories=values) if categorical else labels
    else:
        out[along] = labels.astype(np.asarray(values).dtype)
    return out


def extend(
    model, along: str | None = None, within: str | None = None, n: int | None = None, values=None
) -> SimulationModel:
    """simr's ``extend(model, along=, within=, n=, values=)``: the model's data extended (rules in the
    module's docstring), its design rebuilt with the same formula, and the model's parameters kept.  A
    glmer (or its extension) gives a :class:`~jaxlmm.glmm_power.GlmmSimulationModel`: the glmer design of
    the extended data with the pilot's (θ, β)."""
    if is_glmm(model):
        start, x = glmm_pilot(model)
        if start.design.data is None:
            raise DataError("the glmer does not hold its data (fit it with jaxlmm.glmer)")
        data = extend_frame(start.design.data.loc[start.design.rows], along, within, n, values)
        return GlmmSimulationModel(rebuilt(start, data), x)
    design, params = pilot_parts(model)
    data = extend_frame(pilot_data(model), along, within, n, values)
    return _with_data(design, params, data)


def _with_data(design: Design, params: Params, data: pd.DataFrame) -> SimulationModel:
    new = build_design(design.formula, data)
    if new.fixef_names != design.fixef_names:
        raise DataError(
            f"the new design's fixed effects ({', '.join(new.fixef_names)}) are not the model's "
            f"({', '.join(design.fixef_names)}): extend along a grouping factor, not a fixed-effect factor "
            "(simr: 'Cannot extend along a fixed factor')"
        )
    if new.structure.n_theta != design.structure.n_theta:
        raise DataError("the new design's random effects differ from the model's")
    return SimulationModel(data, new, params)


def first_levels(data: pd.DataFrame, along: str, k: int) -> np.ndarray:
    """Positions of the rows whose ``along`` is among its first k values in order of appearance (simr's
    ``powerCurve``: ``x %in% head(unique(x), k)``)."""
    if along not in data.columns:
        raise DataError(f"along= names a column the data lack: {along!r}")
    column = data[along]
    present = pd.unique(column.dropna())
    if not 1 <= k <= len(present):
        raise DataError(
            f"{along!r} has {len(present)} levels, not {k}: extend the model first (jaxlmm.extend(model, "
            f"along={along!r}, n={k}))"
        )
    return np.flatnonzero(column.isin(present[:k]).to_numpy())
