"""jaxlmm against lme4, mixedlm and statsmodels: single fits, a large crossed fit, cold start, memory.

    python benchmarks/bench_peers.py [--skip-insteval] [--repeats 5] [--out results.json]

Every measurement runs in a fresh process under ``/usr/bin/time`` (wall time of the whole process = the
cold start: import, compile, fit, print; and its peak resident memory).  jaxlmm runs twice, each with a
compilation cache folder of its own: once after an untimed run of the same command has filled it (what a
user has from the second run on), and once with it empty (a first run on a new machine).  Inside, the
first fit is timed, then the median of ``--repeats`` further fits of the same model ("warm"; at most 3 for
InstEval).  Each row records the log-likelihood reached: a faster fit to a worse optimum is not a win.  A
tool that is not installed (R/lme4, mixedlm, statsmodels) is skipped with a note.  Ratios are taken within
this one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TASKS = {  # name: (data, formula, reml, statsmodels (fixed, groups, re_formula) or None)
    "sleepstudy (Days | Subject) REML": (
        "sleepstudy",
        "Reaction ~ Days + (Days | Subject)",
        True,
        ("Reaction ~ Days", "Subject", "~Days"),
    ),
    "seed (1 | Group) ML": ("seed", "y ~ x + (1 | Group)", False, ("y ~ x", "Group", "~1")),
    "seed (1 + x | Group) ML": ("seed", "y ~ x + (1 + x | Group)", False, ("y ~ x", "Group", "~x")),
    "InstEval (1|s)+(1|d)+(1|dept) ML": ("InstEval", "y ~ service + (1 | s) + (1 | d) + (1 | dept)", False, None),
}

PYTHON_DRIVER = r"""
import json, statistics, sys, time
t0 = time.perf_counter()
tool, csv, formula, reml, repeats, sm = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1", int(sys.argv[5]), json.loads(sys.argv[6])
import pandas as pd
data = pd.read_csv(csv, dtype={**{c: str for c in ("Subject", "Group", "s", "d", "dept")}, "service": "category"})
if tool == "jaxlmm":
    import jaxlmm
    fit = lambda: jaxlmm.lmer(formula, data, reml=reml)
    loglik = lambda m: m.loglik
elif tool == "mixedlm":
    import mixedlm
    fit = lambda: mixedlm.lmer(formula, data, REML=reml)
    loglik = lambda m: float(m.logLik().value if hasattr(m.logLik(), "value") else m.logLik())
else:
    import statsmodels.formula.api as smf
    fit = lambda: smf.mixedlm(sm[0], data, groups=data[sm[1]], re_formula=sm[2]).fit(reml=reml)
    loglik = lambda m: float(m.llf)
t1 = time.perf_counter(); m = fit(); first = time.perf_counter() - t1
times = []
for _ in range(repeats):
    t = time.perf_counter(); m = fit(); times.append(time.perf_counter() - t)
print(json.dumps({"first_s": first, "warm_s": statistics.median(times) if times else None, "loglik": loglik(m)}))
"""

R_DRIVER = r"""
suppressPackageStartupMessages(library(lme4))
a <- commandArgs(TRUE); reml <- a[3] == "1"; repeats <- as.integer(a[4])
data <- read.csv(a[1], colClasses = c(Subject = "character", Group = "character", s = "character",
                                       d = "character", dept = "character", service = "character"))
f <- as.formula(a[2])
t <- system.time(m <- lmer(f, data, REML = reml))[["elapsed"]]
w <- if (repeats > 0) median(sapply(seq_len(repeats), function(i) system.time(lmer(f, data, REML = reml))[["elapsed"]])) else NA
cat(sprintf('{"first_s": %.6f, "warm_s": %s, "loglik": %.8f}\n', t, if (is.na(w)) "null" else sprintf("%.6f", w),
            as.numeric(logLik(m))))
"""


def export_data(folder: Path, with_insteval: bool) -> dict[str, Path]:
    import pandas as pd

    import jaxlmm

    paths = {"seed": folder / "seed.csv", "sleepstudy": folder / "sleepstudy.csv"}
    jaxlmm.load_seed().to_csv(paths["seed"], index=False)
    pd.read_csv(ROOT / "tests/fixtures/data/sleepstudy.csv").to_csv(paths["sleepstudy"], index=False)
    if with_insteval:
        target = folder / "InstEval.csv"
        if shutil.which("Rscript"):
            export = (
                f'data("InstEval", package = "lme4"); write.csv(InstEval[, c("s", "d", "dept", "service", '
                f'"y")], "{target}", row.names = FALSE)'
            )
            subprocess.run(["Rscript", "-e", export], check=False, capture_output=True)
        if not target.exists():
            try:
                import mixedlm

                mixedlm.load_insteval()[["s", "d", "dept", "service", "y"]].to_csv(target, index=False)
            except ImportError:
                pass
        if target.exists():
            paths["InstEval"] = target
    return paths


def timed(cmd: list[str], env: dict | None = None) -> dict | None:
    out = subprocess.run(
        ["/usr/bin/time", "-f", "TIME %e %M", *cmd], capture_output=True, text=True, check=False, env=env
    )
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("TIME ")]
    result = None
    for line in reversed(out.stdout.strip().splitlines()):
        if line.startswith("{"):
            result = json.loads(line)
            break
    if out.returncode != 0 or result is None or not lines:
        print(f"    failed: {' '.join(cmd[:2])} ... {out.stderr.strip()[-300:]}", file=sys.stderr)
        return None
    _, wall, rss_kb = lines[-1].split()
    result.update(process_s=float(wall), peak_mib=int(rss_kb) / 1024)
    return result


def available(tool: str) -> bool:
    if tool == "lme4":
        return (
            shutil.which("Rscript") is not None
            and subprocess.run(["Rscript", "-e", "library(lme4)"], capture_output=True, check=False).returncode == 0
        )
    module = {"jaxlmm": "jaxlmm", "jaxlmm (empty cache)": "jaxlmm", "mixedlm": "mixedlm", "statsmodels": "statsmodels"}[
        tool
    ]
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, check=False).returncode == 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-insteval", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    tools = [t for t in ("jaxlmm", "jaxlmm (empty cache)", "lme4", "mixedlm", "statsmodels") if available(t)]
    for t in ("lme4", "mixedlm", "statsmodels"):
        if t not in tools:
            print(f"note: {t} is not installed here; its rows are skipped")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = export_data(Path(tmp), not args.skip_insteval)
        for task, (data, formula, reml, sm) in TASKS.items():
            if data not in paths:
                if data == "InstEval" and not args.skip_insteval:
                    print("note: InstEval not available (needs R's lme4 or mixedlm); skipped")
                continue
            repeats = min(3, args.repeats) if data == "InstEval" else args.repeats
            for tool in tools:
                if tool == "statsmodels" and sm is None:
                    continue
                print(f"{task:36s} {tool:20s}", end="", flush=True)
                if tool == "lme4":
                    cmd = ["Rscript", "-e", R_DRIVER, str(paths[data]), formula, str(int(reml)), str(repeats)]
                else:
                    cmd = [
                        sys.executable,
                        "-c",
                        PYTHON_DRIVER,
                        tool.split()[0],
                        str(paths[data]),
                        formula,
                        str(int(reml)),
                        str(repeats),
                        json.dumps(sm),
                    ]
                env = None
                if tool.startswith("jaxlmm"):  # a cache folder of its own, empty: a first run on a new machine
                    env = dict(os.environ, JAXLMM_CACHE_DIR=tempfile.mkdtemp(dir=tmp))
                if tool == "jaxlmm":  # a second run: an untimed first one fills the cache
                    subprocess.run(cmd, env=env, capture_output=True, check=False)
                res = timed(cmd, env)
                if res is None:
                    print(" failed")
                    continue
                rows.append({"task": task, "tool": tool, **res})
                warm = f"{1e3 * res['warm_s']:9.1f} ms" if res.get("warm_s") is not None else " " * 12
                print(
                    f" first {res['first_s']:7.3f} s  warm {warm}  process {res['process_s']:6.2f} s  "
                    f"peak {res['peak_mib']:6.0f} MiB  logLik {res['loglik']:.4f}"
                )
    print("\nRatios against lme4 in this run (lme4 time / tool time; >1 means faster than lme4):")
    for task in TASKS:
        base = next((r for r in rows if r["task"] == task and r["tool"] == "lme4"), None)
        if base is None:
            continue
        for r in rows:
            if r["task"] == task and r["tool"] != "lme4":
                key = "warm_s" if r.get("warm_s") and base.get("warm_s") else "first_s"
                print(
                    f"  {task:36s} {r['tool']:20s} {key}: {base[key] / r[key]:6.2f}x   "
                    f"cold process: {base['process_s'] / r['process_s']:5.2f}x   "
                    f"logLik - lme4's: {r['loglik'] - base['loglik']:+.4f}"
                )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
