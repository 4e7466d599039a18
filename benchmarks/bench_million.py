"""A million bootstrap refits in bounded memory: ``m.bootstrap(1_000_000)`` of ``y ~ x + (1 + x | Group)``.

    /usr/bin/time -v python benchmarks/bench_million.py [--nsim 1000000] [--simulation plain|direct]

Prints the time and the failures; run under ``/usr/bin/time -v`` to read the peak memory ("Maximum
resident set size").  Simulation streams in blocks of 10,000 responses and the fits keep only each
replicate's cross-products and optimiser state, so memory grows by a few hundred bytes per replicate.
"""

import argparse
import resource
import time

import jaxlmm


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nsim", type=int, default=1_000_000)
    ap.add_argument("--simulation", choices=("plain", "direct"), default="plain")
    args = ap.parse_args()
    m = jaxlmm.lmer("y ~ x + (1 + x | Group)", jaxlmm.load_seed(), reml=False)
    t = time.perf_counter()
    fits = m.bootstrap(args.nsim, seed=1, simulation=args.simulation)
    seconds = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{args.nsim:,} refits ({args.simulation} simulation) in {seconds:.1f} s = {args.nsim / seconds:,.0f}/s; "
        f"failed {fits.n_failed}; peak resident memory {peak:,.0f} MiB"
    )


if __name__ == "__main__":
    main()
