"""Draw the seed workflow's figures with jaxlmm.plot into scripts/figures/ (the README shows them).

    pip install -e ".[plot]" && python scripts/seed_figures.py [--nsim 1000]

lmm3 ``y ~ x + (1 + x | Group)`` (REML) on the shipped seed-shaped data: the shrinkage picture, the
caterpillar plot and the per-group lines; the bootstrap reference distribution of the LRT of lmm3
against lmm1 ``y ~ x + (1 | Group)``.
"""

import argparse
from pathlib import Path

import matplotlib

import jaxlmm
from jaxlmm import plot

FIGURES = Path(__file__).parent / "figures"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nsim", type=int, default=1000, help="bootstrap samples for the LRT figure")
    args = parser.parse_args()
    matplotlib.use("Agg")
    FIGURES.mkdir(exist_ok=True)
    data = jaxlmm.load_seed()
    lmm3 = jaxlmm.lmer("y ~ x + (1 + x | Group)", data)
    lmm1 = jaxlmm.lmer("y ~ x + (1 | Group)", data, reml=False)
    figures = {
        "seed_shrinkage": plot.shrinkage(lmm3),
        "seed_caterpillar": plot.caterpillar(lmm3),
        "seed_group_lines": plot.group_lines(lmm3),
        "seed_lrt_reference": plot.lrt_reference(jaxlmm.pbtest(lmm3, lmm1, nsim=args.nsim, seed=1)),
    }
    for name, fig in figures.items():
        fig.savefig(FIGURES / f"{name}.png", dpi=80)
        print(FIGURES / f"{name}.png")


if __name__ == "__main__":
    main()
