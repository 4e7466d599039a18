"""Type III anova and Kenward–Roger: jaxlmm against lmerTest/pbkrtest on InstEval-sized data.

    python benchmarks/bench_inference.py [--repeats 2] [--subset 3000] [--r-timeout 900] [--out results.json]

The model is lme4's InstEval example with REML, ``y ~ service * dept + (1 | s) + (1 | d)`` (73,421
observations, 28 fixed effects, 2,972 + 1,128 random effects), on the full data and on ``--subset`` of its
rows drawn at random (where pbkrtest can still finish; every service × dept cell stays present).  InstEval is exported from R's lme4 at run time.
Timed, after the fit (not timed):

* ``anova(m)`` (type III, Satterthwaite; timed with lmerTest's derivative step ``as_lmerModLmerTest``,
  which ``lmerTest::lmer`` otherwise does inside the fit), ``anova(m, ddf = "Kenward-Roger")`` and
  ``summary(m, ddf = "Kenward-Roger")`` in R, each on its own (so every KR call computes pbkrtest's
  ``vcovAdj`` again), under a wall-clock limit of ``--r-timeout`` seconds for the whole R process;
* the same in jaxlmm (``m.anova()``, ``m.anova(ddf="Kenward-Roger")``, ``m.coef_table(ddf="Kenward-Roger")``),
  each on a fresh model object (nothing cached between calls): the first call (with compilation) and the
  median of ``--repeats`` further calls.

A step R does not finish (error, memory, time limit, or lmerTest's fallback warning "Unable to compute
Kenward-Roger F-test: using Satterthwaite instead") is reported with R's message.  Ratios are R / jaxlmm
(warm) within this one run; the largest relative difference of F and DenDF (df) between the two is reported
for the steps both finished.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FORMULA = "y ~ service * dept + (1 | s) + (1 | d)"
STEPS = ("anova_satterthwaite", "anova_kenward_roger", "summary_kenward_roger")

R_DRIVER = r"""
suppressPackageStartupMessages(library(lmerTest))
a <- commandArgs(TRUE)
d <- read.csv(a[1], colClasses = c(s = "character", d = "character", dept = "character", service = "character"))
m0 <- lme4::lmer(as.formula(a[2]), d, REML = TRUE)
m <- as_lmerModLmerTest(m0)
step <- function(name, expr) {
  t0 <- proc.time()[["elapsed"]]
  r <- tryCatch({x <- force(expr); NULL}, error = function(e) conditionMessage(e),
                warning = function(w) conditionMessage(w))
  t <- proc.time()[["elapsed"]] - t0
  msg <- if (is.null(r)) "null" else sprintf('"%s"', gsub('["\\\n]', " ", r))
  F <- if (is.null(r) && inherits(x, "anova")) x[["F value"]] else NULL
  ddf <- if (is.null(r) && inherits(x, "anova")) x[["DenDF"]] else if (is.null(r)) coef(x)[, "df"] else NULL
  cat(sprintf('{"step": "%s", "seconds": %.4f, "error": %s, "F": [%s], "ddf": [%s]}\n', name, t, msg,
              paste(sprintf("%.10g", F), collapse = ","), paste(sprintf("%.10g", ddf), collapse = ",")))
}
# Satterthwaite: lmerTest's derivatives (as_lmerModLmerTest, done inside lmerTest::lmer) plus the anova
step("anova_satterthwaite", anova(as_lmerModLmerTest(m0)))
step("anova_kenward_roger", anova(m, ddf = "Kenward-Roger"))
step("summary_kenward_roger", summary(m, ddf = "Kenward-Roger"))
"""


def export_insteval(folder: Path, subset: int) -> dict[str, Path]:
    full, part = folder / "InstEval.csv", folder / f"InstEval_{subset}.csv"
    code = (
        'data("InstEval", package = "lme4"); d <- InstEval[, c("s", "d", "dept", "service", "y")]; '
        f'write.csv(d, "{full}", row.names = FALSE); set.seed(1); '
        f'write.csv(d[sort(sample(nrow(d), {subset})), ], "{part}", row.names = FALSE)'
    )
    subprocess.run(["Rscript", "-e", code], check=True, capture_output=True)
    return {"InstEval": full, f"InstEval, {subset} random rows": part}


def time_jaxlmm(csv: Path, repeats: int) -> dict:
    import pandas as pd

    import jaxlmm
    from jaxlmm.model import LinearMixedModel

    data = pd.read_csv(csv, dtype={"s": str, "d": str, "dept": str, "service": str})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = jaxlmm.lmer(FORMULA, data)
    calls = {
        "anova_satterthwaite": lambda m: m.anova(),
        "anova_kenward_roger": lambda m: m.anova(ddf="Kenward-Roger"),
        "summary_kenward_roger": lambda m: m.coef_table(ddf="Kenward-Roger"),
    }
    columns = {"anova_satterthwaite": "DenDF", "anova_kenward_roger": "DenDF", "summary_kenward_roger": "df"}
    d = fitted.design
    out = {"n": d.n, "q": sum(b.n_levels * b.q for b in d.structure.blocks), "p": d.p}
    for name, call in calls.items():
        times = []
        for _ in range(repeats + 1):
            fresh = LinearMixedModel(fitted.problem, fitted.reml, fitted.result)  # no cached vcovAdj
            t = time.perf_counter()
            table = call(fresh)
            times.append(time.perf_counter() - t)
        out[name] = {
            "first_s": times[0],
            "warm_s": statistics.median(times[1:]),
            "F": table["F value"].tolist() if "F value" in table else [],
            "ddf": table[columns[name]].tolist(),
        }
    return out


def time_r(csv: Path, timeout: float) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".R", delete=False) as f:
        f.write(R_DRIVER)
    try:
        out = subprocess.run(
            ["Rscript", f.name, str(csv), FORMULA], capture_output=True, text=True, timeout=timeout, check=False
        )
        lines, tail = out.stdout, out.stderr.strip()[-300:]
    except subprocess.TimeoutExpired as e:
        lines, tail = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), "time limit"
    result = {}
    for line in lines.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            result[row["step"]] = {k: row[k] for k in ("seconds", "error", "F", "ddf")}
    for name in STEPS:
        result.setdefault(name, {"seconds": None, "error": f"did not finish within {timeout:.0f} s ({tail})"})
    return result


def relative_difference(ours, theirs) -> float:
    import numpy as np

    ours, theirs = np.asarray(ours, dtype=float), np.asarray(theirs, dtype=float)
    return float(np.max(np.abs(ours / theirs - 1.0)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--subset", type=int, default=3000)
    ap.add_argument("--r-timeout", type=float, default=900.0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if shutil.which("Rscript") is None:
        sys.exit("needs R with lme4 and lmerTest (InstEval comes from lme4)")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, csv in export_insteval(Path(tmp), args.subset).items():
            print(f"{label}: jaxlmm ...", flush=True)
            jax_times = time_jaxlmm(csv, args.repeats)
            print(f"{label}: lmerTest/pbkrtest ...", flush=True)
            results[label] = {"jaxlmm": jax_times, "R": time_r(csv, args.r_timeout)}
    print(
        "\n| data | n | q | step | lmerTest/pbkrtest | jaxlmm first | jaxlmm warm (median) | R / jaxlmm warm "
        "| max rel. diff F, ddf |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for label, r in results.items():
        j = r["jaxlmm"]
        for step in STEPS:
            rs = r["R"][step]
            if rs["error"] is None:
                r_text, ratio = f"{rs['seconds']:.2f} s", f"{rs['seconds'] / j[step]['warm_s']:.1f}x"
                diff = ", ".join(f"{relative_difference(j[step][k], rs[k]):.1e}" for k in ("F", "ddf") if rs[k])
            else:
                after = f" after {rs['seconds']:.1f} s" if rs["seconds"] is not None else ""
                r_text, ratio, diff = f"gave up{after}: {rs['error'][:90]}", "-", "-"
            print(
                f"| {label} | {j['n']} | {j['q']} | {step} | {r_text} | {j[step]['first_s']:.2f} s | "
                f"{j[step]['warm_s']:.2f} s | {ratio} | {diff} |"
            )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
