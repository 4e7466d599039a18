"""A simr-style power curve: crossed subjects x items, 4 sizes x 1,000 simulations, jaxlmm against an lme4 loop
and mixedlm's ``powerCurve``, measured side by side in one run.

    python benchmarks/bench_power_curve.py [--nsim 1000] [--lme4-nsim 100] [--mixedlm-nsim 100]

The pilot: 10 subjects x 20 items, a two-level condition within subjects and items (counterbalanced),
``y ~ cond + (1 | subj) + (1 | item)`` by REML; the effect of cond set to 0.25.  The curve: 10, 20, 30, 40
subjects (the pilot extended to 40 subjects, simr's ``extend``), LRT of cond (both models refitted by ML).

* jaxlmm: ``jaxlmm.power_curve(jaxlmm.extend(pilot, along="subj", n=40), along="subj", breaks=[10, 20, 30,
  40], fixef=..., test="lrt", nsim=1000)`` in a fresh process: the first call (compiling) and a second
  call (warm), the whole curve each; and with ``test="satterthwaite"`` (a REML refit and lmerTest's df).
* lme4: an R loop, per size: ``simulate`` from the pilot's parameters on the first k subjects, ``lmer`` of
  both models by ML, the LRT: ``--lme4-nsim`` simulations per size, timed and extrapolated to ``--nsim``
  (labelled so).
* mixedlm: ``mixedlm.powerCurve(model, test=<cond coefficient> (a Wald z test, one refit per simulation), along="subj", values=[10, 20, 30, 40], nsim=...)`` on
  its own fit of the pilot, ``--mixedlm-nsim`` simulations per size, extrapolated likewise; skipped with a
  note when mixedlm is not installed.  With ``--mixedlm-nsim`` below ``--nsim`` the printed 4 x ``--nsim`` time is
  a linear extrapolation and says so.
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pandas as pd

BREAKS = [10, 20, 30, 40]
EFFECT = 0.25


def pilot_data() -> pd.DataFrame:
    rng = np.random.default_rng(2026)
    subjects, items = 10, 20
    s, i = np.meshgrid(np.arange(subjects), np.arange(items), indexing="ij")
    s, i = s.ravel(), i.ravel()
    cond = np.where((s + i) % 2 == 0, "a", "b")
    y = 0.3 * (cond == "b") + rng.normal(0, 0.7, subjects)[s] + rng.normal(0, 0.5, items)[i] + rng.normal(size=s.size)
    return pd.DataFrame({"subj": [f"S{k:02d}" for k in s], "item": [f"I{k:02d}" for k in i], "cond": cond, "y": y})


JAXLMM = """
import json, sys, time
import pandas as pd
import jaxlmm
data = pd.read_csv(sys.argv[1])
nsim = int(sys.argv[2])
out = {}
t0 = time.perf_counter()
pilot = jaxlmm.lmer("y ~ cond + (1 | subj) + (1 | item)", data)
ext = jaxlmm.extend(pilot, along="subj", n=40)
for label, test in [("lrt first call", "lrt"), ("lrt second call", "lrt"), ("satterthwaite", "satterthwaite")]:
    t = time.perf_counter()
    curve = jaxlmm.power_curve(ext, along="subj", breaks=BREAKS, fixef={"condb": EFFECT}, test=test, nsim=nsim,
                               seed=1, progress=False)
    out[label] = {"seconds": time.perf_counter() - t, "power": curve.table.power.round(3).tolist(),
                  "failed": curve.table.n_failed.tolist()}
out["process, pilot fit included"] = time.perf_counter() - t0
print(json.dumps(out))
"""

LME4 = r"""
suppressPackageStartupMessages(library(lme4))
d <- read.csv("{csv}")
pilot <- lmer(y ~ cond + (1 | subj) + (1 | item), d)
beta <- fixef(pilot); beta[["condb"]] <- {effect}
ext <- do.call(rbind, lapply(1:40, function(k) {{ s <- d[d$subj == unique(d$subj)[(k - 1) %% 10 + 1], ]; s$subj <- k; s }}))
set.seed(1)
t <- system.time(power <- sapply(c({breaks}), function(k) {{
  sub <- ext[ext$subj <= k, ]
  Y <- simulate(~ cond + (1 | subj) + (1 | item), nsim = {nsim}, newdata = sub, family = gaussian,
                newparams = list(beta = unname(beta), theta = unname(getME(pilot, "theta")), sigma = sigma(pilot)))
  mean(sapply(Y, function(y) {{
    sub$y <- y
    full <- lmer(y ~ cond + (1 | subj) + (1 | item), sub, REML = FALSE)
    small <- lmer(y ~ 1 + (1 | subj) + (1 | item), sub, REML = FALSE)
    pchisq(2 * (logLik(full) - logLik(small))[1], 1, lower.tail = FALSE) < 0.05
  }}))
}}))[["elapsed"]]
cat(sprintf("%.4f %s\n", t, paste(round(power, 3), collapse = " ")))
"""

MIXEDLM = """
import json, sys, time
import pandas as pd
import mixedlm
data = pd.read_csv(sys.argv[1])
nsim = int(sys.argv[2])
pilot = mixedlm.lmer("y ~ cond + (1 | subj) + (1 | item)", data)
pilot.beta[1] = EFFECT  # the changed effect, as simr's fixef<-
t = time.perf_counter()
curve = mixedlm.powerCurve(pilot, test=pilot.matrices.fixed_names[1], along="subj", values=BREAKS, nsim=nsim, seed=1)
print(json.dumps({"seconds": time.perf_counter() - t, "curve": str(curve)}))
"""


def run_python(code: str, csv: str, nsim: int) -> dict:
    code = f"BREAKS = {BREAKS}\nEFFECT = {EFFECT}\n" + textwrap.dedent(code)
    out = subprocess.run([sys.executable, "-c", code, csv, str(nsim)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nsim", type=int, default=1000)
    ap.add_argument("--lme4-nsim", type=int, default=100)
    ap.add_argument("--mixedlm-nsim", type=int, default=100)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        csv = f"{tmp}/pilot.csv"
        pilot_data().to_csv(csv, index=False)
        jax = run_python(JAXLMM, csv, args.nsim)
        for label in ("lrt first call", "lrt second call", "satterthwaite"):
            r = jax[label]
            print(f"jaxlmm {label}: {r['seconds']:.2f} s for {len(BREAKS)} x {args.nsim}; power {r['power']}")
        print(
            f"jaxlmm fresh process total (pilot fit, extend, three curves): {jax['process, pilot fit included']:.1f} s"
        )
        total = len(BREAKS) * args.nsim
        if shutil.which("Rscript"):
            script = LME4.format(csv=csv, effect=EFFECT, breaks=", ".join(map(str, BREAKS)), nsim=args.lme4_nsim)
            out = subprocess.run(["Rscript", "-e", script], capture_output=True, text=True, check=False)
            if out.returncode == 0:
                seconds, *power = out.stdout.split()
                r_full = float(seconds) * args.nsim / args.lme4_nsim
                print(
                    f"lme4 loop: {float(seconds):.1f} s for {len(BREAKS)} x {args.lme4_nsim} (power {power}); "
                    f"extrapolated to {len(BREAKS)} x {args.nsim}: {r_full:.0f} s "
                    f"= {r_full / jax['lrt first call']['seconds']:.0f}x jaxlmm's first call, "
                    f"{r_full / jax['lrt second call']['seconds']:.0f}x its second"
                )
            else:
                print("note: the lme4 loop failed:", out.stderr[-500:])
        else:
            print("note: Rscript not found; lme4 skipped")
        try:
            import mixedlm  # noqa: F401
        except ImportError:
            print("note: mixedlm not installed; skipped")
        else:
            t = time.perf_counter()
            try:
                r = run_python(MIXEDLM, csv, args.mixedlm_nsim)
            except RuntimeError as exc:
                print("note: mixedlm's powerCurve failed:", str(exc)[-500:])
            else:
                m_full = r["seconds"] * args.nsim / args.mixedlm_nsim
                how = (
                    "measured"
                    if args.mixedlm_nsim == args.nsim
                    else f"EXTRAPOLATED linearly (x{args.nsim / args.mixedlm_nsim:g}) from {args.mixedlm_nsim} per size"
                )
                print(
                    f"mixedlm powerCurve: {r['seconds']:.1f} s for {len(BREAKS)} x {args.mixedlm_nsim}; "
                    f"{len(BREAKS)} x {args.nsim} ({total} simulations), {how}: {m_full:.1f} s = "
                    f"{m_full / jax['lrt first call']['seconds']:.1f}x jaxlmm's first call, "
                    f"{m_full / jax['lrt second call']['seconds']:.1f}x its second; jaxlmm / mixedlm = "
                    f"{jax['lrt first call']['seconds'] / m_full:.3f} (first call), "
                    f"{jax['lrt second call']['seconds'] / m_full:.3f} (second) "
                    f"(process {time.perf_counter() - t:.1f} s)\n{r['curve']}"
                )


if __name__ == "__main__":
    main()
