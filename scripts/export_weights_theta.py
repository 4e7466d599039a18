"""Step 2 of 3 of the weights/offset fixtures: jaxlmm's theta for every case, as JSON.

Usage (from the repository root):
    Rscript scripts/make_weights_fixtures.R      # 1. data and lme4 fits (tests/fixtures/weights/)
    python scripts/export_weights_theta.py       # 2. writes tests/fixtures/weights/jaxlmm_theta.json
    Rscript scripts/make_weights_fixtures.R      # 3. adds lme4's deviance function at jaxlmm's theta

so the tests can check that jaxlmm's weighted criterion equals lme4's at the same point.
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # this checkout's jaxlmm and tests

import test_weights_offset  # the tests' own data loading and fits


def main() -> None:
    out = {name: [float(t) for t in test_weights_offset.fitted(name).theta] for name in test_weights_offset.CASES}
    path = test_weights_offset.WEIGHTS / "jaxlmm_theta.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path} ({len(out)} cases)")


if __name__ == "__main__":
    main()
