"""Binomial glmer power in a fresh process: a crossed 30 subjects x 20 items pilot with a two-level
within condition, jaxlmm.power(pilot, term="cond", test="lrt", nsim=1000) and a power curve along subjects
(4 sizes, 1,000 simulations each).  Prints one JSON line of wall-clock seconds (the compile included).

    python benchmarks/bench_glmm_power.py [--nsim 1000]
"""

import argparse
import json
import time

import numpy as np
import pandas as pd


def pilot_data(subjects: int = 30, items: int = 20, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    s, i = np.meshgrid(np.arange(subjects), np.arange(items), indexing="ij")
    s, i = s.ravel(), i.ravel()
    cond = np.where((s + i) % 2 == 0, "a", "b")
    eta = -0.2 + 0.4 * (cond == "b") + rng.normal(0, 0.7, subjects)[s] + rng.normal(0, 0.5, items)[i]
    acc = rng.binomial(1, 1 / (1 + np.exp(-eta)))
    return pd.DataFrame({"subj": [f"S{k:02d}" for k in s], "item": [f"I{k:02d}" for k in i], "cond": cond, "acc": acc})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nsim", type=int, default=1000)
    args = parser.parse_args()
    start = time.perf_counter()
    import jaxlmm

    imported = time.perf_counter()
    pilot = jaxlmm.glmer("acc ~ cond + (1 | subj) + (1 | item)", pilot_data(), family="binomial")
    fitted = time.perf_counter()
    res = jaxlmm.power(pilot, term="cond", fixef={"condb": 0.4}, test="lrt", nsim=args.nsim, seed=1)
    powered = time.perf_counter()
    curve = jaxlmm.power_curve(
        pilot, along="subj", breaks=[10, 20, 25, 30], term="cond", fixef={"condb": 0.4}, nsim=args.nsim, seed=1
    )
    done = time.perf_counter()
    print(
        json.dumps(
            {
                "nsim": args.nsim,
                "import_s": round(imported - start, 2),
                "pilot_fit_s": round(fitted - imported, 2),
                "power_lrt_s": round(powered - fitted, 2),
                "power": res.power(),
                "n_failed": int(res.table.n_failed.iloc[0]),
                "power_curve_4_sizes_s": round(done - powered, 2),
                "curve_power": [round(float(p), 3) for p in curve.table.power],
            }
        )
    )


if __name__ == "__main__":
    main()
