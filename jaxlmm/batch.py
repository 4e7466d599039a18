"""Batched refits: B response vectors sharing one design, fitted in one compiled, vmapped call.

The fixed-design cross-products are computed once; per replicate only the y-dependent pieces
(``A1y``, ``A2y``, ``AXy``, ``yy``) differ, so a batch is a batch of those arrays.  Each lane runs BFGS
with exact autodiff gradients, started from the fitted model's Hessian, inside a ``lax.while_loop``
with a per-lane done flag.  theta is optimised without bounds: the criterion is even
in each column of Λ (flipping a column's sign changes nothing), so the bound ``θ_ii >= 0`` is restored
afterwards by flipping the columns whose diagonal came out negative, and the saddle at ``θ_ii = 0`` is
never a stopping point.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .cache import bound_executables
from .crossprod import CrossProducts, design_response_products
from .design import Structure, theta_scale
from .deviance import beta_hat, canonical_theta, factorize, profiled_deviance, sigma_hat
from .errors import DataError
from .hosts import gather
from .kernel import criterion_hessian
from .optimize import BatchControl, BFGSState, bfgs_steps, positive_inverse, small_gradient
from .shapes import BATCH_FINE_FROM, Problem, pad_response_products, padded_problem

Y_FIELDS = ("A1y", "A2y", "AXy", "yy")
CP_AXES = CrossProducts(*(0 if f in Y_FIELDS else None for f in CrossProducts._fields))


@partial(jax.jit, static_argnames=("structure", "cp_axes", "control"))
def _bfgs_lanes(
    state: BFGSState,
    scale,
    cp: CrossProducts,
    structure: Structure,
    reml,
    cp_axes: CrossProducts,
    control: BatchControl,
) -> tuple[BFGSState, jnp.ndarray]:
    """``control.budget`` more BFGS steps in every lane, and whether each lane's gradient is small enough
    to count as converged."""

    def lane(s, sc, c):
        value_and_grad = jax.value_and_grad(lambda u: profiled_deviance(u, c, structure, reml))
        s = bfgs_steps(value_and_grad, s, control.budget, sc, control.gtol)
        return s, jnp.isfinite(s.f) & small_gradient(s.g, sc, control.converged_gtol)

    return jax.vmap(lane, in_axes=(0, 0, cp_axes))(state, scale, cp)


def start_inverse_hessian(problem: Problem, theta: np.ndarray, reml: bool) -> np.ndarray:
    """|H|⁻¹ of the criterion at ``theta`` (eigenvalues made positive), BFGS's start: a difference Hessian
    through the single-fit kernel, which the model's fit already compiled."""
    return positive_inverse(criterion_hessian(theta, problem.cp, problem.structure, reml, theta_scale(problem.design)))


@partial(jax.jit, static_argnames=("structure", "cp_axes"))
def _estimates_lanes(theta, cp: CrossProducts, structure: Structure, reml, cp_axes: CrossProducts):
    """Canonical theta, β̂ and σ̂ per lane at the final theta."""

    def one(t, c):
        fac = factorize(t, c, structure)
        return canonical_theta(t, structure), beta_hat(fac), sigma_hat(fac, c, reml)

    return jax.vmap(one, in_axes=(0, cp_axes))(theta, cp)


@partial(jax.jit, static_argnames=("structure",))
def hessian_lanes(theta, cp: CrossProducts, structure: Structure, reml):
    """The exact Hessian per lane (every cross-product batched): BFGS's start for data-set batches."""

    def one(t, c):
        return jax.hessian(profiled_deviance)(t, c, structure, reml)

    return jax.vmap(one)(theta, cp)


LANE_MEMORY = 1 << 30  # bytes of working arrays one compiled call of lanes may use per device


LANES_PER_CPU_DEVICE = 1024
LANES_PER_ACCELERATOR = 16384  # an accelerator needs wide calls to be busy


def default_chunk_size(structure: Structure, p: int, per_cpu_device: int = LANES_PER_CPU_DEVICE) -> int:
    """Lanes per compiled call, whatever the batch size (one compiled shape per model structure, so a
    batch of any size after another reuses it): ``per_cpu_device`` per CPU device (wide calls run about
    a quarter more refits per second than calls of 256), ``LANES_PER_ACCELERATOR`` per accelerator, fewer
    where the per-lane arrays (about ten copies of the dense Schur block and the per-level blocks) would
    pass ``LANE_MEMORY``."""
    b1 = structure.blocks[0]
    p2 = sum(b.n_levels * b.q for b in structure.blocks[1:])
    lane_bytes = 8 * 10 * (p2 * p2 + p2 * (p + 1) + b1.n_levels * b1.q * (b1.q + p + 1) + (p + 1) ** 2)
    devices = jax.local_devices()
    per_device = per_cpu_device if devices[0].platform == "cpu" else LANES_PER_ACCELERATOR
    return len(devices) * max(1, min(per_device, LANE_MEMORY // lane_bytes))


def lane_placement(cp_axes: CrossProducts):
    """A function placing lane arrays (and the batched cross-products) split over all local devices
    along the lane axis, with unbatched arrays replicated; plain arrays on a single device."""
    devices = jax.local_devices()
    if len(devices) == 1:
        return lambda lane_arrays, cp: ([jnp.asarray(a) for a in lane_arrays], cp)
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(devices), ("lanes",))
    split, replicated = NamedSharding(mesh, PartitionSpec("lanes")), NamedSharding(mesh, PartitionSpec())

    def place(lane_arrays, cp):
        arrays = [jax.device_put(a, split) for a in lane_arrays]
        cp = CrossProducts(*(jax.device_put(a, split if ax == 0 else replicated) for a, ax in zip(cp, cp_axes)))
        return arrays, cp

    return place


def run_lanes(
    lane_cp,
    theta: np.ndarray,
    inv_hessian: np.ndarray,
    scale: np.ndarray,
    structure: Structure,
    reml: bool,
    cp_axes: CrossProducts,
    chunk_size: int | None = None,
    progress: bool | None = None,
    control: BatchControl | None = None,
):
    """Run BFGS lanes to completion; ``lane_cp(indices)`` gives the cross-products of those lanes.

    Lanes are scheduled in calls of ``chunk_size`` lanes whatever B is (one compiled shape;
    :func:`default_chunk_size` when None; a call with fewer lanes left is padded with copies): each call
    gives every lane up to ``control.budget`` BFGS steps (its :class:`~jaxlmm.optimize.BFGSState` carried
    between calls); lanes that are not done return to the pool and fill the next call first, so no call
    waits on a few slow lanes.  A lane still not done after ``control.max_iter`` steps is a failure.
    With several local devices (GPUs, or CPU devices from
    ``XLA_FLAGS=--xla_force_host_platform_device_count=N``) each call's lanes are split across them.
    Returns (theta, beta, sigma, criterion, converged, steps).
    """
    bound_executables()
    control = control or BatchControl()
    B = theta.shape[0]
    place = lane_placement(cp_axes)
    state = BFGSState(
        theta=theta.copy(),
        f=np.full(B, np.inf),
        g=np.zeros_like(theta),  # f = inf: not evaluated
        inv_hessian=inv_hessian.copy(),
        step_length=np.ones(B),
        steps=np.zeros(B, dtype=np.int32),
        fresh=np.zeros(B, dtype=bool),
        done=np.zeros(B, dtype=bool),
    )
    ok = np.zeros(B, dtype=bool)
    n_dev = jax.local_device_count()
    if chunk_size is None:
        chunk_size = default_chunk_size(structure, lane_cp(np.zeros(1, dtype=np.int64)).AXX.shape[-1])
    size = -(-chunk_size // n_dev) * n_dev  # a multiple of the device count

    def pad(lanes):
        return np.concatenate([lanes, np.repeat(lanes[:1], size - lanes.size)])

    bar = _progress(enabled=progress, total=B, desc="fitting")
    finished = np.zeros(B, dtype=bool)
    while not finished.all():
        todo = np.flatnonzero(~finished)
        lanes = todo[np.argsort(state.steps[todo] == 0, kind="stable")][:size]  # started lanes first
        padded = pad(lanes)
        (scale_lanes, *fields), cp = place((scale[padded], *(a[padded] for a in state)), lane_cp(padded))
        out, good = jax.device_get(_bfgs_lanes(BFGSState(*fields), scale_lanes, cp, structure, reml, cp_axes, control))
        for a, new in zip(state, out):
            a[lanes] = np.asarray(new)[: lanes.size]
        ok[lanes] = np.asarray(good)[: lanes.size]
        finished[lanes] = state.done[lanes] | (state.steps[lanes] >= control.max_iter)
        if bar is not None:
            bar.update(int(finished[lanes].sum()))
    if bar is not None:
        bar.close()
    theta, beta, sigma = state.theta, None, np.zeros(B)
    for first in range(0, B, size):
        lanes = np.arange(first, min(first + size, B))
        padded = pad(lanes)
        (th0,), cp = place((theta[padded],), lane_cp(padded))
        th, be, si = (
            np.asarray(a)[: lanes.size] for a in jax.device_get(_estimates_lanes(th0, cp, structure, reml, cp_axes))
        )
        beta = np.zeros((B, be.shape[1])) if beta is None else beta
        theta[lanes], beta[lanes], sigma[lanes] = th, be, si
    crit = np.where(np.isfinite(state.f), state.f, np.nan)
    return theta, beta, sigma, crit, ok & (state.steps < control.max_iter), state.steps.astype(np.int64)


def warm_start(theta: np.ndarray, structure: Structure, scale: np.ndarray, floor: float = 0.1) -> np.ndarray:
    """The fitted theta with each Λ diagonal entry kept at least ``floor`` × its scale away from 0."""
    theta = np.array(theta, dtype=float)
    low = structure.lower
    diag = np.isfinite(low)
    theta[diag] = np.maximum(theta[diag], floor * scale[diag])
    return theta


@dataclass
class BatchFit:
    """Results of B fits: arrays with the replicate on the first axis."""

    theta: np.ndarray  # (B, n_theta)
    beta: np.ndarray  # (B, p)
    sigma: np.ndarray  # (B,)
    criterion: np.ndarray  # (B,) deviance (ML) or REML criterion
    converged: np.ndarray  # (B,) bool
    iterations: np.ndarray  # (B,)
    fixef_names: list[str]
    reml: bool

    @property
    def loglik(self) -> np.ndarray:
        return -0.5 * self.criterion

    @property
    def n_failed(self) -> int:
        return int((~self.converged).sum())

    def gathered(self) -> BatchFit:
        """The fits of every process under ``jax.distributed`` (this one alone otherwise)."""
        return BatchFit(
            gather(self.theta),
            gather(self.beta),
            gather(self.sigma),
            gather(self.criterion),
            gather(self.converged),
            gather(self.iterations),
            self.fixef_names,
            self.reml,
        )

    def to_frame(self) -> pd.DataFrame:
        """Long tidy table: replicate, term, estimate (fixed effects, theta, sigma, logLik, converged)."""
        B = self.beta.shape[0]
        frames = [
            pd.DataFrame({"replicate": np.arange(B), "term": name, "estimate": self.beta[:, j]})
            for j, name in enumerate(self.fixef_names)
        ]
        frames += [
            pd.DataFrame({"replicate": np.arange(B), "term": f"theta{j + 1}", "estimate": self.theta[:, j]})
            for j in range(self.theta.shape[1])
        ]
        frames.append(pd.DataFrame({"replicate": np.arange(B), "term": "sigma", "estimate": self.sigma}))
        frames.append(pd.DataFrame({"replicate": np.arange(B), "term": "logLik", "estimate": self.loglik}))
        out = pd.concat(frames, ignore_index=True).sort_values(["replicate"], kind="stable").reset_index(drop=True)
        out["converged"] = self.converged[out.replicate.values]
        return out


def response_matrix(Y) -> np.ndarray:
    """``Y`` as an (n, B) float array of finite numbers (a vector is one column), or a
    :class:`~jaxlmm.errors.DataError` naming what is wrong (the columns with missing values by index)."""
    Y = np.asarray(Y)
    if not (np.issubdtype(Y.dtype, np.number) or Y.dtype == bool) or np.iscomplexobj(Y):
        raise DataError(f"responses must be numbers, not {Y.dtype}")
    Y = np.asarray(Y, dtype=float)  # no copy of a float array: a first copy of a large one costs its page faults
    if Y.ndim == 1:
        Y = Y[:, None]
    if Y.ndim != 2:
        raise DataError(f"responses must be a vector or an (n, B) array, not {Y.ndim}-dimensional")
    if Y.shape[1] == 0:
        raise DataError("responses has no columns (B = 0)")
    squares = np.einsum("ib,ib->b", Y, Y)  # NaN or inf in a column with a missing or infinite value
    suspect = np.flatnonzero(~np.isfinite(squares))
    bad = suspect[~np.isfinite(Y[:, suspect]).all(axis=0)]  # not an overflow of Σy²
    if bad.size:
        shown = ", ".join(map(str, bad[:10])) + (f", ... ({bad.size} columns)" if bad.size > 10 else "")
        raise DataError(
            f"responses contain missing or infinite values in column{'s' if bad.size > 1 else ''} {shown} "
            "(0-based): each column is one response to fit; drop or fill those"
        )
    return Y


def fit_responses(
    model, Y: np.ndarray, reml: bool | None = None, chunk_size: int | None = None, progress: bool | None = None
) -> BatchFit:
    """Fit ``model``'s formula to each column of ``Y`` (n, B), warm-started at the model's theta."""
    d = model.design
    Y = response_matrix(Y)
    if Y.shape[0] != d.n:
        raise DataError(f"responses have {Y.shape[0]} rows; the model has {d.n} observations")
    products = dict(zip(Y_FIELDS, design_response_products(Y, d)))
    return fit_products(
        model.problem, model.theta, products, model.reml if reml is None else reml, chunk_size, progress
    )


def fit_products(
    problem: Problem,
    theta: np.ndarray,
    products: dict[str, np.ndarray],
    reml: bool,
    chunk_size: int | None = None,
    progress: bool | None = None,
    lanes: Problem | None = None,
) -> BatchFit:
    """Fit B responses of ``problem``'s design given by their cross-products with it (``Y_FIELDS``, batch
    axis first), each lane warm-started at ``theta`` with the criterion's Hessian there.  The lanes run on
    the design padded to the batch grid (``shapes.BATCH_FINE_FROM``): a batch's run time outweighs a
    compile, so its lanes pay at most 1/8 of padding rather than up to 2x; or on ``lanes``, the same design
    padded by the caller (a power curve pads all its designs to one shape: one compiled call serves all)."""
    d = problem.design
    B = products["yy"].shape[0]
    scale = theta_scale(d)
    start = warm_start(theta, d.structure, scale)
    lanes = lanes or padded_problem(d, BATCH_FINE_FROM)
    products = pad_response_products(products, d.structure, lanes.structure, lanes.cp.AXX.shape[0])

    def lane_cp(indices):
        return lanes.cp._replace(**{k: jnp.asarray(v[indices]) for k, v in products.items()})

    theta, beta, sigma, crit, ok, steps = run_lanes(
        lane_cp,
        np.tile(start, (B, 1)),
        np.tile(start_inverse_hessian(problem, start, reml), (B, 1, 1)),
        np.tile(scale, (B, 1)),
        lanes.structure,
        reml,
        CP_AXES,
        chunk_size,
        progress=progress,
    )
    crit = crit - d.sum_log_weights  # lme4's −Σ log wᵢ (Design.sum_log_weights)
    return BatchFit(theta, beta[:, : d.p], sigma, crit, ok, steps, list(d.fixef_names), reml)


def _progress(enabled: bool | None, total: int, desc: str):
    """A tqdm bar over ``total`` items when enabled (default: when stderr is a terminal)."""
    if enabled is None:
        enabled = sys.stderr.isatty() and total > 1
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="fit")
