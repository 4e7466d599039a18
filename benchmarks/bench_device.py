"""jaxlmm's batch and large-fit benchmarks on the default JAX device (a GPU where JAX sees one).

    python benchmarks/bench_device.py --insteval InstEval.csv [--nsim 10000 100000] [--million]

For a machine without R (a GPU host): the lme4 side of each ratio comes from ``bench_batch.py`` and
``bench_peers.py`` run on the CPU host, as RESULTS.md says next to each GPU row.  Prints one line per
measurement: the device, the time, and the criterion reached, so a faster fit to a worse optimum shows.
``--insteval`` takes a CSV with columns s, d, dept, service, y (R: ``write.csv(lme4::InstEval[, c("s",
"d", "dept", "service", "y")])``).
"""

import argparse
import resource
import statistics
import time

import jax
import pandas as pd

import jaxlmm


def timed(label: str, fn, repeats: int = 1):
    """First call (compilation included) and the median of ``repeats`` further calls."""
    t = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t
    again = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        again.append(time.perf_counter() - t)
    print(
        f"{label}: first {first:.3f} s, again (median) {statistics.median(again):.3f} s"
        if again
        else f"{label}: {first:.3f} s",
        flush=True,
    )
    return out, statistics.median(again) if again else first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--insteval", help="InstEval CSV (columns s, d, dept, service, y)")
    ap.add_argument("--nsim", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--million", action="store_true", help="also a million bootstrap refits")
    args = ap.parse_args()
    print(f"devices: {jax.devices()}; jax {jax.__version__}", flush=True)
    jax.block_until_ready(jax.numpy.ones(3) + 1)
    print(
        f"host memory with JAX started: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB",
        flush=True,
    )

    if args.insteval:
        data = pd.read_csv(args.insteval, dtype={"s": str, "d": str, "dept": str, "service": "category"})
        m, _ = timed(
            "InstEval y ~ service + (1|s) + (1|d) + (1|dept) ML",
            lambda: jaxlmm.lmer("y ~ service + (1 | s) + (1 | d) + (1 | dept)", data, reml=False),
            repeats=3,
        )
        print(f"  logLik {m.loglik:.4f}, converged {m.converged}, {m.opt.n_evals} BFGS steps", flush=True)

    seed = jaxlmm.load_seed()
    m = jaxlmm.lmer("y ~ x + (1 + x | Group)", seed, reml=False)
    m1 = jaxlmm.lmer("y ~ x + (1 | Group)", seed, reml=False)
    for nsim in args.nsim:
        for simulation in ("plain", "direct"):
            fits, seconds = timed(
                f"bootstrap (1 + x | Group), {nsim:,} refits, {simulation} simulation",
                lambda n=nsim, s=simulation: m.bootstrap(n, seed=1, simulation=s, progress=False),
                repeats=1,
            )
            print(
                f"  {nsim / seconds:,.0f} refits/s, failed {fits.n_failed}, BFGS steps mean "
                f"{fits.iterations.mean():.1f}",
                flush=True,
            )
        pb, seconds = timed(
            f"PB anova (1 + x | Group) vs (1 | Group), {nsim:,} simulations, plain",
            lambda n=nsim: jaxlmm.pbtest(m, m1, nsim=n, seed=3, progress=False),
            repeats=1,
        )
        print(f"  p_boot {pb.p_boot:.4f}, failed {pb.n_failed}", flush=True)
    if args.million:
        for simulation in ("direct", "plain"):
            fits, seconds = timed(
                f"bootstrap, 1,000,000 refits, {simulation} simulation",
                lambda s=simulation: m.bootstrap(1_000_000, seed=1, simulation=s, progress=False),
            )
            print(
                f"  {1e6 / seconds:,.0f} refits/s, failed {fits.n_failed}, peak host memory "
                f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB",
                flush=True,
            )


if __name__ == "__main__":
    main()
