"""Many shapes, many data sets, first calls: jaxlmm against lme4 (and mixedlm), measured side by side in one run.

    python benchmarks/bench_shapes.py [--quick] [--json results.json] [--repo PATH] [--only shapes,walk,many,first]

Every measurement runs in a fresh process (``sys.executable`` for jaxlmm and mixedlm, ``Rscript`` for lme4); the
times are taken inside it, after its imports, unless said otherwise.  Each jaxlmm process gets a compilation cache
folder of its own (``JAXLMM_CACHE_DIR``): empty (a first run on a new machine) or the one an earlier process of
the same workload filled (every later run).  jaxlmm processes also count their compiled executables (JAX's
monitoring events: executables obtained, of which loaded from the persistent cache; the rest were compiled).

1. shapes: ``--n-shapes`` fits of ``y ~ x + (1 + x | g)`` (REML), 5, 6, ... groups of 6 rows (every fit a new
   shape), each followed by ``m.tidy()`` (Satterthwaite df); lme4: ``lmerTest::lmer`` + ``summary(m)$coefficients``.
   Loop wall time; at the end the child's memory mappings (``/proc/self/maps`` lines) and peak RSS.  A child
   that dies is reported with the fits it completed and its exit status.
2. walk: ``scripts/seed_walkthrough.py`` as a whole process (import included), cold and warm, median of 3.
3. many: ``y ~ x + (1 | Group)`` by ML on (a) ``--same`` data sets of the seed's shape (x, Group of the seed
   data, y simulated from the model fitted to it), (b) ``--varied`` data sets of 5..60 groups with 3..30 rows
   each.  jaxlmm: ``fit_batch(datasets=...)`` called once (compiling), then five more times in one process
   (the median of those is the rate), and ``fit_batch(long_df, by="replicate")`` likewise when ``fit_batch``
   takes ``by``; mixedlm: a loop of single fits on the first ``--mixedlm-max`` data sets; lme4: an R loop of
   ``lmer`` over all of them.  Rates in fits/s.
4. first: ``fit_batch(seed, responses=Y)`` of ``y ~ x + (1 + x | Group)`` (ML): 64 columns, then ``--ncols``
   columns twice (first call vs the same call repeated), with an empty cache and with the one it filled.

Ratios against lme4 are taken within this one run.  R/lme4/lmerTest and mixedlm are skipped with a note when
absent.
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

# --------------------------------------------------------------------------------------------- child code
PRELUDE = r"""
import json, os, resource, sys, time
import jax.monitoring as _mon
COUNTS = {"executables": 0, "cache_hits": 0, "compile_s": 0.0}
def _on_duration(event, secs, **kw):
    if event == "/jax/core/compile/backend_compile_duration":
        COUNTS["executables"] += 1; COUNTS["compile_s"] += secs
def _on_event(event, **kw):
    if event == "/jax/compilation_cache/cache_hits":
        COUNTS["cache_hits"] += 1
_mon.register_event_duration_secs_listener(_on_duration)
_mon.register_event_listener(_on_event)
def counts():
    c = dict(COUNTS); c["compiled"] = c["executables"] - c["cache_hits"]; return c
def mappings():
    with open("/proc/self/maps") as f:
        return sum(1 for _ in f)
def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
def say(*a):
    print(*a, flush=True)
"""

SHAPES_JAXLMM = (
    PRELUDE
    + r"""
csv = sys.argv[1]
import pandas as pd
import jaxlmm
data = pd.read_csv(csv, dtype={"g": str})
sets = [d.drop(columns="id").reset_index(drop=True) for _, d in data.groupby("id", sort=True)]
t0 = time.perf_counter()
for i, d in enumerate(sets, 1):
    m = jaxlmm.lmer("y ~ x + (1 + x | g)", d, reml=True)
    m.tidy()
    el = time.perf_counter() - t0
    say(f"FIT {i} {el:.3f}")
    if i % 25 == 0:
        say(f"PROGRESS {i}/{len(sets)} fits, {el:.1f} s, {mappings()} mappings, peak {peak_mib():.0f} MiB, "
            f"{counts()['compiled']} compiled")
loop = time.perf_counter() - t0
say(json.dumps({"loop_s": loop, "fits": len(sets), "mappings": mappings(), "peak_mib": peak_mib(), **counts()}))
"""
)

SHAPES_R = r"""
suppressPackageStartupMessages(library(lmerTest))
a <- commandArgs(TRUE)
d <- read.csv(a[1], colClasses = c(g = "character"))
sets <- split(d, d$id)
cum <- numeric(length(sets)); t0 <- proc.time()[["elapsed"]]
for (i in seq_along(sets)) {
  m <- suppressMessages(suppressWarnings(lmer(y ~ x + (1 + x | g), sets[[i]], REML = TRUE)))
  co <- summary(m)$coefficients
  cum[i] <- proc.time()[["elapsed"]] - t0
}
cat(sprintf('{"loop_s": %.6f, "fits": %d, "cum_s": [%s]}\n', cum[length(cum)], length(sets),
            paste(sprintf("%.4f", cum), collapse = ",")))
"""

MANY_JAXLMM = (
    PRELUDE
    + r"""
import inspect
csv, formula = sys.argv[1], sys.argv[2]
import statistics
import pandas as pd
REPEATS = 5  # "second call": the median of this many calls after the first (one call is a noisy 20 ms)
import jaxlmm
data = pd.read_csv(csv, dtype={"Group": str})
sets = [d.drop(columns="id").reset_index(drop=True) for _, d in data.groupby("id", sort=True)]
out = {"datasets": len(sets)}
for call in ("first", "second"):
    runs = []
    for _ in range(1 if call == "first" else REPEATS):
        t = time.perf_counter()
        fits = jaxlmm.fit_batch(formula, datasets=sets, reml=False, progress=False)
        runs.append(time.perf_counter() - t)
    s = statistics.median(runs)
    out[call + "_s"] = s; out[call + "_n_failed"] = fits.n_failed
    say(f"PROGRESS fit_batch(datasets=...) {call} call: {s:.2f} s = {len(sets) / s:,.0f} fits/s, "
        f"failed {fits.n_failed}")
out["loglik_sum"] = float(fits.loglik.sum())
out["counts_datasets"] = counts()
if "by" in inspect.signature(jaxlmm.fit_batch).parameters:
    long = data.rename(columns={"id": "replicate"})
    for call in ("first", "second"):
        runs = []
        for _ in range(1 if call == "first" else REPEATS):
            t = time.perf_counter()
            fits = jaxlmm.fit_batch(formula, long, by="replicate", reml=False, progress=False)
            runs.append(time.perf_counter() - t)
        s = statistics.median(runs)
        out["by_" + call + "_s"] = s; out["by_" + call + "_n_failed"] = fits.n_failed
        say(f"PROGRESS fit_batch(long, by=...) {call} call: {s:.2f} s = {len(sets) / s:,.0f} fits/s, "
            f"failed {fits.n_failed}")
else:
    out["by"] = None
out["counts"] = counts()
say(json.dumps(out))
"""
)

MANY_MIXEDLM = r"""
import json, sys, time
csv, formula, nmax = sys.argv[1], sys.argv[2], int(sys.argv[3])
import pandas as pd
import mixedlm
data = pd.read_csv(csv, dtype={"Group": str})
sets = [d.drop(columns="id").reset_index(drop=True) for _, d in data.groupby("id", sort=True)][:nmax]
mixedlm.lmer(formula, sets[0], REML=False)  # untimed: first-call costs
t = time.perf_counter()
for d in sets:
    mixedlm.lmer(formula, d, REML=False)
s = time.perf_counter() - t
print(json.dumps({"fits": len(sets), "loop_s": s}))
"""

MANY_R = r"""
suppressPackageStartupMessages(library(lme4))
a <- commandArgs(TRUE)
d <- read.csv(a[1], colClasses = c(Group = "character"))
f <- as.formula(a[2])
sets <- split(d[, setdiff(names(d), "id")], d$id)
invisible(suppressMessages(suppressWarnings(lmer(f, sets[[1]], REML = FALSE))))
t <- system.time(for (s in sets) m <- suppressMessages(suppressWarnings(lmer(f, s, REML = FALSE))))[["elapsed"]]
cat(sprintf('{"loop_s": %.6f, "fits": %d}\n', t, length(sets)))
"""

FIRST_JAXLMM = (
    PRELUDE
    + r"""
ncols = int(sys.argv[1])
import jaxlmm
f = "y ~ x + (1 + x | Group)"
seed = jaxlmm.load_seed()
t = time.perf_counter(); m = jaxlmm.lmer(f, seed, reml=False); out = {"lmer_s": time.perf_counter() - t}
Y64, Y = m.simulate(64, seed=1), m.simulate(ncols, seed=2)
t = time.perf_counter(); b = jaxlmm.fit_batch(f, seed, responses=Y64, reml=False, progress=False)
out["cols64_s"] = time.perf_counter() - t
for call in ("first", "repeated"):
    t = time.perf_counter(); b = jaxlmm.fit_batch(f, seed, responses=Y, reml=False, progress=False)
    out[call + "_s"] = time.perf_counter() - t; out[call + "_n_failed"] = b.n_failed
    say(f"PROGRESS {ncols} columns, {call} call: {out[call + '_s']:.2f} s, failed {b.n_failed}")
out.update(counts())
say(json.dumps(out))
"""
)


# --------------------------------------------------------------------------------------------- helpers
def run_child(cmd: list[str], env: dict | None = None, timeout: float = 3600, label: str = "") -> dict:
    """Run ``cmd``, echo its PROGRESS lines, return its last JSON line plus returncode / fits done / stderr tail."""
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        result, fits_done, last_el, last_progress = None, 0, None, None
        try:
            for line in proc.stdout:
                line = line.rstrip("\n")
                if line.startswith("FIT "):
                    _, n, el = line.split()
                    fits_done, last_el = int(n), float(el)
                elif line.startswith("PROGRESS "):
                    last_progress = line[9:]
                    print(f"    [{label}] {line[9:]}", flush=True)
                elif line.startswith("{"):
                    result = json.loads(line)
            proc.wait(timeout=max(1.0, timeout - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        wall = time.perf_counter() - t0
        err.seek(0)
        stderr = err.read()
    out = dict(result or {})
    out.update(returncode=proc.returncode, process_s=wall)
    if result is None:
        out.update(
            fits_done=fits_done,
            elapsed_at_last_fit_s=last_el,
            last_progress=last_progress,
            stderr_tail=stderr.strip()[-600:],
        )
        print(
            f"    [{label}] FAILED: exit status {proc.returncode} after {fits_done} fits; stderr tail:\n"
            + "\n".join("      " + ln for ln in stderr.strip().splitlines()[-6:]),
            flush=True,
        )
    return out


def have_r(*packages: str) -> bool:
    if shutil.which("Rscript") is None:
        return False
    code = "; ".join(f"suppressPackageStartupMessages(library({p}))" for p in packages)
    return subprocess.run(["Rscript", "-e", code], capture_output=True, check=False).returncode == 0


def have_module(name: str) -> bool:
    return subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, check=False).returncode == 0


def versions() -> dict:
    v = {"python": sys.version.split()[0]}
    probe = (
        "import jax, jaxlmm, numpy; print(jax.__version__, numpy.__version__, jaxlmm.__file__);"
        "import importlib.metadata as m\ntry: print(m.version('mixedlm'))\nexcept Exception: print('-')"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False).stdout.split()
    if len(out) >= 4:
        v.update(jax=out[0], numpy=out[1], jaxlmm_file=out[2], mixedlm=out[3])
    if shutil.which("Rscript"):
        code = (
            'cat(R.version.string, "\\n"); for (p in c("lme4", "lmerTest", "Matrix")) '
            'cat(p, tryCatch(as.character(packageVersion(p)), error = function(e) "-"), "\\n")'
        )
        r = subprocess.run(["Rscript", "-e", code], capture_output=True, text=True, check=False).stdout
        v["R"] = " | ".join(ln.strip() for ln in r.splitlines() if ln.strip())
    return v


def fresh_cache(tmp: Path) -> dict:
    return dict(os.environ, JAXLMM_CACHE_DIR=tempfile.mkdtemp(dir=tmp, prefix="cache"))


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:6.2f}x" if a and b else "    - "


# --------------------------------------------------------------------------------------------- data
def shapes_data(n_shapes: int, path: Path) -> None:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(20240611)
    frames = []
    for k in range(n_shapes):
        ngroups, per = 5 + k, 6
        g = np.repeat(np.arange(ngroups), per)
        x = rng.uniform(0, 10, ngroups * per)
        u0, u1 = rng.normal(0, 1.0, ngroups), rng.normal(0, 0.3, ngroups)
        y = 1 + 0.5 * x + u0[g] + u1[g] * x + rng.normal(0, 1, ngroups * per)
        frames.append(pd.DataFrame({"id": k, "y": y, "x": x, "g": [f"G{i:03d}" for i in g]}))
    pd.concat(frames).to_csv(path, index=False)


def many_data(same: int, varied: int, same_path: Path, varied_path: Path) -> None:
    import numpy as np
    import pandas as pd

    import jaxlmm

    seed = jaxlmm.load_seed()
    m = jaxlmm.lmer("y ~ x + (1 | Group)", seed, reml=False)
    Y = m.simulate(same, seed=11)
    base = pd.DataFrame({"x": seed["x"].to_numpy(), "Group": seed["Group"].astype(str).to_numpy()})
    pd.concat([base.assign(id=k, y=Y[:, k]) for k in range(same)])[["id", "y", "x", "Group"]].to_csv(
        same_path, index=False
    )
    rng = np.random.default_rng(7)
    frames = []
    for k in range(varied):
        ngroups = int(rng.integers(5, 61))
        sizes = rng.integers(3, 31, ngroups)
        g = np.repeat(np.arange(ngroups), sizes)
        x = rng.uniform(0, 10, g.size)
        y = 1 + 0.5 * x + rng.normal(0, 0.8, ngroups)[g] + rng.normal(0, 1, g.size)
        frames.append(pd.DataFrame({"id": k, "y": y, "x": x, "Group": [f"G{i:02d}" for i in g]}))
    pd.concat(frames).to_csv(varied_path, index=False)


# --------------------------------------------------------------------------------------------- workloads
def bench_shapes(args, tmp: Path, tools: dict) -> dict:
    print(
        f"\n=== 1. shapes loop: {args.n_shapes} fits of y ~ x + (1 + x | g) REML + tidy(), 5..{4 + args.n_shapes} "
        "groups x 6 rows",
        flush=True,
    )
    csv = tmp / "shapes.csv"
    shapes_data(args.n_shapes, csv)
    res = {}
    env = fresh_cache(tmp)
    cmd = [sys.executable, "-c", SHAPES_JAXLMM, str(csv)]
    for key in ("jaxlmm empty cache", "jaxlmm warm cache"):
        print(f"  {key} ...", flush=True)
        res[key] = run_child(cmd, env, args.timeout, key)
    if tools["lmerTest"]:
        print("  lme4 (lmerTest) ...", flush=True)
        res["lme4"] = run_child(["Rscript", "-e", SHAPES_R, str(csv)], None, args.timeout, "lme4")
    else:
        print("  note: R/lmerTest not installed; lme4 row skipped")
    base = res.get("lme4", {}).get("loop_s")
    print(
        f"\n  {'tool':20s} {'loop s':>9s} {'vs lme4':>8s} {'fits':>9s} {'maps':>7s} {'peak MiB':>9s} "
        f"{'compiled':>9s} {'cache hits':>10s}  bar"
    )
    for key, r in res.items():
        done = r.get("fits", r.get("fits_done"))
        loop = r.get("loop_s")
        bar = {"jaxlmm empty cache": "<= 1.5x", "jaxlmm warm cache": "<= 0.5x"}.get(key, "")
        if loop is None:
            el, cum = r.get("elapsed_at_last_fit_s"), res.get("lme4", {}).get("cum_s")
            same = (
                f"; lme4's first {done} fits took {cum[done - 1]:.2f} s: {el / cum[done - 1]:.1f}x"
                if (el and cum and 0 < done <= len(cum))
                else ""
            )
            print(
                f"  {key:20s} {'died':>9s} {'':8s} {done:>5}/{args.n_shapes} exit {r['returncode']} at "
                f"{el or 0:.1f} s{same}   {bar}"
            )
            continue
        peak = f"{r['peak_mib']:.0f}" if r.get("peak_mib") else ""
        print(
            f"  {key:20s} {loop:9.2f} {ratio(loop, base) if key != 'lme4' else '':>8s} {done:>9} "
            f"{r.get('mappings', ''):>7} {peak:>9} {r.get('compiled', ''):>9} {r.get('cache_hits', ''):>10}  {bar}"
        )
    return res


def bench_walkthrough(args, tmp: Path) -> dict:
    script = args.repo / "scripts" / "seed_walkthrough.py"
    print(f"\n=== 2. walkthrough: {script} as a fresh process, median of {args.walk_repeats}", flush=True)
    if not script.exists():
        print("  note: script not found; skipped")
        return {}

    def once(env) -> float | None:
        t = time.perf_counter()
        r = subprocess.run(
            [sys.executable, str(script)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
        s = time.perf_counter() - t
        if r.returncode != 0:
            print(f"    failed (exit {r.returncode}): {r.stderr.strip()[-300:]}")
            return None
        return s

    cold, filled = [], None
    for _ in range(args.walk_repeats):
        env = fresh_cache(tmp)
        cold.append(once(env))
        filled = filled or env
    warm = [once(filled) for _ in range(args.walk_repeats)]
    res = {"cold_s": cold, "warm_s": warm}
    for key, times, bar in (("cold", cold, "<= 6 s"), ("warm", warm, "<= 2.5 s")):
        ok = [t for t in times if t is not None]
        res[key + "_median_s"] = statistics.median(ok) if ok else None
        print(
            f"  {key}: median {res[key + '_median_s'] or float('nan'):6.2f} s  runs "
            f"{', '.join(f'{t:.2f}' if t else 'failed' for t in times)}   bar {bar}",
            flush=True,
        )
    return res


def bench_many(args, tmp: Path, tools: dict) -> dict:
    print(
        f"\n=== 3. many data sets: y ~ x + (1 | Group) ML; (a) {args.same} of the seed's shape, (b) {args.varied} "
        "of 5..60 groups x 3..30 rows",
        flush=True,
    )
    same_csv, varied_csv = tmp / "same.csv", tmp / "varied.csv"
    many_data(args.same, args.varied, same_csv, varied_csv)
    formula = "y ~ x + (1 | Group)"
    res = {}
    for name, csv, n, bar in (("a_same", same_csv, args.same, 10_000), ("b_varied", varied_csv, args.varied, 5_000)):
        print(f"  ({name}) jaxlmm fit_batch ...", flush=True)
        r = {
            "jaxlmm": run_child(
                [sys.executable, "-c", MANY_JAXLMM, str(csv), formula], fresh_cache(tmp), args.timeout, "jaxlmm"
            )
        }
        if tools["mixedlm"]:
            print(f"  ({name}) mixedlm loop over {min(n, args.mixedlm_max)} ...", flush=True)
            r["mixedlm"] = run_child(
                [sys.executable, "-c", MANY_MIXEDLM, str(csv), formula, str(args.mixedlm_max)],
                None,
                args.timeout,
                "mixedlm",
            )
        if tools["lme4"]:
            print(f"  ({name}) lme4 loop over {n} ...", flush=True)
            r["lme4"] = run_child(["Rscript", "-e", MANY_R, str(csv), formula], None, args.timeout, "lme4")
        j = r["jaxlmm"]
        rates = {}
        if "second_s" in j:
            rates["jaxlmm datasets= 2nd call"] = (n / j["second_s"], j["second_n_failed"])
            rates["jaxlmm datasets= 1st call"] = (n / j["first_s"], j["first_n_failed"])
        if j.get("by_second_s"):
            rates["jaxlmm by= 2nd call"] = (n / j["by_second_s"], j["by_second_n_failed"])
            rates["jaxlmm by= 1st call"] = (n / j["by_first_s"], j["by_first_n_failed"])
        for tool in ("mixedlm", "lme4"):
            if r.get(tool, {}).get("loop_s"):
                rates[f"{tool} loop ({r[tool]['fits']})"] = (r[tool]["fits"] / r[tool]["loop_s"], None)
        base = next((v[0] for k, v in rates.items() if k.startswith("lme4")), None)
        print(
            f"\n  ({name}) {'':26s} {'fits/s':>10s} {'vs lme4':>9s} {'failed':>7s}   (bar >= {bar:,} fits/s "
            "on the 2nd call)"
        )
        for k, (rate, failed) in rates.items():
            print(f"  ({name}) {k:26s} {rate:10,.0f} {ratio(rate, base):>9s} {'' if failed is None else failed:>7}")
        if j.get("by", 0) is None:
            print(f"  ({name}) note: fit_batch has no by= here; that row is skipped")
        if "counts" in j:
            print(
                f"  ({name}) jaxlmm executables: {j['counts']['executables']} ({j['counts']['compiled']} compiled, "
                f"{j['counts']['compile_s']:.1f} s)"
            )
        r["rates_fits_per_s"] = {k: v[0] for k, v in rates.items()}
        res[name] = r
    return res


def bench_first(args, tmp: Path) -> dict:
    print(
        f"\n=== 4. first batched call: fit_batch(y ~ x + (1 + x | Group), seed, responses=Y) ML, 64 then "
        f"{args.ncols} columns twice",
        flush=True,
    )
    env = fresh_cache(tmp)
    res = {}
    for key in ("empty cache", "warm cache"):
        print(f"  {key} ...", flush=True)
        res[key] = run_child([sys.executable, "-c", FIRST_JAXLMM, str(args.ncols)], env, args.timeout, key)
    for key, r in res.items():
        if "first_s" in r:
            print(
                f"  {key:12s} lmer {r['lmer_s']:6.2f} s  64 cols {r['cols64_s']:6.2f} s  {args.ncols} cols first "
                f"{r['first_s']:6.2f} s, repeated {r['repeated_s']:6.2f} s: first/repeated "
                f"{r['first_s'] / r['repeated_s']:5.2f}x (bar <= 1.3x)  failed {r['repeated_n_failed']}  "
                f"executables {r['executables']} ({r['compiled']} compiled)"
            )
    return res


def bars(res: dict) -> list[tuple[str, str, str, bool | None]]:
    """(workload, value, bar, passed) for each acceptance bar measured in this run."""
    out = []
    shapes = res.get("shapes", {})
    base = shapes.get("lme4", {}).get("loop_s")
    for key, limit in (("jaxlmm empty cache", 1.5), ("jaxlmm warm cache", 0.5)):
        r = shapes.get(key)
        if r is None:
            continue
        if r.get("loop_s") is None:
            done, el, cum = r.get("fits_done") or 0, r.get("elapsed_at_last_fit_s"), shapes.get("lme4", {}).get("cum_s")
            part = f", {el / cum[done - 1]:.1f}x" if el and cum and 0 < done <= len(cum) else ""
            out.append((f"shapes, {key} / lme4", f"died at {done}{part}", f"<= {limit}x", False))
        elif base:
            out.append(
                (f"shapes, {key} / lme4", f"{r['loop_s'] / base:.2f}x", f"<= {limit}x", r["loop_s"] / base <= limit)
            )
    walk = res.get("walkthrough", {})
    for key, limit in (("cold", 6.0), ("warm", 2.5)):
        v = walk.get(key + "_median_s")
        if key + "_median_s" in walk:
            out.append((f"walkthrough {key}", f"{v:.2f} s" if v else "failed", f"<= {limit} s", bool(v and v <= limit)))
    for name, limit in (("a_same", 10_000), ("b_varied", 5_000)):
        j = res.get("many", {}).get(name, {}).get("jaxlmm")
        if j is not None:
            n = res["many"][name]["jaxlmm"].get("datasets")
            rate = n / j["second_s"] if j.get("second_s") else None
            out.append(
                (
                    f"many {name}, fit_batch 2nd call",
                    f"{rate:,.0f} fits/s" if rate else "failed",
                    f">= {limit:,}",
                    bool(rate and rate >= limit),
                )
            )
    for key, r in res.get("first_call", {}).items():
        if "first_s" in r:
            q = r["first_s"] / r["repeated_s"]
            out.append((f"first batched call / repeated, {key}", f"{q:.2f}x", "<= 1.3x", q <= 1.3))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke test")
    ap.add_argument("--n-shapes", type=int, default=300)
    ap.add_argument("--same", type=int, default=200, help="data sets of the seed's shape (workload 3a)")
    ap.add_argument("--varied", type=int, default=1000, help="data sets of varied shapes (workload 3b)")
    ap.add_argument("--mixedlm-max", type=int, default=200, help="mixedlm fits at most this many data sets")
    ap.add_argument("--ncols", type=int, default=10_000, help="response columns in workload 4")
    ap.add_argument("--walk-repeats", type=int, default=3)
    ap.add_argument("--only", default="shapes,walk,many,first", help="comma-separated subset of the workloads")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per child process")
    ap.add_argument("--repo", type=Path, help="repository holding scripts/ (default: the imported jaxlmm's)")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    os.environ["JAXLMM_CACHE_DIR"] = ""  # this process fits once (to simulate data): no cache of its own
    if args.quick:
        args.n_shapes, args.same, args.varied = min(args.n_shapes, 40), min(args.same, 50), min(args.varied, 50)
        args.mixedlm_max, args.ncols, args.walk_repeats = min(args.mixedlm_max, 20), min(args.ncols, 1000), 1
    info = versions()
    if args.repo is None:
        args.repo = Path(info.get("jaxlmm_file", __file__)).resolve().parents[1]
    print("versions: " + "; ".join(f"{k} {v}" for k, v in info.items()))
    tools = {"lme4": have_r("lme4"), "lmerTest": have_r("lmerTest"), "mixedlm": have_module("mixedlm")}
    for t, ok in tools.items():
        if not ok:
            print(f"note: {t} is not installed here; its rows are skipped")
    results = {"versions": info, "args": {k: str(v) for k, v in vars(args).items()}}
    only = set(args.only.split(","))
    t0, load0 = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if "shapes" in only:
            results["shapes"] = bench_shapes(args, tmp, tools)
        if "walk" in only:
            results["walkthrough"] = bench_walkthrough(args, tmp)
        if "many" in only:
            results["many"] = bench_many(args, tmp, tools)
        if "first" in only:
            results["first_call"] = bench_first(args, tmp)
    results["bars"] = bars(results)
    print("\n=== acceptance bars (this run)")
    for name, value, bar, ok in results["bars"]:
        print(f"  {name:44s} {value:>14s}   bar {bar:12s} {'pass' if ok else 'FAIL' if ok is False else '-'}")
    results["loadavg"] = [load0, os.getloadavg()]
    print(
        f"\ntotal {time.perf_counter() - t0:.0f} s; load average at start {load0[0]:.1f}, at end "
        f"{os.getloadavg()[0]:.1f} (on {os.cpu_count()} CPUs: other work on the machine slows every row)"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
