"""Simulation from a fitted model, parametric bootstrap and the bootstrap LRT.

* :func:`simulate` — lme4's ``simulate``: new spherical random effects ``u ~ N(0, I)``,
  ``y* = offset + Xβ̂ + σ̂ ZΛu + σ̂ε/√w`` (with prior weights w the residual variance is σ̂²/wᵢ, the
  fitted model's law; lme4's ``simulate`` ignores the weights there).
* :func:`bootstrap` — lme4's ``bootMer``: refit the model to each simulated response (batched).

The simulations take a design and :class:`~jaxlmm.params.Params` (fitted or specified), not a model.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
import scipy.special

from .batch import Y_FIELDS, BatchFit, fit_products
from .crossprod import design_response_products, sparse_Z
from .design import Design
from .errors import JaxlmmError
from .hosts import process_share
from .params import Params, ran_pars, term_covariances
from .shapes import Problem

SIMULATION_BLOCK = 10_000  # responses drawn per block: bounds memory for any nsim


def simulate_blocks(design: Design, params: Params, nsim: int, seed: int | None = None):
    """Yield responses simulated from ``design`` with ``params`` in (n, <= SIMULATION_BLOCK) blocks from one
    random stream."""
    rng = np.random.default_rng(seed)
    mean = design.X @ params.beta
    if design.offset is not None:
        mean = mean + design.offset
    noise_sd = params.sigma if design.weights is None else params.sigma / np.sqrt(design.weights)[:, None]
    Zs = [
        (sparse_Z(codes, Z, b.n_levels), b.lambda_of(params.theta), b)
        for b, Z, codes in zip(design.structure.blocks, design.Z, design.codes)
    ]
    for first in range(0, nsim, SIMULATION_BLOCK):
        size = min(SIMULATION_BLOCK, nsim - first)
        effects = [
            (params.sigma * rng.standard_normal((size, b.n_levels, b.q)) @ Lam.T).reshape(size, -1).T
            for _, Lam, b in Zs
        ]  # level-major columns; drawn before the residuals
        Y = rng.standard_normal((design.n, size))  # built in place: σε/√w + offset + Xβ + Σ Z_k b_k
        Y *= noise_sd
        Y += mean[:, None]
        for (Zk, _, _), b in zip(Zs, effects):
            Y += Zk @ b
        yield Y


def simulate(design: Design, params: Params, nsim: int = 1, seed: int | None = None) -> np.ndarray:
    """``nsim`` responses simulated from ``design`` with ``params``, as an (n, nsim) array (lme4's
    ``simulate``; MixedModels.jl's ``simulate!(rng, m; β, σ, θ)``)."""
    return np.hstack(list(simulate_blocks(design, params, nsim, seed)))


def simulated_products(
    designs: list[Design], params: Params, nsim: int, seed: int | None = None, simulation: str = "plain"
) -> list[dict[str, np.ndarray]]:
    """For each design in ``designs``, the y-dependent cross-products of ``nsim`` responses simulated from
    the first design with ``params``, in blocks, so that Y is never held whole (a million fits fit in
    memory).  Under ``jax.distributed``, only this process's share (:mod:`jaxlmm.hosts`).

    ``simulation="plain"`` simulates y as lme4's ``simulate`` does (the same stream as :func:`simulate`);
    ``"direct"`` draws the products themselves (:func:`direct_products`): exact in distribution, much
    cheaper for one-factor designs, but a different random stream.
    """
    nsim, seed = process_share(nsim, seed)  # under jax.distributed: this process's share only
    if simulation == "direct":
        return direct_products(designs, params, nsim, seed)
    if simulation != "plain":
        raise ValueError("simulation must be 'plain' or 'direct'")
    parts = [[] for _ in designs]
    for Y in simulate_blocks(designs[0], params, nsim, seed):
        for part, d in zip(parts, designs):
            part.append(design_response_products(Y, d))
    return [{k: np.concatenate([p[j] for p in part]) for j, k in enumerate(Y_FIELDS)} for part in parts]


def direct_products(
    designs: list[Design], params: Params, nsim: int, seed: int | None = None
) -> list[dict[str, np.ndarray]]:
    """The products ``Kᵀy*`` and ``y*ᵀy*`` of simulated responses, drawn without forming y*.

    With ``K = [Z X]`` of all the designs (n × m), ``y* = Kc + σε`` where ``c`` stacks the generating
    parameters' β and new random effects.  ``Kᵀε ~ N(0, C)``, ``C = KᵀK = RRᵀ``, so ``Kᵀε = Rz`` with z ~ N(0, I_r), and
    ``εᵀε = zᵀz + χ²_{n−r}`` (the projection of ε on span K and its independent complement).  Hence
    ``Kᵀy* = Cc + σRz`` and ``y*ᵀy* = cᵀCc + 2σ cᵀRz + σ²(zᵀz + χ²_{n−r})``: m + 1 draws per response
    instead of n.

    With prior weights and an offset the products are those of ``√w(y* − offset) = √w K c + σε`` (what the
    criterion sees, :func:`~jaxlmm.crossprod.design_response_products`): the same draws with K's rows
    scaled by √w, for designs sharing their weights and offset.
    """
    n = designs[0].n
    for d in designs[1:]:
        if not (_same(d.weights, designs[0].weights) and _same(d.offset, designs[0].offset)):
            raise JaxlmmError("simulation='direct' needs the same weights and offset in every model; use 'plain'")
    pieces, owner = [], []  # columns of K: each design's Z blocks then its X; owner = design index
    for k, d in enumerate(designs):
        X, Zs = d.model_matrices
        pieces += [sparse_Z(codes, Z, b.n_levels) for codes, Z, b in zip(d.codes, Zs, d.structure.blocks)]
        pieces.append(sp.csr_matrix(X))
        owner += [k] * (len(d.structure.blocks) + 1)
    K = sp.hstack(pieces).tocsc()
    C = (K.T @ K).toarray()
    e, V = np.linalg.eigh(C)
    keep = e > 1e-10 * e.max()
    R = V[:, keep] * np.sqrt(e[keep])
    rank = int(keep.sum())
    bounds = np.cumsum([0] + [p.shape[1] for p in pieces])
    d0 = designs[0]
    rng = np.random.default_rng(seed)
    parts: list[dict[str, list]] = [{f: [] for f in Y_FIELDS} for _ in designs]
    for first in range(0, nsim, SIMULATION_BLOCK):
        size = min(SIMULATION_BLOCK, nsim - first)
        c = np.zeros((K.shape[1], size))
        for j, b in enumerate(d0.structure.blocks):  # the generating design's pieces come first
            u = rng.standard_normal((size, b.n_levels, b.q))
            Lam = b.lambda_of(params.theta)
            c[bounds[j] : bounds[j + 1]] = (params.sigma * u @ Lam.T).reshape(size, -1).T
        x_piece = len(d0.structure.blocks)
        c[bounds[x_piece] : bounds[x_piece + 1]] = np.asarray(params.beta)[:, None]
        z = rng.standard_normal((rank, size))
        chi2 = rng.chisquare(n - rank, size) if n > rank else np.zeros(size)
        Rz = R @ z
        Cc = C @ c
        Kty = Cc + params.sigma * Rz
        yty = (
            np.einsum("ib,ib->b", c, Cc)
            + 2 * params.sigma * np.einsum("ib,ib->b", c, Rz)
            + params.sigma**2 * (np.einsum("ib,ib->b", z, z) + chi2)
        )
        for k, d in enumerate(designs):
            rows = [Kty[lo:hi].T for o, lo, hi in zip(owner, bounds[:-1], bounds[1:]) if o == k]
            b1 = d.structure.blocks[0]
            parts[k]["A1y"].append(rows[0].reshape(size, b1.n_levels, b1.q))
            parts[k]["A2y"].append(np.hstack(rows[1:-1]) if len(rows) > 2 else np.zeros((size, 0)))
            parts[k]["AXy"].append(rows[-1])
            parts[k]["yy"].append(yty)
    return [{f: np.concatenate(v) for f, v in part.items()} for part in parts]


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


def bootstrap(
    problem: Problem,
    params: Params,
    reml: bool,
    nsim: int = 1000,
    seed: int | None = None,
    progress: bool | None = None,
    simulation: str = "plain",
) -> BatchFit:
    """Parametric bootstrap (``bootMer``; MixedModels.jl's ``parametricbootstrap(rng, n, m; β, σ, θ)``): the
    model refitted to ``nsim`` responses simulated with ``params``, warm-started there."""
    (products,) = simulated_products([problem.design], params, nsim, seed, simulation)
    return fit_products(problem, params.theta, products, reml, progress=progress).gathered()


def bootstrap_table(model, fits: BatchFit) -> pd.DataFrame:
    """Per replicate: fixed effects, the sds/correlations named as ``tidy``'s ran_pars rows ("group:term"),
    and sigma, for all replicates at once."""
    rows = {name: fits.beta[:, j] for j, name in enumerate(fits.fixef_names)}
    covariances = term_covariances(model.design, fits.theta, fits.sigma)
    rows.update({f"{group}:{term}": values for group, term, values in ran_pars(covariances, fits.sigma)})
    return pd.DataFrame(rows)


def confint(
    model, method: str = "wald", level: float = 0.95, nsim: int = 1000, seed: int | None = None
) -> pd.DataFrame:
    """Confidence intervals: ``"wald"`` for fixed effects, ``"boot"`` percentile intervals for all parameters."""
    alpha = (1 - level) / 2
    if method == "wald":
        z = scipy.special.ndtri(1 - alpha)
        se = np.sqrt(np.diag(model.vcov.values))
        est = model.fixef.values
        return pd.DataFrame(
            {f"{100 * alpha:.1f} %": est - z * se, f"{100 * (1 - alpha):.1f} %": est + z * se}, index=model.fixef.index
        )
    if method == "boot":
        fits = bootstrap(model.problem, model.params, model.reml, nsim, seed)
        table = bootstrap_table(model, fits)[fits.converged]
        q = table.quantile([alpha, 1 - alpha]).T
        q.columns = [f"{100 * alpha:.1f} %", f"{100 * (1 - alpha):.1f} %"]
        return q
    raise ValueError("method must be 'wald' or 'boot'")
