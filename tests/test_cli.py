"""The ``jaxlmm`` command line: R's numbers on CSV and Parquet, and one-line errors with exit status 2."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import FIXTURES, fitted

import jaxlmm
from jaxlmm import cli

SLEEP = FIXTURES / "data" / "sleepstudy.csv"
CORR = "Reaction ~ Days + (Days | Subject)"
INTERCEPT = "Reaction ~ Days + (1 | Subject)"


@pytest.fixture(autouse=True)
def no_compilation_cache(monkeypatch):
    """Tests call main() in-process: keep JAX's persistent cache (a process-wide setting) off."""
    monkeypatch.setenv("JAXLMM_CACHE_DIR", "")


def run(capsys, *args):
    """main(args) -> (exit status, stdout, stderr)."""
    status = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def test_fit_prints_lmertest_summary(capsys):
    status, out, err = run(capsys, "fit", SLEEP, CORR)
    assert status == 0 and err == ""
    assert out.startswith("Linear mixed model fit by REML")
    m = fitted("sleepstudy_corr_reml")
    assert f"REML criterion at convergence: {-2 * m.loglik:.1f}" in out
    assert "Number of obs: 180, groups:  Subject, 18" in out


def test_fit_json_has_the_model_numbers(capsys):
    status, out, _ = run(capsys, "fit", SLEEP, CORR, "--ml", "--json")
    assert status == 0
    doc = json.loads(out)
    m = fitted("sleepstudy_corr_ml")
    assert doc["reml"] is False and doc["nobs"] == 180 and doc["ngroups"] == {"Subject": 18}
    assert doc["fixef"] == pytest.approx(m.fixef.to_dict(), rel=1e-6)
    for key in ("loglik", "aic", "bic", "deviance", "sigma"):
        assert doc[key] == pytest.approx(getattr(m, key), rel=1e-6)
    assert doc["theta"] == pytest.approx(list(m.theta), rel=1e-4)
    assert doc["converged"] is True and doc["singular"] is False and doc["reml_criterion"] is None
    tidy = pd.DataFrame(doc["tidy"])
    assert list(tidy.columns) == list(m.tidy().columns)
    assert tidy["std.error"].isna().sum() == 4  # ran_pars rows: null in JSON
    assert len(doc["varcorr"]) == len(m.varcorr)


def test_coefs_csv_and_parquet_input(capsys, tmp_path):
    data = pd.read_csv(SLEEP)
    data.to_parquet(tmp_path / "sleep.parquet")
    status, out, _ = run(capsys, "fit", tmp_path / "sleep.parquet", CORR, "--json", "--coefs", tmp_path / "c.csv")
    assert status == 0
    assert json.loads(out)["fixef"] == pytest.approx(fitted("sleepstudy_corr_reml").fixef.to_dict(), rel=1e-6)
    coefs = pd.read_csv(tmp_path / "c.csv")
    expected = fitted("sleepstudy_corr_reml").group_coefficients()
    assert list(coefs.columns) == ["intercept", "Days", "Subject", "ranef_intercept", "ranef_Days"]
    np.testing.assert_allclose(coefs.Days, expected.Days, rtol=1e-5)


def test_anova_refits_by_ml_and_names_models(capsys):
    status, out, err = run(capsys, "anova", SLEEP, INTERCEPT, CORR, "--names", "int,corr")
    assert status == 0
    assert err.strip() == "jaxlmm: warning: refitting model(s) with ML (instead of REML)"
    lines = out.strip().splitlines()  # lme4's print: Data:, Models: and a line per model, then the table
    assert lines[:4] == ["Data: data", "Models:", f"int: {INTERCEPT}", f"corr: {CORR}"]
    header, first, second = lines[4:7]
    assert header.split() == ["npar", "AIC", "BIC", "logLik", "deviance", "Chisq", "Df", "Pr(>Chisq)"]
    assert first.split() == ["int", "4", *first.split()[2:6]]  # blank Chisq, Df and p on the first row
    assert second.split()[:2] == ["corr", "6"]
    lrt = 2 * (fitted("sleepstudy_corr_ml").loglik - fitted("sleepstudy_int_ml").loglik)
    assert float(second.split()[6]) == pytest.approx(lrt, abs=5.1e-4)  # 42.139: R's 5 significant digits


@pytest.mark.slow  # 8 s: the default tier keeps under its 4 minutes (CI runs this tier too)
def test_anova_with_bootstrap_and_pbtest_agree(capsys):
    args = ("--ml", "--nsim", 40, "--seed", 3, "--no-progress", "--json")
    status, out, _ = run(capsys, "anova", SLEEP, INTERCEPT, CORR, *args)
    assert status == 0
    rows = json.loads(out)
    assert [r["model"] for r in rows] == ["m1", "m2"] and rows[0]["Pr(boot)"] is None
    status, out, _ = run(capsys, "pbtest", SLEEP, CORR, INTERCEPT, *args)
    test = json.loads(out)
    assert status == 0 and test["df"] == 2 and test["nsim"] == 40
    assert test["p_boot"] == pytest.approx(rows[1]["Pr(boot)"])
    assert test["lrt"] == pytest.approx(rows[1]["Chisq"])
    status, out, _ = run(capsys, "pbtest", SLEEP, CORR, INTERCEPT, "--ml", "--nsim", 40, "--seed", 3)
    assert status == 0
    lines = out.splitlines()
    assert lines[0].startswith("Bootstrap test; samples: ")
    assert lines[1] == f"large : {CORR}" and lines[2] == f"small : {INTERCEPT}"
    assert lines[-2].split()[0] == "LRT" and lines[-1].split()[0] == "PBtest"


def bad_files(folder):
    (folder / "ragged.csv").write_text('a,"b\n1,2\n')
    (folder / "empty.csv").write_text("")
    (folder / "binary.csv").write_bytes(bytes(range(256)) * 4)
    (folder / "fake.parquet").write_text("not parquet")
    (folder / "data.xlsx").write_text("x")
    pd.read_csv(SLEEP).iloc[:0].to_csv(folder / "header_only.csv", index=False)


@pytest.mark.parametrize(
    "args, message",
    [
        (("fit", "missing.csv", CORR), "missing.csv: no such file"),
        (("fit", "data.xlsx", CORR), "unknown file type"),
        (("fit", "ragged.csv", CORR), "ragged.csv as csv: "),
        (("fit", "empty.csv", CORR), "empty.csv as csv: "),
        (("fit", "binary.csv", CORR), "binary.csv as csv: "),
        (("fit", "fake.parquet", CORR), "fake.parquet as parquet: "),
        (("fit", "header_only.csv", CORR), "the data have no rows"),
        (("fit", SLEEP, "Reaction ~ Dayz + (Days | Subject)"), "unknown column 'Dayz'"),
        (("fit", SLEEP, "Reaction ~ Days + (Days | Subject"), "bad formula: expected ')' at position 33 in "),
        (("fit", SLEEP, "Reaction ~ Days"), "no random-effects term"),
        (("fit", SLEEP, INTERCEPT, "--coefs", "no/such/dir/c.csv"), "no/such/dir/c.csv: "),
        (("anova", SLEEP, CORR), "at least two models"),
        (("anova", SLEEP, CORR, INTERCEPT, "--names", "one"), "--names gives 1 name(s) for 2 models"),
        (("pbtest", SLEEP, INTERCEPT, CORR, "--nsim", 5), "more parameters"),
    ],
)
def test_bad_input_is_one_line_and_status_2(capsys, tmp_path, args, message):
    bad_files(tmp_path)
    command, data, *rest = args
    rest = [tmp_path / a if str(a).endswith(".csv") else a for a in rest]  # --coefs into a missing folder
    status, out, err = run(capsys, command, tmp_path / data, *rest)
    assert status == 2 and out == ""
    assert err.startswith("jaxlmm: error: ") and err.count("\n") == 1
    assert message in err


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("fit", SLEEP),
        ("fit", SLEEP, CORR, "--reml", "--ml"),
        ("pbtest", SLEEP, CORR, INTERCEPT, "--nsim", 0),
        ("power", SLEEP, CORR),
    ],
)
def test_usage_errors_exit_2(capsys, args):
    with pytest.raises(SystemExit) as exc:
        cli.main([str(a) for a in args])
    assert exc.value.code == 2
    assert "usage: jaxlmm" in capsys.readouterr().err


def test_installed_command_prints_no_traceback(tmp_path):
    """The real process: one line on stderr, status 2, as a user sees it."""
    result = subprocess.run(
        [sys.executable, "-m", "jaxlmm.cli", "fit", str(SLEEP), "Reaction ~ Days + (Days | Subjekt)"],
        check=False,
        capture_output=True,
        text=True,
        env={"JAXLMM_CACHE_DIR": str(tmp_path), "PATH": ""},
        cwd=FIXTURES.parents[1],
    )
    assert result.returncode == 2
    assert result.stderr == "jaxlmm: error: unknown column 'Subjekt' (columns are: Reaction, Days, Subject)\n"


def test_json_values_are_plain():
    assert cli.plain({"a": np.float64("nan"), "b": np.int64(3), "c": [np.bool_(True), None, "x"]}) == {
        "a": None,
        "b": 3,
        "c": [True, None, "x"],
    }


@pytest.mark.parametrize(
    "terminal, flag, bar", [(True, [], True), (True, ["--no-progress"], False), (False, [], False)]
)
def test_progress_bars_only_on_a_terminal(capsys, monkeypatch, terminal, flag, bar):
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal)
    status, out, err = run(capsys, "pbtest", SLEEP, CORR, INTERCEPT, "--ml", "--nsim", 40, "--seed", 3, *flag)
    assert status == 0 and out.startswith("Bootstrap test")
    assert ("100%|" in err) == bar  # tqdm's finished bar


def test_semicolon_csv_is_read_as_r_read_csv2(tmp_path):
    data = pd.read_csv(SLEEP)
    data.to_csv(tmp_path / "sleep2.csv", sep=";", decimal=",", index=False)
    pd.testing.assert_frame_equal(cli.read_data(tmp_path / "sleep2.csv"), data)


def test_power_command(capsys, tmp_path):
    design = pd.DataFrame({"x": np.tile(np.linspace(0, 1, 6), 12), "Group": np.repeat(np.arange(12), 6)})
    path = tmp_path / "design.csv"
    design.to_csv(path, index=False)
    spec = [
        "--term",
        "x",
        "--fixef",
        '{"(Intercept)": 1, "x": 0.5}',
        "--covariance",
        '{"Group": [[0.3]]}',
        "--sigma",
        "1",
        "--nsim",
        "40",
        "--seed",
        "1",
        "--no-progress",
    ]
    status, out, err = run(capsys, "power", path, "y ~ x + (1 | Group)", *spec, "--json")
    assert status == 0, err
    result = json.loads(out)
    assert result["n_valid"] + result["n_failed"] == 40
    direct = jaxlmm.power(
        "y ~ x + (1 | Group)",
        design,
        fixef={"(Intercept)": 1, "x": 0.5},
        covariance={"Group": [[0.3]]},
        sigma=1.0,
        term="x",
        nsim=40,
        seed=1,
    )
    assert result["power"] == pytest.approx(direct["power"])
    status, out, err = run(capsys, "power", path, "y ~ x + (1 | Group)", *spec[:3], "{bad json", *spec[4:])
    assert status == 2 and "--fixef is not valid JSON" in err


GLMM_PILOT = FIXTURES / "glmm_power" / "pilot.csv"
GLMM_FORMULA = "acc ~ cond + (1 | subj) + (1 | item)"


@pytest.mark.slow  # 6 s: the default tier keeps under its 4 minutes (CI runs this tier too)
def test_family_fits_glmer_and_prints_lme4s_summary(capsys):
    status, out, err = run(capsys, "fit", GLMM_PILOT, GLMM_FORMULA, "--family", "binomial")
    assert status == 0 and err == ""
    m = jaxlmm.glmer(GLMM_FORMULA, pd.read_csv(GLMM_PILOT), family="binomial")
    assert out.strip() == m.summary().strip()
    assert out.startswith("Generalized linear mixed model fit by maximum likelihood (Laplace Approximation)")
    status, out, _ = run(capsys, "fit", GLMM_PILOT, "n ~ cond + (1 | subj)", "--family", "poisson", "--json")
    got = json.loads(out)
    assert status == 0 and got["family"] == "poisson" and got["nobs"] == 144
    p = jaxlmm.glmer("n ~ cond + (1 | subj)", pd.read_csv(GLMM_PILOT), family="poisson")
    assert got["fixef"] == pytest.approx(p.fixef.to_dict(), rel=1e-8)
    assert got["loglik"] == pytest.approx(p.loglik, rel=1e-10)


def test_family_anova_compares_glmers_and_refuses_coefs(capsys, tmp_path):
    status, out, err = run(
        capsys, "anova", GLMM_PILOT, "n ~ 1 + (1 | subj)", "n ~ cond + (1 | subj)", "--family", "poisson", "--json"
    )
    assert status == 0, err
    rows = json.loads(out)
    small = jaxlmm.glmer("n ~ 1 + (1 | subj)", pd.read_csv(GLMM_PILOT), family="poisson")
    large = jaxlmm.glmer("n ~ cond + (1 | subj)", pd.read_csv(GLMM_PILOT), family="poisson")
    assert rows[1]["Chisq"] == pytest.approx(small.criterion - large.criterion, rel=1e-6)
    status, _, err = run(capsys, "fit", GLMM_PILOT, GLMM_FORMULA, "--family", "binomial", "--coefs", tmp_path / "c.csv")
    assert status == 2 and "--coefs" in err
    with pytest.raises(SystemExit) as exc:  # argparse: usage error
        run(capsys, "fit", GLMM_PILOT, GLMM_FORMULA, "--family", "gamma")
    assert exc.value.code == 2
