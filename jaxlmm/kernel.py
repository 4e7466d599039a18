"""The compiled kernel of single fits: one executable per padded model shape serves a whole fit.

:func:`criterion_search` runs up to ``budget`` BFGS steps on a :func:`~jaxlmm.deviance.weighted_criterion`
and, on request, returns everything the fitted model reports at the final theta (:class:`FittedParts`).
The weights make the same executable the profiled ML deviance, the REML criterion, or the deviance at a
fixed σ whose gradients give the Satterthwaite derivatives (:mod:`jaxlmm.inference`); a budget of one
step is the criterion and its gradient at theta.  Compiling takes seconds and a fit of a small model
milliseconds, so a model and its tables (``summary``, ``tidy``, the ML refit of ``anova``) compile this
one function per shape bucket, plus :func:`random_effect_variances` when conditional variances are asked.
"""

from __future__ import annotations

import functools
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .crossprod import CrossProducts
from .design import ReBlock, Structure
from .deviance import (
    beta_hat,
    column_signs,
    factorize,
    logdet_RX,
    profiled_weights,
    unscaled_vcov,
    weighted_criterion,
)
from .modes import conditional_modes, conditional_variances
from .optimize import Control, best_scaled, bfgs_start, bfgs_steps, difference_hessian


class FittedParts(NamedTuple):
    """What the fitted model reports that depends only on theta and the cross-products."""

    logdet_M: jnp.ndarray  # log|ΛᵀZᵀZΛ + I|
    logdet_RX: jnp.ndarray  # log|R_X|²
    r2: jnp.ndarray  # penalised residual sum of squares
    beta: jnp.ndarray  # (p,)
    vcov_unscaled: jnp.ndarray  # (p, p) (R_XᵀR_X)⁻¹
    modes: tuple  # per block (padded levels, q): b = Λu


class SearchResult(NamedTuple):
    theta: jnp.ndarray  # where the search ended (columns not yet flipped)
    f: jnp.ndarray  # the criterion there (inf where not finite)
    g: jnp.ndarray  # its gradient
    steps: jnp.ndarray  # BFGS steps taken (each one evaluation)
    decrement: jnp.ndarray  # ½gᵀBg: what a Newton step could still gain (B the BFGS inverse Hessian)
    signs: jnp.ndarray  # signs · theta is the canonical theta (θ_ii >= 0) with gradient signs · g
    parts: FittedParts  # at theta, when asked for (zeros otherwise)


def fitted_parts(theta: jnp.ndarray, cp: CrossProducts, structure: Structure) -> FittedParts:
    f = factorize(theta, cp, structure)
    p = f.LXY.shape[0] - 1
    beta = beta_hat(f)
    return FittedParts(
        f.logdet_M,
        logdet_RX(f),
        f.LXY[p, p] ** 2,
        beta,
        unscaled_vcov(f),
        tuple(conditional_modes(theta, cp, structure, f, beta)),
    )


@functools.cache
def full_triangles(structure: Structure) -> tuple[Structure, np.ndarray]:
    """``structure`` with every block's Λ a full lower triangle (the θ layout of ``(x | g)``), and the
    position in it of each of ``structure``'s θ entries.  The kernel is compiled for this layout, with the
    structural zeros masked, so that ``(1 | g) + (0 + x | g)``, ``(x || g)`` and ``(1 + x | g)`` share it."""
    blocks, offset = [], 0
    for b in structure.blocks:
        index = np.full((b.q, b.q), -1)
        rows, cols = np.tril_indices(b.q)
        order = np.lexsort((rows, cols))  # column-major, as lme4 lays out theta
        index[rows[order], cols[order]] = offset + np.arange(rows.size)
        offset += rows.size
        blocks.append(ReBlock(b.n_levels, b.q, tuple(map(tuple, index.tolist()))))
    full = Structure(tuple(blocks), offset)
    k, rows, cols = structure.parmap.T
    return full, np.array([full.blocks[b].theta_index[r][c] for b, r, c in zip(k, rows, cols)], dtype=np.int64)


def _search(
    theta, budget, rescale, scale, precondition, weights, extras, mask, gtol, cp: CrossProducts, structure: Structure
) -> SearchResult:
    """The kernel on the full-triangle layout; ``mask`` is 0 on the structural zeros, which therefore have
    a zero gradient and (with a zero ``precondition`` there) never move."""

    def objective(t):
        return weighted_criterion(factorize(t * mask, cp, structure), weights)

    theta = jax.lax.cond(rescale, partial(best_scaled, objective), lambda t: t, theta)
    state = bfgs_steps(jax.value_and_grad(objective), bfgs_start(theta, precondition), budget, scale, gtol)
    theta, f, g, B = state.theta * mask, state.f, state.g, state.inv_hessian
    parts = partial(fitted_parts, cp=cp, structure=structure)
    shapes = jax.eval_shape(parts, theta)
    no_parts = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    parts = jax.lax.cond(extras, parts, lambda t: no_parts, theta)
    return SearchResult(theta, f, g, state.steps, 0.5 * g @ B @ g, column_signs(theta, structure), parts)


FAST_COMPILE = {"xla_backend_optimization_level": 0}  # LLVM without optimisation: ~2x faster to compile
SMALL_WORK = 5e4  # flops of one evaluation below which compiling costs more than any fit of the shape


class SizedKernel:
    """A kernel ``fn(..., cp, structure)`` jitted twice: without LLVM optimisation for small problems
    (:func:`evaluation_work` below ``SMALL_WORK``: they run in milliseconds either way, and compile in about
    half the time), fully optimised for large ones."""

    def __init__(self, fn):
        self.small = jax.jit(fn, static_argnames=("structure",), compiler_options=FAST_COMPILE)
        self.large = jax.jit(fn, static_argnames=("structure",))

    def __call__(self, *args):
        cp, structure = args[-2:]
        return (self.small if evaluation_work(cp, structure) < SMALL_WORK else self.large)(*args)


def evaluation_work(cp: CrossProducts, structure: Structure) -> float:
    """Rough flop count of one criterion evaluation: the per-level blocks, the dense Schur block, the
    sparse pair terms."""
    b1 = structure.blocks[0]
    p1 = cp.AXX.shape[0] + 1
    p2 = cp.A22.shape[0]
    return (
        b1.n_levels * (b1.q**3 + 2 * b1.q**2 * p1)
        + p2**3 / 3
        + 2 * p2**2 * p1
        + 4 * cp.pair_val.shape[0]
        + 2 * cp.A21_val.shape[0] * p1
    )


def _search_flat(
    theta, budget, rescale, scale, precondition, weights, extras, mask, gtol, cp: CrossProducts, structure: Structure
) -> jnp.ndarray:
    """:func:`_search`'s result as one float64 vector: one transfer to the host, not one per field (each
    costs ~25 µs of Python, a quarter of a small model's warm fit)."""
    result = _search(theta, budget, rescale, scale, precondition, weights, extras, mask, gtol, cp, structure)
    return jnp.concatenate([jnp.ravel(leaf).astype(jnp.float64) for leaf in jax.tree.leaves(result)])


@functools.cache
def _search_layout(structure: Structure, p: int) -> tuple:
    """The tree structure and leaf shapes of :func:`_search`'s result for a full-triangle ``structure`` and
    ``p`` (padded) fixed-effect columns, to cut :func:`_search_flat`'s vector back into it."""
    n = structure.n_theta
    template = SearchResult(
        np.zeros(n),
        np.zeros(()),
        np.zeros(n),
        np.zeros((), dtype=np.int64),
        np.zeros(()),
        np.zeros(n),
        FittedParts(
            np.zeros(()),
            np.zeros(()),
            np.zeros(()),
            np.zeros(p),
            np.zeros((p, p)),
            tuple(np.zeros((b.n_levels, b.q)) for b in structure.blocks),
        ),
    )
    leaves, treedef = jax.tree.flatten(template)
    return treedef, [(leaf.shape, leaf.dtype) for leaf in leaves]


def _unflatten_search(flat: np.ndarray, structure: Structure, p: int) -> SearchResult:
    treedef, layout = _search_layout(structure, p)
    ends = np.cumsum([int(np.prod(shape)) for shape, _ in layout])
    pieces = np.split(flat, ends[:-1])
    return jax.tree.unflatten(
        treedef, [piece.reshape(shape).astype(dtype) for piece, (shape, dtype) in zip(pieces, layout)]
    )


_search_kernel = SizedKernel(_search_flat)


def criterion_search(
    theta,
    budget: int,
    rescale: bool,
    scale,
    precondition,
    weights,
    extras: bool,
    cp: CrossProducts,
    structure: Structure,
    gtol: float = Control.search_gtol,
) -> SearchResult:
    """Up to ``budget`` BFGS steps on ``weighted_criterion(·, weights)`` (B from ``diag(precondition)``),
    from theta or, with ``rescale``, from its best rescaling (:func:`~jaxlmm.optimize.best_scaled`), and
    with ``extras`` the :class:`FittedParts` at the end, in one compiled call (a :class:`SizedKernel` on
    the :func:`full_triangles` layout); returned on the host, in ``structure``'s θ layout.  The descent
    stops below ``gtol`` (max |scaled gradient|)."""
    full, slots = full_triangles(structure)

    def embed(v, fill):
        out = np.full(full.n_theta, fill, dtype=float)
        out[slots] = v
        return out

    flat = _search_kernel(
        embed(theta, 0.0),
        budget,
        rescale,
        embed(scale, 1.0),
        embed(precondition, 0.0),
        np.asarray(weights, dtype=float),
        extras,
        embed(1.0, 0.0),
        gtol,
        cp,
        full,
    )
    r = _unflatten_search(np.asarray(flat), full, cp.AXX.shape[0])
    return r._replace(theta=r.theta[slots], g=r.g[slots], signs=r.signs[slots])


def criterion_and_gradient(
    theta, cp: CrossProducts, structure: Structure, reml: bool, scale: np.ndarray
) -> tuple[float, np.ndarray]:
    """The profiled criterion (REML or ML) and its exact gradient at theta (inf and 0 where not finite)."""
    r = evaluate(theta, cp, structure, profiled_weights(float(cp.n), float(cp.p), reml, xp=np), scale)
    return float(r.f), np.asarray(r.g)


def criterion_hessian(theta, cp: CrossProducts, structure: Structure, reml: bool, scale: np.ndarray) -> np.ndarray:
    """The criterion's Hessian at theta, by central differences of the exact gradient (2·len(theta)
    gradients through the same compiled kernel)."""
    return difference_hessian(
        partial(criterion_and_gradient, cp=cp, structure=structure, reml=reml, scale=scale),
        np.asarray(theta, dtype=float),
        scale,
    )


def evaluate(
    theta: np.ndarray, cp: CrossProducts, structure: Structure, weights, scale: np.ndarray, extras: bool = False
) -> SearchResult:
    """The criterion, its gradient and (with ``extras``) the fitted parts at theta, on the host."""
    return criterion_search(theta, 1, False, scale, scale, weights, extras, cp, structure)


def _variances(theta, sigma, cp: CrossProducts, structure: Structure) -> list:
    return conditional_variances(theta, cp, structure, factorize(theta, cp, structure), sigma)


_variances_kernel = SizedKernel(_variances)


def random_effect_variances(theta, sigma: float, cp: CrossProducts, structure: Structure) -> list[np.ndarray]:
    """``Var(b | y)`` per block (lme4's condVar; padded levels), on its own: it costs a dense solve on
    large models.  Compiled on the :func:`full_triangles` layout, as :func:`criterion_search`."""
    full, slots = full_triangles(structure)
    theta_full = np.zeros(full.n_theta)
    theta_full[slots] = theta
    return jax.device_get(_variances_kernel(theta_full, float(sigma), cp, full))
