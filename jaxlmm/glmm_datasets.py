"""Many glmer data sets fitted together: ``fit_batch(formula, datasets=[...], family=...)`` and
``fit_batch(formula, data, by=..., family=...)``.

Each data set's GLMM design is built (:func:`~jaxlmm.glmm_design.build_glmm_design`, so bad input is
refused per data set before any compiled work) and padded exactly to its shape bucket
(:func:`~jaxlmm.glmm_kernel.glmm_problem`: rows of prior weight 0, empty levels).  Data sets of one
bucket run in vmapped lanes, every array of the design batched: each lane starts at (θ = 1, β of its GLM)
with the inverse of its central-difference Hessian (as a single fit), then takes the compiled BFGS steps
of :func:`jaxlmm.glmm_batch.refit_responses`' lanes (``BatchControl.budget`` per call, state carried
between calls, unfinished lanes first).  A lane whose criterion is not finite, or whose scaled gradient
is above ``converged_gtol`` when it stops, is counted as failed.  Results are in input order.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .buckets import DatasetFit, _dataset_ids, merged_buckets
from .design import ReBlock, Structure, theta_start
from .errors import DataError
from .family import Family
from .formula import Formula
from .glmm_batch import chunk_lanes, run_glmm_lanes
from .glmm_design import GlmmDesign, build_glmm_design
from .glmm_kernel import MIN_ROWS, GlmmProblem, column_signs, glm_start, glmm_problem, x_scale
from .laplace import criterion_constant, varying_criterion
from .optimize import BatchControl, BFGSState, Control, bfgs_steps, positive_inverse
from .pirls import MAX_DENSE
from .shapes import bucket, padded_structure


@partial(jax.jit, static_argnames=("structure", "family", "nagq"))
def _start_hessians(x0, data, scale, step, structure, family, nagq):
    """Each lane's Hessian of the criterion at its start by central differences of the exact gradient
    (steps ``step × scale``, as :func:`jaxlmm.optimize.difference_hessian`), symmetrised."""

    def one(x, lane, sc):
        def grad(y):
            return jax.grad(varying_criterion)(y, lane, structure, family, nagq)

        h = step * sc
        H = jax.vmap(lambda e, hi: (grad(x + e) - grad(x - e)) / (2.0 * hi))(jnp.diag(h), h).T
        return 0.5 * (H + H.T)

    return jax.vmap(one)(x0, data, scale)


@partial(jax.jit, static_argnames=("structure", "family", "nagq"))
def _dataset_lane_steps(state: BFGSState, data, scale, budget, gtol, structure, family, nagq) -> BFGSState:
    """Up to ``budget`` more BFGS steps per lane, each lane its own data set (every field of data batched)."""

    def one(s, lane, sc):
        return bfgs_steps(
            lambda x: jax.value_and_grad(varying_criterion)(x, lane, structure, family, nagq), s, budget, sc, gtol
        )

    return jax.vmap(one)(state, data, scale)


@partial(jax.jit, static_argnames=("family", "nagq"))
def _constants(data, family, nagq):
    return jax.vmap(lambda lane: criterion_constant(lane, family, nagq))(data)


def _fit_bucket(members, problems, gds, family, nagq, chunk_size, control):
    """x, criterion, converged and steps of the data sets ``members`` (one padded structure and size)."""
    structure = problems[members[0]].structure
    data = jax.tree_util.tree_map(lambda *a: np.stack([np.asarray(v) for v in a]), *(problems[k].data for k in members))
    B = len(members)
    scale = np.stack([x_scale(gds[k]) for k in members])
    x0 = np.stack([np.concatenate([theta_start(gds[k].design.structure), glm_start(gds[k])]) for k in members])
    width = chunk_lanes(data.y.shape[1], B, chunk_size)

    def lanes_of(idx):
        return jax.tree_util.tree_map(lambda a: jnp.asarray(a[idx]), data)

    hessian = np.zeros((B, x0.shape[1], x0.shape[1]))
    for first in range(0, B, width):
        lanes = np.arange(first, min(first + width, B))
        padded = np.concatenate([lanes, np.repeat(lanes[:1], width - lanes.size)])
        H = _start_hessians(
            jnp.asarray(x0[padded]), lanes_of(padded), jnp.asarray(scale[padded]), Control.hessian_step,
            structure, family, nagq,
        )  # fmt: skip
        hessian[lanes] = np.asarray(H)[: lanes.size]
    state = run_glmm_lanes(
        x0,
        positive_inverse(hessian),
        width,
        control.max_iter,
        lambda lanes, padded: _dataset_lane_steps(
            BFGSState(*(jnp.asarray(a[padded]) for a in lanes)), lanes_of(padded), jnp.asarray(scale[padded]),
            control.budget, control.gtol, structure, family, nagq,
        ),
    )  # fmt: skip
    x = state.theta * np.asarray(column_signs(jnp.asarray(state.theta), structure))
    f = state.f + np.asarray(_constants(jax.tree_util.tree_map(jnp.asarray, data), family, nagq))
    ok = np.isfinite(f) & np.all(np.isfinite(x), axis=1) & state.done
    ok &= np.max(np.abs(state.g * scale), axis=1) < control.converged_gtol
    return x, f, ok, state.steps


def _merged_problems(gds: list[GlmmDesign]) -> list[GlmmProblem]:
    """Each design padded to its lane bucket: the row buckets (:func:`~jaxlmm.shapes.bucket`) merged as
    :func:`jaxlmm.buckets.merged_buckets` merges level buckets (a bucket compiles two kernels, seconds each;
    padding costs microseconds per lane), and within a row bucket every block padded to the most levels
    any of its data sets has (a bucket per row size, not per (rows, levels))."""
    rows = np.array([bucket(gd.n, MIN_ROWS) for gd in gds])
    sizes = np.unique(rows)
    merged = dict(zip(sizes.tolist(), merged_buckets(sizes).tolist()))
    row_target = np.array([merged[r] for r in rows.tolist()])
    structures = [padded_structure(gd.design.structure) for gd in gds]
    target: dict[tuple, Structure] = {}
    for r, s in zip(row_target.tolist(), structures):
        key = (r, tuple((b.q, b.theta_index) for b in s.blocks))
        old = target.get(key, s)
        blocks = tuple(ReBlock(max(a.n_levels, b.n_levels), b.q, b.theta_index) for a, b in zip(old.blocks, s.blocks))
        target[key] = Structure(blocks, s.n_theta)
    return [
        glmm_problem(gd, rows=r, structure=target[(r, tuple((b.q, b.theta_index) for b in s.blocks))])
        for gd, r, s in zip(gds, row_target.tolist(), structures)
    ]


def fit_glmm_frames(
    parsed: Formula,
    frames: list[pd.DataFrame],
    names: list[str],
    labels: np.ndarray,
    by: str | None,
    family: Family,
    nagq: int = 1,
    chunk_size: int | None = None,
    weights: str | None = None,
    offset: str | None = None,
    control: BatchControl | None = None,
) -> DatasetFit:
    """glmer fits of ``parsed`` to each frame (``weights``/``offset``: column names of each), in bucketed
    vmapped lanes; ``criterion`` is lme4's −2 logLik of each, ``sigma`` 1."""
    control = control or BatchControl()
    gds: list[GlmmDesign] = []
    for k, data in enumerate(frames):
        try:
            gds.append(build_glmm_design(parsed, data, family, offset=offset, weights=weights))
        except DataError as err:
            raise DataError(f"{names[k]}: {err}") from None
        d, d0 = gds[-1].design, gds[0].design
        if d.fixef_names != d0.fixef_names:
            raise DataError(f"{names[k]} has fixed effects {d.fixef_names}, {names[0]} has {d0.fixef_names}")
        if d.structure.n_theta != d0.structure.n_theta:
            raise DataError(
                f"{names[k]} has {d.structure.n_theta} random-effects parameters, {names[0]} has {d0.structure.n_theta}"
            )
        if sum(b.n_levels * b.q for b in d.structure.blocks[1:]) > MAX_DENSE:
            raise DataError(f"{names[k]}: the random-effects blocks after the first exceed {MAX_DENSE} columns")
        if nagq > 1 and (len(d.structure.blocks) != 1 or d.structure.blocks[0].q != 1):
            raise DataError("nagq > 1 needs a single scalar random-effects term")
    problems = _merged_problems(gds)
    groups: dict[tuple, list[int]] = {}
    for k, pr in enumerate(problems):
        groups.setdefault((pr.structure, pr.data.y.shape[0]), []).append(k)
    B, n_theta = len(gds), gds[0].design.structure.n_theta
    x = np.zeros((B, n_theta + gds[0].design.p))
    crit, ok, steps = np.zeros(B), np.zeros(B, dtype=bool), np.zeros(B, dtype=np.int64)
    for members in groups.values():
        out = _fit_bucket(members, problems, gds, family, nagq, chunk_size, control)
        for arr, values in zip((x, crit, ok, steps), out):
            arr[members] = values
    return DatasetFit(
        x[:, :n_theta],
        x[:, n_theta:],
        np.ones(B),
        crit,
        ok,
        steps,
        list(gds[0].design.fixef_names),
        False,
        labels=labels,
        n_obs=np.array([gd.n for gd in gds]),
        n_dropped=np.array([gd.design.n_dropped for gd in gds]),
        n_levels=np.array([gd.design.structure.blocks[0].n_levels for gd in gds]),
        by=by,
    )


def fit_glmm_datasets(parsed: Formula, datasets, family: Family, **kwargs) -> DatasetFit:
    """glmer fits to each DataFrame of the list, results in input order (replicate = position)."""
    if isinstance(datasets, pd.DataFrame) or not isinstance(datasets, (list, tuple)):
        raise DataError("datasets must be a list of DataFrames (for one long frame use fit_batch(f, data, by=...))")
    if not datasets:
        raise DataError("no data sets given")
    labels = np.arange(len(datasets))
    return fit_glmm_frames(parsed, list(datasets), [f"data set {k}" for k in labels], labels, None, family, **kwargs)


def fit_glmm_by(parsed: Formula, data: pd.DataFrame, by: str, family: Family, **kwargs) -> DatasetFit:
    """glmer fits to each data set of one long frame, ``data[by]`` naming it (order of first appearance)."""
    if not isinstance(data, pd.DataFrame):
        raise DataError(f"data must be a pandas DataFrame, not {type(data).__name__}")
    if by not in data.columns:
        raise DataError(f"unknown column {by!r} given as by= (columns are: {', '.join(map(str, data.columns))})")
    if data.shape[0] == 0:
        raise DataError("the data have no rows")
    ids, labels = _dataset_ids(data[by])
    if (ids < 0).any():
        raise DataError(f"the column {by!r} given as by= is missing (NaN/None) in {int((ids < 0).sum())} rows")
    B = labels.size
    order = np.argsort(ids, kind="stable")
    frames = [data.iloc[rows] for rows in np.split(order, np.cumsum(np.bincount(ids, minlength=B))[:-1])]
    names = [f"data set {by} = {labels[k]}" for k in range(B)]
    return fit_glmm_frames(parsed, frames, names, labels, by, family, **kwargs)
