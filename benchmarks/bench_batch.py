"""Batched refits against lme4, measured side by side in one run.

    python benchmarks/bench_batch.py [--nsim 10000] [--lme4-nsim 200]

Model ``y ~ x + (1 + x | Group)`` by ML on the shipped seed-shaped data (1,001 rows, 21 groups).
* jaxlmm: simulate + refit ``nsim`` responses (chunks of 1,000, one compiled vmapped call each);
  compile time is reported separately (first chunk of a fresh process minus a warm chunk).
* lme4: ``bootMer`` refits of the same model (Rscript; skipped with a note when R is absent).
* PB anova against ``(1 | Group)``: ``jaxlmm.pbtest`` with ``nsim`` simulations.
"""

import argparse
import shutil
import subprocess
import tempfile
import time

import jaxlmm
from jaxlmm.batch import fit_responses

LME4 = r"""
suppressPackageStartupMessages(library(lme4))
d <- read.csv("{csv}")
m <- lmer(y ~ x + (1 + x | Group), d, REML = FALSE)
t <- system.time(b <- bootMer(m, function(f) fixef(f), nsim = {nsim}, seed = 1))[["elapsed"]]
cat(sprintf("%.6f\n", t))
"""


def lme4_rate(nsim: int) -> float | None:
    if shutil.which("Rscript") is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        csv = f"{tmp}/seed.csv"
        jaxlmm.load_seed().to_csv(csv, index=False)
        out = subprocess.run(["Rscript", "-e", LME4.format(csv=csv, nsim=nsim)], capture_output=True, text=True, check=False)
        if out.returncode != 0:
            return None
        return nsim / float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nsim", type=int, default=10_000)
    ap.add_argument("--lme4-nsim", type=int, default=200)
    args = ap.parse_args()
    data = jaxlmm.load_seed()
    m = jaxlmm.lmer("y ~ x + (1 + x | Group)", data, reml=False)
    m1 = jaxlmm.lmer("y ~ x + (1 | Group)", data, reml=False)

    t = time.perf_counter()
    fit_responses(m, m.simulate(1000, seed=0))
    first = time.perf_counter() - t
    t = time.perf_counter()
    fit_responses(m, m.simulate(1000, seed=1))
    warm_chunk = time.perf_counter() - t

    t = time.perf_counter()
    fits = fit_responses(m, m.simulate(args.nsim, seed=2))
    batch_s = time.perf_counter() - t
    rate = args.nsim / batch_s

    jaxlmm.pbtest(m, m1, nsim=1000, seed=0)  # compile both models' kernels
    t = time.perf_counter()
    pb = jaxlmm.pbtest(m, m1, nsim=args.nsim, seed=3)
    pb_s = time.perf_counter() - t

    r_rate = lme4_rate(args.lme4_nsim)
    print(f"jaxlmm: {args.nsim} refits (simulation included) in {batch_s:.2f} s = {rate:,.0f} refits/s; "
          f"failed {fits.n_failed}; mean/max Newton iterations {fits.iterations.mean():.1f}/{fits.iterations.max()}")
    print(f"jaxlmm: compile time about {first - warm_chunk:.1f} s (first chunk {first:.2f} s, warm chunk {warm_chunk:.2f} s)")
    print(f"jaxlmm: PB anova (1+x|Group) vs (1|Group), {args.nsim} simulations: {pb_s:.2f} s, p_boot {pb.p_boot:.4f}, "
          f"failed {pb.n_failed}")
    if r_rate is None:
        print("lme4: not measured (Rscript or lme4 absent)")
    else:
        print(f"lme4 bootMer: {r_rate:,.1f} refits/s ({args.lme4_nsim} refits)")
        print(f"ratio jaxlmm / lme4: {rate / r_rate:,.1f}x")


if __name__ == "__main__":
    main()
