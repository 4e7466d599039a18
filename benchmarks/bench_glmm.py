"""jaxlmm's glmer against lme4's glmer/bootMer and mixedlm's glmer/bootMer, in one run.

    python benchmarks/bench_glmm.py [--nsim 4096] [--repeats 11] [--devices 1] [--sizes 40]

* single fits (warm: the median of ``--repeats`` fits after a first, compiling one) of the cbpp binomial
  model ``cbind(incidence, size - incidence) ~ period + (1 | herd)`` and of the crossed subjects × items
  binomial model of the fixtures (600 rows, ``acc ~ cond + (1 | subj) + (1 | item)``), each with the
  -2 logLik it reached (a faster fit to a worse optimum is not a win);
* the parametric bootstrap of cbpp: jaxlmm's batched refits (``--nsim`` replicates after a warm-up call
  of the same chunk width; failed replicates counted), lme4's ``bootMer`` (100 replicates) and mixedlm's
  ``bootMer`` (50), as refits per second.

* ``--sizes K`` (runs this alone): a loop of K binomial fits ``y ~ x + (1 | g)`` to data sets of K different group counts
  (first fit, the whole loop, and the number of XLA executables compiled in it; bucketed shapes make
  that number grow with the log of the sizes).

* ``--datasets B`` (runs this alone): ``fit_batch(formula, datasets=[...], family="binomial")`` over B
  data sets ``y ~ x + (1 | g)`` of 20 to 60 groups (one call after a warm-up call of the same shapes),
  fits per second, against a loop of 20 lme4 glmer fits of the first of them (timed, scaled).

jaxlmm splits the lanes over one XLA CPU device per core (``--xla_force_host_platform_device_count``,
set below before JAX starts), or over ``--devices`` of them.  R (lme4) and mixedlm are skipped with a
note when not installed.  Compiled kernels go to a fresh persistent cache (``JAXLMM_CACHE_DIR``), so
first fits compile.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_devices = sys.argv[sys.argv.index("--devices") + 1] if "--devices" in sys.argv else os.cpu_count() or 1
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={_devices}")
os.environ.setdefault("JAXLMM_CACHE_DIR", tempfile.mkdtemp(prefix="bench_glmm_xla_"))

import numpy as np
import pandas as pd

import jaxlmm

ROOT = Path(__file__).resolve().parents[1]
GLMM = ROOT / "tests" / "fixtures" / "glmm"
CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
CROSSED = "acc ~ cond + (1 | subj) + (1 | item)"

R_SCRIPT = r"""
suppressMessages({library(lme4); library(jsonlite)})
args <- commandArgs(TRUE); repeats <- as.integer(args[3])
cbpp <- read.csv(args[1]); cbpp$herd <- factor(cbpp$herd); cbpp$period <- factor(cbpp$period)
crossed <- read.csv(args[2])
timed <- function(f, k) { t <- numeric(k); v <- NA
  for (i in seq_len(k)) { t0 <- proc.time()[["elapsed"]]; v <- f(); t[i] <- proc.time()[["elapsed"]] - t0 }
  list(median = median(t), crit = v) }
f1 <- function() -2 * as.numeric(logLik(glmer(cbind(incidence, size - incidence) ~ period + (1 | herd),
                                               cbpp, family = binomial)))
f2 <- function() -2 * as.numeric(logLik(glmer(acc ~ cond + (1 | subj) + (1 | item), crossed, family = binomial)))
f1(); f2()
g <- glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, family = binomial)
t0 <- proc.time()[["elapsed"]]
b <- suppressWarnings(suppressMessages(bootMer(g, function(m) c(fixef(m), getME(m, "theta")), nsim = 100, seed = 1)))
boot <- proc.time()[["elapsed"]] - t0
cat(toJSON(list(cbpp = timed(f1, repeats), crossed = timed(f2, max(3, repeats %/% 2)), boot_rate = 100 / boot),
           auto_unbox = TRUE, digits = NA))
"""


def frame(name: str) -> pd.DataFrame:
    data = pd.read_csv(GLMM / f"{name}.csv")
    for c in ("herd", "period", "subj", "item", "cond"):
        if c in data:
            data[c] = pd.Categorical(data[c].astype(str))
    return data


def timed(fit, repeats: int) -> tuple[float, float, float]:
    """(first fit's seconds, median of the warm fits, -2 logLik)."""
    t0 = time.perf_counter()
    crit = fit()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        crit = fit()
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times), crit


def run_jaxlmm(args) -> dict:
    cbpp, crossed = frame("cbpp"), frame("crossed")
    out = {
        "cbpp": timed(lambda: jaxlmm.glmer(CBPP, cbpp).criterion, args.repeats),
        "crossed": timed(lambda: jaxlmm.glmer(CROSSED, crossed).criterion, max(3, args.repeats // 2)),
    }
    m = jaxlmm.glmer(CBPP, cbpp)
    m.refit(m.simulate(args.nsim, seed=1)[:, : min(args.nsim, 1024)])  # compiles the lane kernel
    Y = m.simulate(args.nsim, seed=2)
    t0 = time.perf_counter()
    fits = m.refit(Y)
    seconds = time.perf_counter() - t0
    out["boot_rate"] = args.nsim / seconds
    out["boot_failed"] = fits.n_failed
    return out


def sizes_data(n_groups: int, seed: int) -> pd.DataFrame:
    """A binomial data set ``y ~ x + (1 | g)`` with ``n_groups`` groups of 3 to 8 rows (θ = 0.8)."""
    rng = np.random.default_rng(seed)
    per = rng.integers(3, 9, n_groups)
    g = np.repeat(np.arange(n_groups), per)
    x = rng.standard_normal(g.size)
    eta = -0.3 + 0.7 * x + 0.8 * rng.standard_normal(n_groups)[g]
    y = (rng.random(g.size) < 1 / (1 + np.exp(-eta))).astype(float)
    return pd.DataFrame({"y": y, "x": x, "g": pd.Categorical(g.astype(str))})


def run_sizes(args) -> dict:
    """A loop of ``args.sizes`` glmer fits of all-different group counts (12, 19, 26, ...)."""
    from jax import monitoring

    compiles = [0]

    def count(event: str, duration: float, **kwargs) -> None:
        compiles[0] += event == "/jax/core/compile/backend_compile_duration"

    monitoring.register_event_duration_secs_listener(count)
    datasets = [sizes_data(12 + 7 * k, k) for k in range(args.sizes)]
    times, criteria = [], []
    for data in datasets:
        t0 = time.perf_counter()
        criteria.append(jaxlmm.glmer("y ~ x + (1 | g)", data, family="binomial").criterion)
        times.append(time.perf_counter() - t0)
    return {
        "first": times[0],
        "loop": sum(times),
        "median": statistics.median(times),
        "compiles": compiles[0],
        "criteria": criteria,
    }


R_DATASETS = r"""
suppressMessages({library(lme4)})
args <- commandArgs(TRUE); files <- args[-1]
t0 <- proc.time()[["elapsed"]]
for (f in files) { d <- read.csv(f); d$g <- factor(d$g); glmer(y ~ x + (1 | g), d, family = binomial) }
cat((proc.time()[["elapsed"]] - t0) / length(files), "\n")
"""


def run_datasets(args) -> dict:
    """``fit_batch`` over ``args.datasets`` binomial data sets of varied sizes, and lme4 on 20 of them."""
    rng = np.random.default_rng(7)
    datasets = [sizes_data(int(rng.integers(20, 61)), 1000 + k) for k in range(args.datasets)]
    warm = [sizes_data(int(rng.integers(20, 61)), 5000 + k) for k in range(args.datasets)]
    jaxlmm.fit_batch("y ~ x + (1 | g)", datasets=warm, family="binomial")  # compiles the lane kernels
    t0 = time.perf_counter()
    fit = jaxlmm.fit_batch("y ~ x + (1 | g)", datasets=datasets, family="binomial")
    out = {"rate": args.datasets / (time.perf_counter() - t0), "failed": fit.n_failed, "lme4": None}
    if shutil.which("Rscript"):
        with tempfile.TemporaryDirectory() as tmp:
            files = []
            for k, d in enumerate(datasets[:20]):
                files.append(str(Path(tmp) / f"d{k}.csv"))
                d.to_csv(files[-1], index=False)
            script = Path(tmp) / "fits.R"
            script.write_text(R_DATASETS)
            res = subprocess.run(["Rscript", str(script), "x", *files], capture_output=True, text=True, check=False)
            if res.returncode == 0:
                out["lme4"] = 1.0 / float(res.stdout.split()[-1])
    return out


def run_lme4(args) -> dict | None:
    if shutil.which("Rscript") is None:
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".R", delete=False) as f:
        f.write(R_SCRIPT)
    res = subprocess.run(
        ["Rscript", f.name, str(GLMM / "cbpp.csv"), str(GLMM / "crossed.csv"), str(args.repeats)],
        capture_output=True,
        text=True,
        check=False,
    )
    os.unlink(f.name)
    if res.returncode != 0:
        print("lme4 failed:", res.stderr[-500:])
        return None
    return json.loads(res.stdout.strip().splitlines()[-1])


def run_mixedlm(args) -> dict | None:
    try:
        import mixedlm
        from mixedlm import families
    except ImportError:
        return None
    cbpp, crossed = frame("cbpp"), frame("crossed")
    cbpp = cbpp.assign(prop=cbpp.incidence / cbpp["size"], herd=cbpp.herd.astype(str), period=cbpp.period.astype(str))
    crossed = crossed.assign(
        subj=crossed.subj.astype(str), item=crossed.item.astype(str), cond=crossed.cond.astype(str)
    )
    trials = cbpp["size"].to_numpy(float)

    def fit_cbpp():
        return mixedlm.glmer("prop ~ period + (1 | herd)", cbpp, family=families.Binomial(), weights=trials)

    out = {
        "cbpp": timed(lambda: -2 * float(fit_cbpp().logLik().value), max(3, args.repeats // 2)),
        "crossed": timed(
            lambda: -2 * float(mixedlm.glmer(CROSSED, crossed, family=families.Binomial()).logLik().value), 3
        ),
    }
    g = fit_cbpp()
    t0 = time.perf_counter()
    mixedlm.bootMer(g, nsim=50, seed=1)
    out["boot_rate"] = 50 / (time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nsim", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--devices", type=int, default=os.cpu_count() or 1, help="XLA CPU devices")
    parser.add_argument("--sizes", type=int, default=0, help="the loop of fits of different sizes (0: skip)")
    parser.add_argument("--datasets", type=int, default=0, help="fit_batch over this many data sets (0: skip)")
    args = parser.parse_args()
    import jax

    print(f"jaxlmm on {jax.local_device_count()} XLA CPU device(s); {os.cpu_count()} cores")
    if args.sizes:
        r = run_sizes(args)
        print(
            f"| loop of {args.sizes} glmer fits, different group counts | first {r['first']:.2f} s, loop "
            f"{r['loop']:.1f} s, median {r['median'] * 1e3:.0f} ms | {r['compiles']} executables compiled |"
        )
        return
    if args.datasets:
        r = run_datasets(args)
        lme4 = f"{r['lme4']:.1f} fits/s" if r["lme4"] else "not installed"
        ratio = f"{r['rate'] / r['lme4']:.0f}×" if r["lme4"] else "—"
        print(
            f"| fit_batch of {args.datasets} binomial data sets (20-60 groups) | {r['rate']:.0f} fits/s "
            f"({r['failed']} failed) | lme4 glmer loop {lme4} | {ratio} |"
        )
        return
    results = {"jaxlmm": run_jaxlmm(args), "lme4": run_lme4(args), "mixedlm": run_mixedlm(args)}
    lme4 = results["lme4"]
    print("| task | jaxlmm | lme4 | mixedlm | lme4 / jaxlmm |")
    print("|---|---|---|---|---|")
    for task in ("cbpp", "crossed"):
        j = results["jaxlmm"][task]
        cells = [f"{j[1] * 1e3:.1f} ms (first {j[0]:.1f} s), −2ℓ {j[2]:.6f}"]
        for peer in ("lme4", "mixedlm"):
            r = results[peer]
            if r is None:
                cells.append("not installed")
            elif peer == "lme4":
                cells.append(f"{r[task]['median'] * 1e3:.1f} ms, −2ℓ {r[task]['crit']:.6f}")
            else:
                cells.append(f"{r[task][1] * 1e3:.1f} ms, −2ℓ {r[task][2]:.6f}")
        ratio = f"{lme4[task]['median'] / j[1]:.1f}×" if lme4 else "—"
        print(f"| {task} glmer, warm single fit | " + " | ".join(cells) + f" | {ratio} |")
    j = results["jaxlmm"]
    boot = [f"{j['boot_rate']:.0f} refits/s ({args.nsim} replicates, {j['boot_failed']} failed)"]
    boot += [f"{results[p]['boot_rate']:.1f} refits/s" if results[p] else "not installed" for p in ("lme4", "mixedlm")]
    ratio = f"{j['boot_rate'] / lme4['boot_rate']:.0f}×" if lme4 else "—"
    print("| cbpp parametric bootstrap | " + " | ".join(boot) + f" | {ratio} (jaxlmm / lme4) |")
    np.set_printoptions(precision=4)
    print(json.dumps(results, default=float))


if __name__ == "__main__":
    main()
