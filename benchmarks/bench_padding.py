"""What shape buckets cost warm single fits: this checkout against another revision of jaxlmm, same run.

    python benchmarks/bench_padding.py [--baseline REV] [--insteval InstEval.csv] [--rounds 3]

Padding a model to its shape bucket (:mod:`jaxlmm.shapes`) saves compiles but adds work to every evaluation.
This script fits medium and large models repeatedly with this checkout's jaxlmm and with ``--baseline`` (a git
revision, default ``f3c8ac2``: the last commit before shape buckets; checked out into a temporary worktree),
alternating fresh processes ``--rounds`` times, and prints the median warm fit (of 6 after the first) per model.
Cases: one grouping factor with 700 and 3,000 groups, a crossed 2,000 x 600 design (its second factor makes
the dense Schur block), and InstEval ML when ``--insteval`` gives its CSV (columns s, d, dept, service, y).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time, statistics
import numpy as np, pandas as pd, jaxlmm

def single(G, rows, p, rng):
    g = np.repeat(np.arange(G), rows)
    X = rng.standard_normal((g.size, p))
    u0, u1 = rng.standard_normal(G), 0.3 * rng.standard_normal(G)
    y = X @ np.linspace(0.1, 1, p) + u0[g] + u1[g] * X[:, 0] + rng.standard_normal(g.size)
    d = pd.DataFrame(X, columns=[f"x{j}" for j in range(p)]).assign(y=y, g=g.astype(str))
    return "y ~ " + " + ".join(f"x{j}" for j in range(p)) + " + (1 + x0 | g)", d, True

def crossed(rng):
    subj = np.repeat(np.arange(600), 20)
    item = np.concatenate([rng.permutation(2000)[:20] for _ in range(600)])
    x = rng.standard_normal(subj.size)
    y = 0.5 * x + rng.standard_normal(600)[subj] + 0.5 * rng.standard_normal(2000)[item] + rng.standard_normal(subj.size)
    d = pd.DataFrame({"y": y, "x": x, "subj": subj.astype(str), "item": item.astype(str)})
    return "y ~ x + (1 | subj) + (1 | item)", d, True

rng = np.random.default_rng(1)
cases = {
    "700 groups x 8 rows, (1 + x0 | g), 9 coefficients": single(700, 8, 9, rng),
    "3,000 groups x 6 rows, (1 + x0 | g), 5 coefficients": single(3000, 6, 5, rng),
    "crossed 2,000 items x 600 subjects (12,000 rows), (1 | subj) + (1 | item)": crossed(rng),
}
if sys.argv[1]:
    ie = pd.read_csv(sys.argv[1], dtype={"s": str, "d": str, "dept": str, "service": "category"})
    cases["InstEval ML, (1 | s) + (1 | d) + (1 | dept)"] = ("y ~ service + (1 | s) + (1 | d) + (1 | dept)", ie, False)
out = {}
for name, (formula, data, reml) in cases.items():
    times = []
    for _ in range(4 if len(data) > 50_000 else 7):
        t = time.perf_counter()
        m = jaxlmm.lmer(formula, data, reml=reml)
        times.append(time.perf_counter() - t)
    out[name] = {"warm": statistics.median(times[1:]), "loglik": float(m.loglik)}
print(json.dumps(out))
"""


def run_child(checkout: Path, insteval: str) -> dict:
    env = {"PYTHONPATH": str(checkout), "PATH": "/usr/bin:/bin", "JAXLMM_CACHE_DIR": tempfile.mkdtemp()}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, insteval], env=env, capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="f3c8ac2", help="git revision to compare against")
    ap.add_argument("--insteval", default="", help="InstEval CSV (columns s, d, dept, service, y)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(base), args.baseline], check=True)
        try:
            runs = {"this": [], args.baseline: []}
            for _ in range(args.rounds):
                runs["this"].append(run_child(REPO, args.insteval))
                runs[args.baseline].append(run_child(base, args.insteval))
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)], check=True)
    print(
        f"\nwarm single fits, median over {args.rounds} alternating fresh processes (each: median of the fits after its first)"
    )
    print(f"{'model':<75} {'this':>9} {args.baseline:>9} {'ratio':>6}  logLik (this, baseline)")
    for name in runs["this"][0]:
        now = statistics.median(r[name]["warm"] for r in runs["this"])
        then = statistics.median(r[name]["warm"] for r in runs[args.baseline])
        ll = (runs["this"][0][name]["loglik"], runs[args.baseline][0][name]["loglik"])
        print(f"{name:<75} {1e3 * now:7.1f}ms {1e3 * then:7.1f}ms {now / then:6.2f}  {ll[0]:.6f}, {ll[1]:.6f}")


if __name__ == "__main__":
    main()
