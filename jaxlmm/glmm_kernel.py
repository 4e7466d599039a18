"""The compiled pieces of a glmer fit: the arrays of a design padded to their shape bucket, the
criterion's value and gradient, and the BFGS descent over x = (θ, β) (one lane, or vmapped over responses
by :mod:`jaxlmm.glmm_batch`).

**Exact padding** (as :mod:`jaxlmm.shapes` pads the LMM's cross-products): the kernels see n rounded up
to :func:`~jaxlmm.shapes.bucket` and each block's levels to :func:`~jaxlmm.shapes.padded_structure`'s.
A padded row has prior weight 0, y = 0, offset 0, X and Z rows 0 and level 0: its deviance kernel
``2·wt·(…)``, saturated part, ``log C(0, 0)`` / ``wt·log 0!``, IRLS weight ``wt·V(μ)`` and working
residual ``wt(y − μ)`` are all 0, so it adds nothing to PIRLS, the criterion or its gradient.  A padded
level has no rows: its block of H is I (log-determinant 0), its mode stays 0, and in AGQ its quadrature
sum is Σ w_k = 1 (log 0).  The fixed-effect columns are not padded (p is the formula's)."""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

from .design import Structure, theta_scale
from .glmm_design import GlmmDesign
from .laplace import criterion, mode_at
from .optimize import bfgs_start, bfgs_steps
from .pirls import GlmmData
from .shapes import FINE_FROM, bucket, padded_structure

MIN_ROWS = 16  # the padded number of rows is at least this


class GlmmProblem(NamedTuple):
    """What the compiled kernels see of a glmer design: its arrays padded to their bucket (see the
    module's docstring), the padded structure (the compile key) and the real number of rows."""

    data: GlmmData
    structure: Structure
    n: int


def pad_rows(a: np.ndarray, rows: int) -> np.ndarray:
    """``a`` with zero rows appended along its first axis up to ``rows``."""
    a = np.asarray(a)
    return np.concatenate([a, np.zeros((rows - a.shape[0],) + a.shape[1:], dtype=a.dtype)])


def glmm_problem(
    gd: GlmmDesign, fine_from: int = FINE_FROM, rows: int | None = None, structure: Structure | None = None
) -> GlmmProblem:
    """The design's :class:`GlmmProblem`: rows and levels padded exactly to their buckets, or to ``rows``
    rows and ``structure``'s levels (at least the design's)."""
    d = gd.design
    rows = rows or bucket(d.n, MIN_ROWS, fine_from)
    data = GlmmData(
        jnp.asarray(pad_rows(d.y, rows)),
        jnp.asarray(pad_rows(gd.wt, rows)),
        jnp.asarray(pad_rows(gd.offset, rows)),
        jnp.asarray(pad_rows(d.X, rows)),
        tuple(jnp.asarray(pad_rows(z, rows)) for z in d.Z),
        tuple(jnp.asarray(pad_rows(c, rows)) for c in d.codes),
    )
    return GlmmProblem(data, structure or padded_structure(d.structure, fine_from), d.n)


def real_u(u: np.ndarray, structure: Structure, padded: Structure) -> np.ndarray:
    """The real levels' entries of a flat u laid out for ``padded`` (each block's real levels first)."""
    u, out, start = np.asarray(u), [], 0
    for b, pb in zip(structure.blocks, padded.blocks):
        out.append(u[..., start : start + b.n_levels * b.q])
        start += pb.n_levels * pb.q
    return np.concatenate(out, axis=-1)


@partial(jax.jit, static_argnames=("structure", "family", "nagq"))
def value_and_gradient(x, data, structure, family, nagq):
    """The criterion and its exact gradient in x = (θ, β) (see :mod:`jaxlmm.laplace`)."""
    return jax.value_and_grad(criterion)(x, data, structure, family, nagq)


@partial(jax.jit, static_argnames=("structure", "family"))
def deviance_and_mode(x, data, structure, family):
    """lme4's ``deviance()`` (:func:`~jaxlmm.laplace.deviance_residual_sum`), u and η at the mode, compiled."""
    u, pieces, _, _ = mode_at(x, data, structure, family)
    return jnp.sum(family.deviance_residuals(data.y, data.wt, pieces.eta)), u, pieces.eta


def column_signs(x, structure):
    """+1 or −1 per entry of x: θ entries take the sign of their Λ column's diagonal entry (the criterion
    is even in each column), β entries +1."""
    diag = jnp.asarray(structure.column_diagonal)
    theta_signs = jnp.where(x[..., diag] < 0, -1.0, 1.0)
    ones = jnp.ones(x.shape[:-1] + (x.shape[-1] - structure.n_theta,))
    return jnp.concatenate([theta_signs, ones], axis=-1)


@partial(jax.jit, static_argnames=("structure", "family", "nagq"))
def bfgs_search(x0, inv_hessian, scale, budget, gtol, data, structure, family, nagq):
    """Compiled BFGS descent of the criterion from x0 (:func:`jaxlmm.optimize.bfgs_steps`), Λ columns
    flipped to θ_ii ≥ 0 at the end; vmaps over lanes (responses in ``data.y``)."""

    def vg(x):
        return jax.value_and_grad(criterion)(x, data, structure, family, nagq)

    s = bfgs_steps(vg, bfgs_start(x0, inv_hessian), budget, scale, gtol)
    signs = column_signs(s.theta, structure)
    return s._replace(theta=signs * s.theta, g=signs * s.g)


def glm_start(gd: GlmmDesign, max_iter: int = 50) -> np.ndarray:
    """β of the GLM without random effects by IRLS (R's ``glm.fit``), the start of the joint descent."""
    d, fam = gd.design, gd.family
    binomial = fam.name == "binomial"
    mu = (gd.wt * d.y + 0.5) / (gd.wt + 1.0) if binomial else d.y + 0.1
    eta = (scipy.special.logit(mu) if binomial else np.log(mu)) - gd.offset
    beta = np.zeros(d.p)
    for _ in range(max_iter):  # in NumPy: JAX's eager operations would compile once per data size
        mu = scipy.special.expit(eta + gd.offset) if binomial else np.exp(eta + gd.offset)
        var = np.maximum(fam.variance(mu), 1e-10)
        w = gd.wt * var
        z = eta + (d.y - mu) / var
        sw = np.sqrt(w)
        new = np.linalg.lstsq(d.X * sw[:, None], z * sw, rcond=None)[0]
        done = np.max(np.abs(new - beta)) < 1e-10 * (1 + np.max(np.abs(beta)))
        beta, eta = new, d.X @ new
        if done:
            break
    return beta


def x_scale(gd: GlmmDesign) -> np.ndarray:
    """The optimiser's units: θ's as the LMM's, β's 1 / root mean square of its X column."""
    rms = np.sqrt(np.mean(gd.design.X**2, axis=0))
    return np.concatenate([theta_scale(gd.design), np.where(rms > 0, 1.0 / np.where(rms > 0, rms, 1.0), 1.0)])
