"""Batched GLMM refits: many responses of one glmer design in vmapped lanes, the parametric bootstrap and
bootstrap confidence intervals and the power of a likelihood-ratio test (the parametric-bootstrap LRT is
:func:`jaxlmm.compare.pbtest`'s).

Each lane runs the compiled BFGS descent of :func:`jaxlmm.glmm.bfgs_search` on its own response, from
the fitted x = (θ, β) and the inverse of the fitted model's Hessian (which every replicate of the same
design shares closely), with PIRLS inside each evaluation.  Lanes stop one by one (``while_loop`` with a
per-lane done mask); a lane whose criterion is not finite, or whose scaled gradient is still above
:attr:`~jaxlmm.optimize.BatchControl.converged_gtol` when it stops, is counted as failed (never silently
kept).  PIRLS touches all n rows at each step, so a lane costs O(n) per evaluation: chunks are sized by
rows × lanes (:func:`chunk_lanes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.special
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .errors import JaxlmmError
from .glmm_kernel import column_signs, pad_rows, x_scale
from .laplace import criterion_constant, varying_criterion
from .optimize import BatchControl, BFGSState, bfgs_steps, positive_inverse

LANE_ROWS = 2_000_000  # rows × lanes per compiled call


@dataclass(frozen=True)
class GlmmBatchFit:
    """Refits of one glmer to B responses: x = (θ, β) per lane, the criterion, and which converged."""

    x: np.ndarray  # (B, n_theta + p)
    criterion: np.ndarray  # (B,) -2 logLik (lme4's scale for the model's nagq)
    converged: np.ndarray  # (B,) bool
    steps: np.ndarray  # (B,) BFGS steps
    n_theta: int

    @property
    def theta(self) -> np.ndarray:
        return self.x[:, : self.n_theta]

    @property
    def beta(self) -> np.ndarray:
        return self.x[:, self.n_theta :]

    @property
    def n_failed(self) -> int:
        return int(np.sum(~self.converged))


def lane_placement():
    """A function putting a lane array (lanes first) on the devices: split along the lanes over all local
    devices (GPUs, or CPU devices from ``XLA_FLAGS=--xla_force_host_platform_device_count=N``, one per
    core), or plainly on the one device."""
    devices = jax.local_devices()
    if len(devices) == 1:
        return jnp.asarray
    split = NamedSharding(Mesh(np.array(devices), ("lanes",)), PartitionSpec("lanes"))
    return lambda a: jax.device_put(a, split)


def chunk_lanes(n_rows: int, n_lanes: int, chunk_size: int | None = None) -> int:
    """Lanes per compiled call: ``chunk_size``, else ~LANE_ROWS / n rows, in [16, 1024], at most B."""
    size = chunk_size or int(np.clip(LANE_ROWS // max(n_rows, 1), 16, 1024))
    return max(1, min(size, n_lanes))


@partial(jax.jit, static_argnames=("structure", "family", "nagq"))
def _lane_steps(state: BFGSState, y, scale, budget, gtol, data, structure, family, nagq) -> BFGSState:
    """Up to ``budget`` more BFGS steps for each lane (its response in a row of y), the criterion less
    its response-only constant."""

    def one(s, yk):
        lane = data._replace(y=yk)
        return bfgs_steps(
            lambda x: jax.value_and_grad(varying_criterion)(x, lane, structure, family, nagq), s, budget, scale, gtol
        )

    return jax.vmap(one)(state, y)


def run_glmm_lanes(x0: np.ndarray, inv_hessian: np.ndarray, width: int, max_iter: int, steps) -> BFGSState:
    """BFGS lanes from ``x0`` (B, dim) run to completion in calls of ``width`` lanes, as
    :func:`jaxlmm.batch.run_lanes` schedules them: ``steps(state, padded)`` advances the lanes ``padded``
    (indices; a call with fewer lanes left repeats its first) of the host ``state`` by one compiled call;
    unfinished lanes fill the next call first; a lane stops when done or after ``max_iter`` steps."""
    B = x0.shape[0]
    state = BFGSState(
        theta=x0.copy(),
        f=np.full(B, np.inf),
        g=np.zeros_like(x0),
        inv_hessian=inv_hessian,
        step_length=np.ones(B),
        steps=np.zeros(B, dtype=np.int32),
        fresh=np.zeros(B, dtype=bool),
        done=np.zeros(B, dtype=bool),
    )
    finished = np.zeros(B, dtype=bool)
    while not finished.all():
        todo = np.flatnonzero(~finished)
        lanes = todo[np.argsort(state.steps[todo] == 0, kind="stable")][:width]
        padded = np.concatenate([lanes, np.repeat(lanes[:1], width - lanes.size)])
        for a, new in zip(state, jax.device_get(steps(state, padded))):
            a[lanes] = np.asarray(new)[: lanes.size]
        finished[lanes] = state.done[lanes] | (state.steps[lanes] >= max_iter)
    return state


def refit_responses(
    model,
    responses: np.ndarray,
    chunk_size: int | None = None,
    control: BatchControl | None = None,
) -> GlmmBatchFit:
    """Refit ``model``'s design to each column of ``responses`` (n, B) (same scale as the fit's ``y``:
    proportions of the trials for the binomial, counts for Poisson).

    Lanes are scheduled as :func:`jaxlmm.batch.run_lanes` does: calls of one compiled width, each lane
    given ``control.budget`` BFGS steps per call with its state carried between calls, unfinished lanes
    first in the next call, so no call waits on a few slow lanes; a lane not done after
    ``control.max_iter`` steps, or with a non-finite criterion, or a scaled gradient above
    ``control.converged_gtol``, is a failure.
    """
    control = control or BatchControl()
    Y = np.asarray(responses, dtype=float)
    if Y.ndim == 1:
        Y = Y[:, None]
    if Y.shape[0] != model.nobs:
        raise JaxlmmError(f"responses need {model.nobs} rows (one per observation), not {Y.shape[0]}")
    B = Y.shape[1]
    # crossed factors factor a dense block with LAPACK's Cholesky in every lane: lanes split over several CPU
    # devices (threads) deadlocked there (a 1,000-replicate glmer_power hung), so those stay on one device
    one_device = len(model.design.structure.blocks) > 1 and jax.local_devices()[0].platform == "cpu"
    place = jnp.asarray if one_device else lane_placement()
    n_dev = 1 if one_device else jax.local_device_count()
    size = -(-chunk_lanes(model.nobs, B, chunk_size) // n_dev) * n_dev  # a multiple of the device count
    data, structure = model.problem.data, model.problem.structure
    Y = pad_rows(Y, data.y.shape[0])  # padded rows: weight 0, response 0
    scale = x_scale(model.gdesign)
    inv_hessian = positive_inverse(model.hessian)
    state = run_glmm_lanes(
        np.tile(model.x, (B, 1)),
        np.tile(inv_hessian, (B, 1, 1)),
        size,
        control.max_iter,
        lambda lanes, padded: _lane_steps(
            BFGSState(*(place(a[padded]) for a in lanes)), place(Y[:, padded].T), jnp.asarray(scale),
            control.budget, control.gtol, data, structure, model.family, model.nagq,
        ),
    )  # fmt: skip
    x = state.theta * np.asarray(column_signs(jnp.asarray(state.theta), model.structure))
    constants = np.asarray(
        jax.vmap(lambda yk: criterion_constant(data._replace(y=yk), model.family, model.nagq))(jnp.asarray(Y.T))
    )
    f = state.f + constants
    ok = np.isfinite(f) & np.all(np.isfinite(x), axis=1) & state.done
    ok &= np.max(np.abs(state.g * scale), axis=1) < control.converged_gtol
    return GlmmBatchFit(x, f, ok, state.steps.copy(), model.structure.n_theta)


def bootstrap(model, nsim: int = 1000, seed: int | None = None) -> pd.DataFrame:
    """lme4's ``bootMer(g, FUN = function(x) c(fixef(x), theta))``: one row per replicate with θ and β
    (and ``converged``), refitted to responses simulated at the estimates."""
    fits = refit_responses(model, model.simulate(nsim, seed))
    cols = [f"theta{k + 1}" for k in range(fits.n_theta)] + list(model.design.fixef_names)
    table = pd.DataFrame(fits.x, columns=cols)
    table["converged"] = fits.converged
    return table


def confint_boot(model, level: float = 0.95, nsim: int = 1000, seed: int | None = None):
    """Percentile bootstrap intervals for the random-effect standard deviations (single-column terms:
    |θ|) and the fixed effects, as lme4's ``confint(g, method = "boot")`` for θ and β; failed replicates
    are left out."""
    table = bootstrap(model, nsim, seed)
    good = table[table["converged"]].drop(columns="converged")
    a = (1 - level) / 2
    q = good.quantile([a, 1 - a]).T
    q.columns = [f"{100 * a:.1f} %", f"{100 * (1 - a):.1f} %"]
    q.attrs["n_failed"] = int((~table["converged"]).sum())
    return q


@dataclass(frozen=True)
class GlmmPower:
    """Power of the likelihood-ratio test of ``small`` within ``large`` by simulation."""

    power: float  # share of valid replicates with p < alpha
    std_error: float  # its binomial standard error
    p_values: np.ndarray  # χ² p-value of each valid replicate
    n_failed: int
    nsim: int
    alpha: float


def power_lrt(large, small, x=None, nsim: int = 1000, alpha: float = 0.05, seed: int | None = None) -> GlmmPower:
    """Power of the LRT of ``small`` (nested in ``large``, both glmer fits to the same design) at level
    ``alpha``: ``nsim`` responses simulated from ``large`` at ``x = (θ, β)`` (default its estimates), both
    models refitted to each in vmapped lanes, p from χ² with the difference in parameters as df (simr's
    ``powerSim`` with ``test = fixed(..., "lr")``).  Replicates where either refit failed are counted and
    left out."""
    if small.npar >= large.npar:
        raise JaxlmmError("the first model must have more parameters than the second")
    Y = large.simulate(nsim, seed, x)
    fit_large, fit_small = large.refit(Y), small.refit(Y)
    ok = fit_large.converged & fit_small.converged
    lrt = np.maximum(0.0, fit_small.criterion - fit_large.criterion)[ok]
    p = scipy.special.chdtrc(large.npar - small.npar, lrt)
    power = float(np.mean(p < alpha)) if p.size else float("nan")
    se = float(np.sqrt(power * (1 - power) / max(p.size, 1)))
    return GlmmPower(power, se, p, int((~ok).sum()), nsim, alpha)
