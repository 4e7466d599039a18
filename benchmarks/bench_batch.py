"""Batched refits against lme4, measured side by side in one run.

    python benchmarks/bench_batch.py [--nsim 10000] [--lme4-nsim 200]

Model ``y ~ x + (1 + x | Group)`` by ML on the shipped seed-shaped data (1,001 rows, 21 groups).
* jaxlmm: ``m.bootstrap(nsim)`` = simulate + refit ``nsim`` responses, with lme4's plain simulation of y
  and with the direct draw of the cross-products; compile time is reported separately.
* PB anova against ``(1 | Group)``: ``jaxlmm.pbtest`` with ``nsim`` simulations (both models refitted).
* lme4: ``bootMer`` refits and pbkrtest's ``PBmodcomp`` of the same models (Rscript; skipped with a note
  when R is absent), with ``--lme4-nsim`` simulations each.

Every jaxlmm figure is the median of ``--repeats`` runs after a compiling one; ratios compare rates (refits
or simulations per second), each tool at its own number of simulations.
"""

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time

import jaxlmm

LME4 = r"""
suppressPackageStartupMessages({{library(lme4); library(pbkrtest)}})
d <- read.csv("{csv}")
m <- lmer(y ~ x + (1 + x | Group), d, REML = FALSE)
m1 <- lmer(y ~ x + (1 | Group), d, REML = FALSE)
t <- system.time(b <- bootMer(m, function(f) fixef(f), nsim = {nsim}, seed = 1))[["elapsed"]]
t2 <- system.time(pb <- PBmodcomp(m, m1, nsim = {nsim}, seed = 1))[["elapsed"]]
cat(sprintf("%.6f %.6f\n", t, t2))
"""


def lme4_rates(nsim: int) -> tuple[float, float] | None:
    """lme4's bootMer refits/s and pbkrtest's PBmodcomp seconds per simulation (both models refitted)."""
    if shutil.which("Rscript") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        csv = f"{tmp}/seed.csv"
        jaxlmm.load_seed().to_csv(csv, index=False)
        out = subprocess.run(
            ["Rscript", "-e", LME4.format(csv=csv, nsim=nsim)], capture_output=True, text=True, check=False
        )
        if out.returncode != 0:
            return None
        boot_s, pb_s = map(float, out.stdout.strip().splitlines()[-1].split())
        return nsim / boot_s, pb_s / nsim


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nsim", type=int, default=10_000)
    ap.add_argument("--lme4-nsim", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    data = jaxlmm.load_seed()
    m = jaxlmm.lmer("y ~ x + (1 + x | Group)", data, reml=False)
    m1 = jaxlmm.lmer("y ~ x + (1 | Group)", data, reml=False)

    t = time.perf_counter()
    m.bootstrap(args.nsim, seed=0)
    first = time.perf_counter() - t
    t = time.perf_counter()
    m.bootstrap(args.nsim, seed=1)
    again = time.perf_counter() - t
    print(
        f"jaxlmm: compile time about {first - again:.1f} s (first {args.nsim} refits in a new process "
        f"{first:.2f} s, the same again {again:.2f} s)"
    )
    m.bootstrap(args.nsim, seed=1, simulation="direct")  # its shapes are compiled now too

    rates = {}
    for simulation in ("plain", "direct"):
        times = []
        for r in range(args.repeats):
            t = time.perf_counter()
            fits = m.bootstrap(args.nsim, seed=2 + r, simulation=simulation)
            times.append(time.perf_counter() - t)
        seconds = statistics.median(times)
        rates[simulation] = args.nsim / seconds
        print(
            f"jaxlmm bootstrap, {simulation} simulation: {args.nsim} refits in {seconds:.2f} s (median) = "
            f"{rates[simulation]:,.0f} refits/s; failed {fits.n_failed}; BFGS steps mean "
            f"{fits.iterations.mean():.1f}, max {fits.iterations.max()}"
        )
    jaxlmm.pbtest(m, m1, nsim=args.nsim, seed=0)  # compile the small model's kernels too
    pb_seconds = {}
    for simulation in ("plain", "direct"):
        times = []
        for r in range(args.repeats):
            t = time.perf_counter()
            pb = jaxlmm.pbtest(m, m1, nsim=args.nsim, seed=3 + r, simulation=simulation)
            times.append(time.perf_counter() - t)
        pb_seconds[simulation] = statistics.median(times)
        print(
            f"jaxlmm PB anova (1+x|Group) vs (1|Group), {simulation} simulation, {args.nsim} simulations: "
            f"{pb_seconds[simulation]:.2f} s (median), p_boot {pb.p_boot:.4f}, failed {pb.n_failed}"
        )

    r = lme4_rates(args.lme4_nsim)
    if r is None:
        print("lme4: not measured (Rscript, lme4 or pbkrtest absent)")
        return
    boot_rate, pb_per_sim = r
    print(
        f"lme4 bootMer: {boot_rate:,.1f} refits/s; pbkrtest PBmodcomp: {pb_per_sim * 1e3:.1f} ms per simulation "
        f"({args.lme4_nsim} each)"
    )
    for simulation in ("plain", "direct"):
        print(
            f"ratio jaxlmm / lme4, refits per second ({simulation}): {rates[simulation] / boot_rate:,.1f}x;  "
            f"PB anova simulations per second ({simulation}): "
            f"{args.nsim / pb_seconds[simulation] * pb_per_sim:,.1f}x"
        )


if __name__ == "__main__":
    main()
