"""The seed workflow end to end, printing the tables an R user of lme4 + lmerTest + broom.mixed + rsq sees.

    python scripts/seed_walkthrough.py [--coefs OUT_DIR]

Three nested models on the shipped seed-shaped data (``y``, ``x``, ``Group``):
lmm1 ``y ~ x + (1 | Group)`` (ML), lmm2 ``y ~ x + (1 | Group) + (0 + x | Group)`` (ML),
lmm3 ``y ~ x + (1 + x | Group)`` (REML); for each R², the fixed/random table and per-group
coefficients; then ``anova(lmm1, lmm2, lmm3)``.
"""

import argparse
import warnings
from pathlib import Path

import pandas as pd

import jaxlmm

MODELS = {
    "lmm1": ("y ~ x + (1 | Group)", False),
    "lmm2": ("y ~ x + (1 | Group) + (0 + x | Group)", False),
    "lmm3": ("y ~ x + (1 + x | Group)", True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coefs", type=Path, help="folder to write each model's per-group coefficients CSV")
    args = parser.parse_args()
    pd.set_option("display.width", 140, "display.max_columns", 20)
    data = jaxlmm.load_seed()
    fits = {}
    for name, (formula, reml) in MODELS.items():
        m = fits[name] = jaxlmm.lmer(formula, data, reml=reml)
        print(f"\n==================== {name}: {formula} ({'REML' if reml else 'ML'})")
        print(m.summary())
        print("\nR2 (rsq):", {k: round(v, 5) for k, v in m.rsq().items()})
        print("\ntidy() (broom.mixed's table with the Significance column):")
        print(m.tidy().to_string(index=False))
        print("\nper-group coefficients:")
        table = m.group_coefficients()
        print(table.to_string(index=False))
        if args.coefs:
            args.coefs.mkdir(parents=True, exist_ok=True)
            table.to_csv(args.coefs / f"{name}_coefs.csv", index=False)
    print("\n==================== anova(lmm1, lmm2, lmm3)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = jaxlmm.anova(*fits.values(), names=list(fits))
    for w in caught:
        print(w.message)
    print(table)


if __name__ == "__main__":
    main()
