"""Step 1 of 2 of the lme4 fixtures: jaxlmm's theta and criterion for every reference case, as JSON.

Usage (from the repository root), before the R scripts that read it:
    python scripts/export_jaxlmm_theta.py        # writes tests/fixtures/jaxlmm_theta.json
    Rscript scripts/make_lme4_fixtures.R          # stores lme4_criterion_at_jaxlmm_theta per case
    Rscript scripts/make_edge_fixtures.R          # the same for the edge cases

The R scripts evaluate lme4's own deviance function (``lmer(..., devFunOnly = TRUE)``) at these thetas, so
the tests can check that jaxlmm's criterion function equals lme4's at the same point, independently of
where either optimiser stops.  A case new to the R scripts needs one R run first (it makes the fixture
this script reads the formula from), then both steps.
"""

import json
import subprocess
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import conftest  # the tests' own data loading and fits
import test_edge_cases


def row(m) -> dict:
    return {"theta": [float(t) for t in m.theta], "criterion": float(-2 * m.loglik), "reml": bool(m.reml)}


def main() -> None:
    out: dict = {"lme4": {}, "edge": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in conftest.CASES:
            out["lme4"][name] = row(conftest.fitted(name))
        for name in test_edge_cases.EDGE:
            out["edge"][name] = row(test_edge_cases.fitted(name))
    out["jaxlmm_commit"] = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    path = ROOT / "tests" / "fixtures" / "jaxlmm_theta.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path} ({len(out['lme4'])} lme4 cases, {len(out['edge'])} edge cases)")


if __name__ == "__main__":
    main()
