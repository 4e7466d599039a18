"""The compiled pieces of a glmer fit: the arrays of a design, the criterion's value and gradient, and
the BFGS descent over x = (θ, β) (one lane, or vmapped over responses by :mod:`jaxlmm.glmm_batch`)."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .design import theta_scale
from .glmm_design import GlmmDesign
from .laplace import criterion
from .optimize import bfgs_start, bfgs_steps
from .pirls import GlmmData


def glmm_data(gd: GlmmDesign, y: np.ndarray | None = None) -> GlmmData:
    d = gd.design
    return GlmmData(
        jnp.asarray(d.y if y is None else y),
        jnp.asarray(gd.wt),
        jnp.asarray(gd.offset),
        jnp.asarray(d.X),
        tuple(jnp.asarray(z) for z in d.Z),
        tuple(jnp.asarray(c) for c in d.codes),
    )


@partial(jax.jit, static_argnames=("structure", "family", "nagq"))
def value_and_gradient(x, data, structure, family, nagq):
    """The criterion and its exact gradient in x = (θ, β) (see :mod:`jaxlmm.laplace`)."""
    return jax.value_and_grad(criterion)(x, data, structure, family, nagq)


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
    mu = (gd.wt * d.y + 0.5) / (gd.wt + 1.0) if fam.name == "binomial" else d.y + 0.1
    eta = np.asarray(fam.link_of(mu)) - gd.offset
    beta = np.zeros(d.p)
    for _ in range(max_iter):
        mu = np.asarray(fam.mean(jnp.asarray(eta + gd.offset)))
        var = np.maximum(np.asarray(fam.variance(jnp.asarray(mu))), 1e-10)
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
