"""optax's L-BFGS (zoom line search) against jaxlmm's hand-written BFGS, measured side by side in one run.

    python benchmarks/bench_optax.py [--quick] [--insteval InstEval.csv] [--nsim 10000] [--chunks 256 1000]
                                     [--json out.json]

Both optimisers minimise the same pure-JAX criterion, ``jaxlmm.deviance.profiled_deviance``, unconstrained
(it is even in each column of Λ), each inside one ``jax.jit``-compiled ``lax.while_loop``.

* **Single fits** (every ``tests/fixtures/lme4`` case, and InstEval ML): from lme4's start
  ``theta_start · scale``.  Hand-written: ``jaxlmm.optimize.bfgs_steps`` preconditioned by
  ``theta_precondition`` (= ``D``), as the package's kernel runs it but without its rescaled start and its
  Newton polish.  optax: ``optax.lbfgs()`` (memory 10, zoom line search, as documented, with
  ``optax.value_and_grad_from_state``) in the coordinates ``θ = √D · φ``, i.e. the same diagonal
  preconditioning.  Both stop at ``max|∂f/∂θ · scale| < 1e-8``, or when the criterion changes by at most
  ``1e-12 (1 + |f|)`` in a step (what ``bfgs_steps`` also does), or after 2,000 evaluations.
  Recorded: compile time (trace + lower + compile), warm time (median of 5, 3 for InstEval; a run under
  10 ms is timed as the mean of back-to-back runs filling ~10 ms), criterion
  evaluations (value and gradient; optax: 1 + its line-search steps), the criterion minus lme4's best.
* **Batched lanes** (``y ~ x + (1 + x | Group)`` ML on the seed data, ``nsim`` responses of
  ``m.simulate(nsim, seed=1)``): ``jaxlmm.batch.fit_responses(m, Y)`` against vmapped optax lanes (each
  its own optimiser state) over chunks of lanes, warm-started at the fitted θ (``batch.warm_start``) in the
  coordinates ``θ = θ₀ + Lφ``, ``LLᵀ`` the fitted model's inverse Hessian, which is also the hand-written
  lanes' start.  Both use the lanes' tolerances: stop at ``max|g · scale| < 1e-6`` (or the criterion
  change above, or 300 evaluations); a lane fails unless ``max|g · scale| < 1e-3`` at the end.  Both timings
  include the response cross-products and the start Hessian; jaxlmm's also its β̂/σ̂ pass.  optax runs
  two ways: ``vmap`` of its loop over the chunk, and ``lax.map`` (the lanes one after another in one
  compiled call, no batched loops).  *Evaluation-equivalents* divide the lanes' time (wall minus the
  preparation) by the time of one vmapped value-and-gradient of a whole chunk, per replicate: how much
  criterion work the compiled loops really did, against the evaluations each fit needed.
* **Structure of the compiled loops**: criterion value-and-gradients per loop trip in the jaxpr, single and
  vmapped (a ``lax.cond`` whose predicate is batched becomes a select that runs both branches).

The persistent compilation cache is off (``JAXLMM_CACHE_DIR=""``), so compile times are real compiles.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

os.environ["JAXLMM_CACHE_DIR"] = ""  # no persistent compilation cache: compile times are real compiles

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

import jaxlmm
import jaxlmm.optimize
from jaxlmm import batch as jbatch
from jaxlmm.crossprod import crossproducts, response_products
from jaxlmm.design import build_design, theta_start
from jaxlmm.deviance import profiled_deviance
from jaxlmm.formula import parse_formula
from jaxlmm.model import theta_scale
from jaxlmm.optimize import bfgs_steps

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
FACTORS_CODED_BY_NUMBERS = {"cake": ["temperature"], "Assay": ["dilut"]}  # as tests/conftest.py
QUICK_CASES = ["dyestuff_reml", "sleepstudy_corr_reml", "seed_lmm3_ml", "penicillin_reml"]
INSTEVAL_FORMULA = "y ~ service + (1 | s) + (1 | d) + (1 | dept)"
SEED_FORMULA = "y ~ x + (1 + x | Group)"
SINGLE_GTOL, SINGLE_BUDGET = 1e-8, 2000  # the package kernel's gradient tolerance; evaluations
LANE_GTOL, LANE_BUDGET = 1e-6, 300  # bfgs_steps' default in the lanes; run_lanes' max_iter
LANE_OK = 1e-3  # a lane converged when max|g · scale| is below this at the end (as run_lanes)
SMALL_CHANGE = 1e-12  # relative criterion change that ends a descent (as bfgs_steps)


class Result(NamedTuple):
    theta: jnp.ndarray
    f: jnp.ndarray
    g: jnp.ndarray  # gradient with respect to theta
    evals: jnp.ndarray  # criterion value-and-gradient evaluations
    iterations: jnp.ndarray


# ---------------------------------------------------------------- the two optimisers, pure JAX
def handwritten(criterion, budget: int, gtol: float):
    """``solve(theta0, precondition, scale, cp)``: jaxlmm's BFGS (``bfgs_steps``) from theta0."""

    def solve(theta0, precondition, scale, cp):
        vg = jax.value_and_grad(lambda t: criterion(t, cp))
        if hasattr(jaxlmm.optimize, "bfgs_start"):  # bfgs_steps(value_and_grad, state, budget, scale, gtol)
            s = bfgs_steps(vg, jaxlmm.optimize.bfgs_start(theta0, precondition), budget, scale, gtol)
            return Result(s.theta, s.f, s.g, s.steps, s.steps)
        theta, _, _, f, g, steps, _, _ = bfgs_steps(
            vg, theta0, jnp.inf, jnp.zeros_like(theta0), precondition, 1.0, budget, scale, gtol=gtol
        )  # the earlier signature
        return Result(theta, f, g, steps, steps)

    return solve


def optax_lbfgs(criterion, budget: int, gtol: float, memory_size: int = 10):
    """``solve(phi0, offset, T, T_inv_t, scale, cp)``: ``optax.lbfgs()`` on ``φ ↦ f(offset + Tφ)`` from phi0,
    the documented loop (``value_and_grad_from_state``, ``update(..., value=, grad=, value_fn=)``)."""
    opt = optax.lbfgs(memory_size=memory_size)

    def solve(phi0, offset, T, T_inv_t, scale, cp):
        def fun(phi):
            return criterion(offset + T @ phi, cp)

        value_and_grad = optax.value_and_grad_from_state(fun)

        def body(carry):
            phi, state, it, evals, _ = carry
            value, grad = value_and_grad(phi, state=state)
            updates, state = opt.update(grad, state, phi, value=value, grad=grad, value_fn=fun)
            phi = optax.apply_updates(phi, updates)
            f, g = optax.tree.get(state, "value"), optax.tree.get(state, "grad")
            evals = evals + optax.tree.get(state, "num_linesearch_steps")
            small = jnp.max(jnp.abs((T_inv_t @ g) * scale)) < gtol
            stalled = jnp.abs(f - value) <= SMALL_CHANGE * (1.0 + jnp.abs(value))
            stop = small | stalled | (evals >= budget) | ~jnp.isfinite(f)
            return phi, state, it + 1, evals, stop

        init = (phi0, opt.init(phi0), jnp.asarray(0), jnp.asarray(1), jnp.asarray(False))  # 1: the start's evaluation
        phi, state, it, evals, _ = jax.lax.while_loop(lambda c: ~c[-1], body, init)
        g = optax.tree.get(state, "grad")
        return Result(offset + T @ phi, optax.tree.get(state, "value"), T_inv_t @ g, evals, it)

    return solve


def deviance_of(structure, reml):
    def criterion(theta, cp):
        return profiled_deviance(theta, cp, structure, reml)

    return criterion


# ---------------------------------------------------------------- data
def load_data(name: str) -> pd.DataFrame:
    if name == "seed":
        return jaxlmm.load_seed()
    data = pd.read_csv(FIXTURES / "data" / f"{name}.csv")
    for column in FACTORS_CODED_BY_NUMBERS.get(name, ()):
        data[column] = pd.Categorical(data[column])
    return data


def fixture_cases(quick: bool, only: list[str] | None = None) -> list[dict]:
    names = sorted(p.stem for p in (FIXTURES / "lme4").glob("*.json") if not p.stem.startswith("anova_"))
    if quick or only:
        names = [n for n in names if n in (only or QUICK_CASES)]
    return [json.loads((FIXTURES / "lme4" / f"{n}.json").read_text()) for n in names]


R_INSTEVAL = (
    'suppressPackageStartupMessages(library(lme4)); data("InstEval", package = "lme4"); '
    'if (!file.exists("{csv}")) write.csv(InstEval[, c("s", "d", "dept", "service", "y")], "{csv}", '
    "row.names = FALSE); "
    "m <- lmer(y ~ service + (1 | s) + (1 | d) + (1 | dept), InstEval, REML = FALSE); "
    'cat(sprintf("%.10f\\n", deviance(m)))'
)


def insteval(path: str | None) -> tuple[pd.DataFrame, float] | None:
    """InstEval (all four columns as strings) and lme4's ML deviance (one Rscript run, which also writes the
    CSV when it is absent; the deviance is kept beside the CSV as ``<name>.lme4.json``)."""
    csv = Path(path) if path else Path("/tmp/bench_optax/InstEval.csv")
    ref = csv.with_suffix(".lme4.json")
    if not ref.exists():
        if shutil.which("Rscript") is None:
            return None
        csv.parent.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(["Rscript", "-e", R_INSTEVAL.format(csv=csv)], capture_output=True, text=True, check=False)
        if out.returncode != 0:
            print("note: Rscript could not fit InstEval:", out.stderr.strip()[-300:])
            return None
        ref.write_text(json.dumps({"criterion": float(out.stdout.strip().splitlines()[-1])}))
    data = pd.read_csv(csv, dtype={"s": str, "d": str, "dept": str, "service": str})
    return data, json.loads(ref.read_text())["criterion"]


# ---------------------------------------------------------------- single fits
def timed_compile(fn, *args):
    t = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - t


def warm_median(compiled, args, repeats: int) -> tuple[float, Result]:
    """Median of ``repeats`` timings of a run; a sub-10 ms run is timed as the mean of enough back-to-back
    runs to fill about 10 ms, so the median is not one timer tick or one scheduler hiccup."""
    out = jax.block_until_ready(compiled(*args))  # the first run of the executable, not timed
    t = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    inner = int(min(1000, max(1, 0.01 // max(time.perf_counter() - t, 1e-6))))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(inner):
            out = compiled(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t) / inner)
    return statistics.median(times), jax.device_get(out)


def stop_reason(r: Result, scale: np.ndarray, gtol: float, budget: int) -> str:
    if not np.isfinite(r.f):
        return "nonfinite"
    if np.max(np.abs(r.g * scale)) < gtol:
        return "grad"
    return "budget" if r.evals >= budget else "Δf"


def single_fit(label: str, formula: str, data: pd.DataFrame, reml: bool, best: float, repeats: int) -> dict:
    design = build_design(parse_formula(formula), data)
    structure = design.structure
    cp = crossproducts(design.y, design.X, design.codes, design.Z, structure)
    scale = theta_scale(design)
    try:
        from jaxlmm.model import theta_precondition

        precondition = theta_precondition(design, scale)
    except ImportError:  # the API moved: the scale alone
        precondition = scale**2
    theta0 = theta_start(structure) * scale
    criterion = deviance_of(structure, reml)
    row = {"case": label, "n_theta": int(structure.n_theta), "reml": bool(reml)}

    hw_args = (theta0, precondition, scale, cp)
    compiled, row["hw_compile"] = timed_compile(handwritten(criterion, SINGLE_BUDGET, SINGLE_GTOL), *hw_args)
    row["hw_warm"], r = warm_median(compiled, hw_args, repeats)
    row.update(
        hw_evals=int(r.evals), hw_delta=float(r.f) - best, hw_stop=stop_reason(r, scale, SINGLE_GTOL, SINGLE_BUDGET)
    )

    root = np.sqrt(precondition)
    ox_args = (theta0 / root, np.zeros_like(theta0), np.diag(root), np.diag(1.0 / root), scale, cp)
    compiled, row["ox_compile"] = timed_compile(optax_lbfgs(criterion, SINGLE_BUDGET, SINGLE_GTOL), *ox_args)
    row["ox_warm"], r = warm_median(compiled, ox_args, repeats)
    row.update(
        ox_evals=int(r.evals),
        ox_iters=int(r.iterations),
        ox_delta=float(r.f) - best,
        ox_stop=stop_reason(r, scale, SINGLE_GTOL, SINGLE_BUDGET),
    )
    return row


def print_single(rows: list[dict]) -> None:
    print(
        "\n| case | θ | compile hw / optax (s) | warm hw / optax (ms) | evals hw / optax (iters) "
        "| criterion − lme4 hw / optax | stop hw / optax |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['case']} | {r['n_theta']} | {r['hw_compile']:.2f} / {r['ox_compile']:.2f} "
            f"| {1e3 * r['hw_warm']:.3g} / {1e3 * r['ox_warm']:.3g} | {r['hw_evals']} / {r['ox_evals']} "
            f"({r['ox_iters']}) | {r['hw_delta']:.2e} / {r['ox_delta']:.2e} | {r['hw_stop']} / {r['ox_stop']} |"
        )


def summarise_single(rows: list[dict]) -> dict:
    def tol(r):
        return 1e-6 * (1.0 + abs(r["hw_delta"]))

    s = {
        "cases": len(rows),
        "optax_faster_warm": sum(r["ox_warm"] < r["hw_warm"] for r in rows),
        "median_warm_ratio_optax_over_hw": statistics.median(r["ox_warm"] / r["hw_warm"] for r in rows),
        "median_compile_ratio_optax_over_hw": statistics.median(r["ox_compile"] / r["hw_compile"] for r in rows),
        "total_evals_hw": sum(r["hw_evals"] for r in rows),
        "total_evals_optax": sum(r["ox_evals"] for r in rows),
        "optax_fewer_evals": sum(r["ox_evals"] < r["hw_evals"] for r in rows),
        "optax_worse_optimum": [
            r["case"] for r in rows if r["ox_delta"] > r["hw_delta"] + 1e-6 * (1 + abs(r["hw_delta"]))
        ],
        "hw_worse_optimum": [
            r["case"] for r in rows if r["hw_delta"] > r["ox_delta"] + 1e-6 * (1 + abs(r["ox_delta"]))
        ],
        "same_optimum_and_optax_at_least_as_fast": [
            r["case"] for r in rows if abs(r["ox_delta"] - r["hw_delta"]) <= tol(r) and r["ox_warm"] <= r["hw_warm"]
        ],
        "median_ms_per_eval_hw": statistics.median(r["hw_warm"] / r["hw_evals"] * 1e3 for r in rows),
        "median_ms_per_eval_optax": statistics.median(r["ox_warm"] / r["ox_evals"] * 1e3 for r in rows),
    }
    print(
        f"\nsummary over {s['cases']} cases: optax faster warm in {s['optax_faster_warm']}; median warm ratio "
        f"optax/hw {s['median_warm_ratio_optax_over_hw']:.2f}, median compile ratio "
        f"{s['median_compile_ratio_optax_over_hw']:.2f}; evaluations hw {s['total_evals_hw']} vs optax "
        f"{s['total_evals_optax']} (optax fewer in {s['optax_fewer_evals']}); median ms per evaluation hw "
        f"{s['median_ms_per_eval_hw']:.4f} optax {s['median_ms_per_eval_optax']:.4f}"
    )
    print(f"optax worse optimum (> 1e-6): {s['optax_worse_optimum']}; hw worse: {s['hw_worse_optimum']}")
    print(f"same optimum and optax at least as fast: {s['same_optimum_and_optax_at_least_as_fast']}")
    return s


# ---------------------------------------------------------------- batched lanes
def padded_products(m, Y: np.ndarray) -> dict[str, np.ndarray]:
    """The responses' cross-products padded to the model's shape bucket, as ``fit_products`` pads them."""
    d = m.design
    products = dict(zip(jbatch.Y_FIELDS, response_products(Y, d.X, d.codes, d.Z, d.structure)))
    from jaxlmm.shapes import pad_response_products

    extra = (m.cp.AXX.shape[0],) if "p" in inspect.signature(pad_response_products).parameters else ()
    return pad_response_products(products, d.structure, m.structure, *extra)


def cp_axes_of(cp):
    return type(cp)(*(0 if f in jbatch.Y_FIELDS else None for f in cp._fields))


def lane_start(m, reml: bool):
    """The fitted θ moved off the bounds (``warm_start``) and the Cholesky factor of the start inverse
    Hessian, which ``fit_products`` gives its lanes."""
    scale = np.asarray(m.theta_scale)
    start = jbatch.warm_start(m.theta, m.design.structure, scale)
    L = np.linalg.cholesky(jbatch.start_inverse_hessian(m, start, reml))
    return start, L, np.linalg.inv(L).T, scale


def optax_lanes_fn(m, reml: bool, cp_axes, mode: str):
    """One compiled call fitting a chunk of lanes: ``vmap`` of the optax solver (every loop batched), or
    ``lax.map`` of it (the lanes one after another inside the call, each loop unbatched)."""
    solve = optax_lbfgs(deviance_of(m.structure, reml), LANE_BUDGET, LANE_GTOL)
    if mode == "vmap":
        return jax.jit(jax.vmap(solve, in_axes=(None, None, None, None, None, cp_axes)))

    def mapped(phi0, start, L, L_inv_t, scale, cp):
        batched = [f for f, ax in zip(cp._fields, cp_axes) if ax == 0]

        def one(y_fields):
            return solve(phi0, start, L, L_inv_t, scale, cp._replace(**dict(zip(batched, y_fields))))

        return jax.lax.map(one, tuple(getattr(cp, f) for f in batched))

    return jax.jit(mapped)


def prepare(m, Y: np.ndarray, reml: bool):
    """What both batched routes compute before their lanes: the responses' cross-products, the start θ
    and the start inverse Hessian (its Cholesky factor for optax)."""
    return padded_products(m, Y), *lane_start(m, reml)


def optax_batch(m, Y: np.ndarray, reml: bool, chunk: int, lanes_fn) -> tuple[dict, float]:
    """All of Y's columns through optax lanes, ``chunk`` lanes per compiled call (the last padded with
    copies).  Returns per-replicate arrays and the wall time (preparation included)."""
    t = time.perf_counter()
    B = Y.shape[1]
    products, start, L, L_inv_t, scale = prepare(m, Y, reml)
    phi0 = np.zeros_like(start)
    outs = []
    for first in range(0, B, chunk):
        real = min(chunk, B - first)
        lanes = np.arange(first, first + real)
        lanes = np.concatenate([lanes, np.repeat(lanes[:1], chunk - real)])
        cp = m.cp._replace(**{k: jnp.asarray(v[lanes]) for k, v in products.items()})
        outs.append((real, lanes_fn(phi0, start, L, L_inv_t, scale, cp)))
    res = [(k, jax.device_get(o)) for k, o in outs]
    wall = time.perf_counter() - t
    cat = {f: np.concatenate([np.asarray(getattr(o, f))[:k] for k, o in res]) for f in Result._fields}
    gmax = np.max(np.abs(cat["g"] * scale), axis=1)
    cat["converged"] = np.isfinite(cat["f"]) & (gmax < LANE_OK) & (cat["evals"] < LANE_BUDGET)
    cat["outer_trips"] = sum(int(np.max(np.asarray(o.iterations))) for _, o in res)
    return cat, wall


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def vg_chunk_time(m, reml: bool, products: dict, chunk: int, start: np.ndarray) -> float:
    """Median time of one vmapped criterion value-and-gradient over a chunk of lanes."""
    criterion = deviance_of(m.structure, reml)
    cp = m.cp._replace(**{k: jnp.asarray(v[np.arange(chunk) % v.shape[0]]) for k, v in products.items()})
    fn = jax.jit(jax.vmap(jax.value_and_grad(criterion), in_axes=(0, cp_axes_of(cp))))
    thetas = jnp.asarray(np.tile(start, (chunk, 1)))
    jax.block_until_ready(fn(thetas, cp))
    return median_time(lambda: fn(thetas, cp), 7)


def batched(nsim: int, chunks: list[int], repeats: int) -> dict:
    reml = False
    data = jaxlmm.load_seed()
    m = jaxlmm.lmer(SEED_FORMULA, data, reml=reml)
    Y = m.simulate(nsim, seed=1)
    products, start = padded_products(m, Y), lane_start(m, reml)[0]
    prep = median_time(lambda: prepare(m, Y, reml)[1], 3)
    out = {"nsim": nsim, "prep_s": prep, "rows": []}
    vg = {chunk: vg_chunk_time(m, reml, products, chunk, start) for chunk in chunks}

    def row(name, chunk, first, wall, failed, evals, diff, **extra):
        lanes = max(wall - prep, 1e-9)
        r = {
            "optimiser": name,
            "chunk": chunk,
            "first_call_s": first,
            "wall_s": wall,
            "lanes_s": lanes,
            "refits_per_s": nsim / wall,
            "failed": failed,
            "evals_mean": float(np.mean(evals)),
            "evals_max": int(np.max(evals)),
            "vg_chunk_ms": 1e3 * vg[chunk],
            "eval_equivalents": lanes / vg[chunk] * chunk / nsim,
            "max_abs_diff_vs_ref": float(np.nanmax(np.abs(diff))),
            "above_ref_1e-6": int(np.sum(diff > 1e-6)),
            "below_ref_1e-6": int(np.sum(diff < -1e-6)),
            **extra,
        }
        out["rows"].append(r)

    ref = None
    for chunk in chunks:  # jaxlmm's own batched refits
        t = time.perf_counter()
        jbatch.fit_responses(m, Y, chunk_size=chunk, progress=False)
        first = time.perf_counter() - t
        fits, times = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            fits.append(jbatch.fit_responses(m, Y, chunk_size=chunk, progress=False))
            times.append(time.perf_counter() - t)
        fit = fits[-1]
        ref = fit if ref is None else ref
        row(
            "jaxlmm fit_responses (hand-written BFGS)",
            chunk,
            first,
            statistics.median(times),
            int((~fit.converged).sum()),
            fit.iterations,
            fit.criterion - ref.criterion,
        )
    cp_axes = cp_axes_of(m.cp)
    for mode in ("vmap", "lax.map"):  # optax lanes
        for chunk in chunks:
            lanes_fn = optax_lanes_fn(m, reml, cp_axes, mode)
            t = time.perf_counter()
            optax_batch(m, Y, reml, chunk, lanes_fn)
            first = time.perf_counter() - t
            walls = []
            for _ in range(repeats):
                res, w = optax_batch(m, Y, reml, chunk, lanes_fn)
                walls.append(w)
            row(
                f"optax.lbfgs lanes ({mode})",
                chunk,
                first,
                statistics.median(walls),
                int((~res["converged"]).sum()),
                res["evals"],
                res["f"] - ref.criterion,
                **({"outer_trips": res["outer_trips"]} if mode == "vmap" else {}),
            )
    print(
        f"\nbatched refits: {SEED_FORMULA} ML, {nsim} responses (m.simulate(nsim, seed=1)); wall = median of "
        f"{repeats} calls after a first (compiling) call; both routes include the preparation "
        f"(cross-products of Y, start Hessian: {prep:.3f} s); lanes = wall − preparation"
    )
    print(
        "| optimiser | chunk | first call s | wall s | refits/s | failed | evals per fit mean / max "
        "| eval-equivalents per fit | max |Δcriterion| vs jaxlmm | above / below by > 1e-6 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in out["rows"]:
        print(
            f"| {r['optimiser']} | {r['chunk']} | {r['first_call_s']:.2f} | {r['wall_s']:.3f} | "
            f"{r['refits_per_s']:,.0f} | {r['failed']} | {r['evals_mean']:.1f} / {r['evals_max']} | "
            f"{r['eval_equivalents']:.1f} | {r['max_abs_diff_vs_ref']:.1e} | {r['above_ref_1e-6']} / "
            f"{r['below_ref_1e-6']} |"
        )
    print(
        "one vmapped value-and-gradient of a chunk: " + ", ".join(f"{c} lanes {1e3 * v:.2f} ms" for c, v in vg.items())
    )
    for r in out["rows"]:
        if "outer_trips" in r:
            print(
                f"{r['optimiser']} chunk {r['chunk']}: optimiser-loop trips (the slowest lane's iterations) "
                f"summed over chunks {r['outer_trips']}"
            )
    return out


# ---------------------------------------------------------------- structure of the compiled loops
def _subjaxprs(eqn):
    for p in eqn.params.values():
        for sub in p if isinstance(p, (tuple, list)) else [p]:
            if hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                yield sub.jaxpr
            elif hasattr(sub, "eqns"):
                yield sub


def _passes(jaxpr, loops: list, depth: int = 0) -> tuple[int, int]:
    """(min, max) criterion passes one run of ``jaxpr`` executes, nested while loops excluded (each is
    recorded in ``loops`` as (depth, (min, max)) per trip).  A cond runs one branch; a cond turned into a
    select by vmap has both branches inlined, so both count."""
    lo = hi = 0
    for e in jaxpr.eqns:
        name = e.primitive.name
        if name in ("pjit", "jit") and e.params.get("name") == "tagged_criterion":
            lo, hi = lo + 1, hi + 1
        elif name == "while":
            loops.append((depth + 1, _passes(e.params["body_jaxpr"].jaxpr, loops, depth + 1)))
        elif name == "cond":
            counts = [_passes(b.jaxpr, loops, depth) for b in e.params["branches"]]
            lo, hi = lo + min(c[0] for c in counts), hi + max(c[1] for c in counts)
        else:
            for s in _subjaxprs(e):
                a, b = _passes(s, loops, depth)
                lo, hi = lo + a, hi + b
    return lo, hi


def loop_structure() -> list[dict]:
    """Value-and-gradient evaluations per trip of each while loop, single and vmapped (seed model)."""
    data = jaxlmm.load_seed()
    design = build_design(parse_formula(SEED_FORMULA), data)
    structure = design.structure
    cp = crossproducts(design.y, design.X, design.codes, design.Z, structure)
    scale = theta_scale(design)
    theta0 = theta_start(structure) * scale

    def tagged_criterion(theta, cp):
        return profiled_deviance(theta, cp, structure, False)

    crit = jax.jit(tagged_criterion, inline=False)
    k = theta0.size
    solvers = {
        "hand-written": (handwritten(crit, 10, 1e-8), (theta0, scale**2, scale, cp), (0, None, None, None)),
        "optax.lbfgs": (
            optax_lbfgs(crit, 10, 1e-8),
            (theta0, np.zeros(k), np.eye(k), np.eye(k), scale, cp),
            (0, None, None, None, None, None),
        ),
    }
    rows = []
    for name, (fn, args, axes) in solvers.items():
        for vmapped in (False, True):
            f = jax.vmap(fn, in_axes=axes) if vmapped else fn
            a = (np.stack([args[0]] * 2), *args[1:]) if vmapped else args
            loops = []
            _passes(jax.make_jaxpr(f)(*a).jaxpr, loops)
            # a value-and-gradient is two passes (forward and transposed)
            trips = [(d, tuple(c // 2 for c in counts)) for d, counts in loops]
            rows.append({"optimiser": name, "vmapped": vmapped, "loops": trips})
    print(
        "\nvalue-and-gradient evaluations per loop trip (depth 1: the optimiser's loop, excluding nested loops; "
        "depth 2: a line-search step), as (min, max) over the cond branches taken"
    )
    for r in rows:
        desc = ", ".join(f"depth {d}: {lo}" + ("" if lo == hi else f"–{hi}") for d, (lo, hi) in sorted(r["loops"]))
        print(f"  {r['optimiser']:13s} {'vmapped' if r['vmapped'] else 'single '}  {desc}")
    return rows


# ---------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 4 cases, 1,000 responses, no InstEval")
    ap.add_argument("--insteval", help="InstEval CSV (columns s, d, dept, service, y); made with Rscript if absent")
    ap.add_argument("--no-insteval", action="store_true")
    ap.add_argument("--nsim", type=int, default=None)
    ap.add_argument("--chunks", type=int, nargs="+", default=[256, 1000])
    ap.add_argument("--cases", nargs="+", help="only these fixture cases (and no InstEval unless --insteval)")
    ap.add_argument("--no-batch", action="store_true", help="single fits only")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per batched route (median)")
    ap.add_argument("--json", help="write every measurement here")
    args = ap.parse_args()
    nsim = args.nsim or (1000 if args.quick else 10_000)
    repeats = 1 if args.quick else args.repeats
    load0 = os.getloadavg()
    print(
        f"jax {jax.__version__}, optax {optax.__version__}, {jax.devices()[0].platform}, {os.cpu_count()} CPUs; "
        f"load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}"
    )
    results: dict = {"jax": jax.__version__, "optax": optax.__version__, "loadavg_start": load0}

    results["loops"] = loop_structure()

    rows = []
    for fx in fixture_cases(args.quick, args.cases):
        rows.append(single_fit(fx["name"], fx["formula"], load_data(fx["data"]), fx["REML"], fx["criterion"], 5))
        print(
            f"  {fx['name']}: hw {rows[-1]['hw_evals']} evals {1e3 * rows[-1]['hw_warm']:.3g} ms, optax "
            f"{rows[-1]['ox_evals']} evals {1e3 * rows[-1]['ox_warm']:.3g} ms",
            flush=True,
        )
    if not (args.quick or args.no_insteval or args.cases) or args.insteval:
        got = insteval(args.insteval)
        if got is None:
            print("note: InstEval not available (needs Rscript with lme4, or --insteval CSV with a .lme4.json)")
        else:
            data, best = got
            rows.append(single_fit("InstEval ML", INSTEVAL_FORMULA, data, False, best, 3))
    print_single(rows)
    results["single"] = rows
    fixtures = [r for r in rows if r["case"] != "InstEval ML"]
    results["single_summary"] = summarise_single(fixtures) if fixtures else None

    if not args.no_batch:
        results["batch"] = batched(nsim, args.chunks, repeats)
    results["loadavg_end"] = os.getloadavg()
    print(
        f"\nload average at the end {results['loadavg_end'][0]:.2f} {results['loadavg_end'][1]:.2f} "
        f"{results['loadavg_end'][2]:.2f}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
