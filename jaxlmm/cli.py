"""The ``jaxlmm`` command line: lme4's ``lmer``, ``anova`` and pbkrtest's ``PBmodcomp`` on a CSV or Parquet file.

    jaxlmm fit DATA FORMULA [--reml | --ml] [--family binomial|poisson] [--json] [--coefs OUT.csv]
    jaxlmm anova DATA F1 F2 [F3 ...] [--names N1,N2,...] [--reml | --ml] [--nsim N --seed S] [--json]
    jaxlmm pbtest DATA LARGE SMALL [--reml | --ml] [--nsim N --seed S] [--json]

``--family binomial`` or ``--family poisson`` (fit, anova, pbtest) fits lme4's ``glmer`` instead (by
maximum likelihood, Laplace; ``--weights`` are its prior weights, e.g. binomial trials).

Exit status: 0 on success, 2 for a usage error or bad input (one line on stderr, ``jaxlmm: error: ...``),
1 for an unexpected internal error (one line; ``--traceback`` shows where).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .api import PBTest, anova, glmer, lmer, pbtest, power
from .errors import DataError, FormulaError, JaxlmmError
from .glmm import GeneralizedLinearMixedModel
from .model import LinearMixedModel

COMPRESSIONS = (".gz", ".bz2", ".xz", ".zip", ".zst")
EXAMPLES = """examples:
  jaxlmm fit data.csv "y ~ x + (1 + x | Group)" --coefs coefs.csv
  jaxlmm fit trials.csv "cbind(hits, misses) ~ x + (1 | Group)" --family binomial
  jaxlmm anova data.csv "y ~ x + (1 | Group)" "y ~ x + (1 + x | Group)" --nsim 1000 --seed 1
  jaxlmm pbtest data.parquet "y ~ x + (1 + x | Group)" "y ~ x + (1 | Group)" --nsim 1000
  jaxlmm power design.csv "y ~ x + (1 | Group)" --term x --fixef '{"(Intercept)": 1, "x": 0.5}' \
      --covariance '{"Group": [[0.3]]}' --sigma 1 --test lrt --nsim 1000 --seed 1

exit status: 0 ok, 2 usage error or bad input (one line on stderr), 1 internal error"""


# ---------------------------------------------------------------- input
def data_format(path: Path) -> str:
    """``"csv"``, ``"tsv"`` or ``"parquet"`` from the file name (a compression suffix such as .gz is skipped)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSIONS:
        suffixes.pop()
    kind = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}.get(suffixes[-1] if suffixes else "")
    if kind is None:
        raise DataError(f"cannot read {path}: unknown file type (use .csv, .tsv, .parquet or .pq)")
    return kind


def read_data(path: str | Path) -> pd.DataFrame:
    """Read a data file as R's ``read.csv`` (or ``read.csv2`` for a ``;``-separated file) would; any problem
    becomes a one-line DataError."""
    path = Path(path)
    kind = data_format(path)
    if not path.is_file():
        raise DataError(f"cannot read {path}: {'not a file' if path.exists() else 'no such file'}")
    try:
        if kind == "parquet":
            return pd.read_parquet(path)
        data = pd.read_csv(path, sep="\t" if kind == "tsv" else ",")
        if kind == "csv" and data.shape[1] == 1 and ";" in str(data.columns[0]):  # R's write.csv2 (sep ; dec ,)
            data = pd.read_csv(path, sep=";", decimal=",")
        return data
    except ImportError as exc:
        raise DataError(f"cannot read {path}: Parquet needs pyarrow (pip install pyarrow): {exc}") from None
    except (OSError, ValueError) as exc:  # pandas' ParserError/EmptyDataError, UnicodeDecodeError, ArrowInvalid
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"cannot read {path} as {kind}: {reason}") from None


def fit_models(
    data: pd.DataFrame, formulas: list[str], reml: bool, weights: str | None = None, family: str | None = None
) -> list[LinearMixedModel] | list[GeneralizedLinearMixedModel]:
    """One ``lmer`` fit per formula (``weights``: the column of prior weights, if any), or one ``glmer``
    fit of ``family`` (maximum likelihood: ``reml`` does not apply)."""
    if family is not None:
        return [glmer(f, data, family=family, weights=weights) for f in formulas]
    return [lmer(f, data, reml=reml, weights=weights) for f in formulas]


# ---------------------------------------------------------------- output
def plain(value):
    """``value`` with numpy scalars, NaN and containers turned into what ``json.dumps`` writes (NaN -> null)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [plain(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) or math.isinf(value) else float(value)
    if value is None or isinstance(value, str):
        return value
    return None if pd.isna(value) else str(value)


def records(table: pd.DataFrame) -> list[dict]:
    """A table's rows as dicts (the index is left out)."""
    return table.to_dict(orient="records")


def model_json(m: LinearMixedModel) -> dict:
    """The fitted model's numbers: what ``summary``, ``tidy``, ``VarCorr``, ``logLik`` etc. report in R."""
    return {
        "formula": m.formula,
        "reml": m.reml,
        "nobs": m.nobs,
        "n_dropped": m.n_dropped,
        "ngroups": m.ngroups,
        "fixef": m.fixef.to_dict(),
        "tidy": records(m.tidy()),
        "varcorr": records(m.varcorr),
        "sigma": m.sigma,
        "theta": m.theta,
        "loglik": m.loglik,
        "aic": m.aic,
        "bic": m.bic,
        "deviance": m.deviance,
        "reml_criterion": m.reml_criterion,
        "converged": m.converged,
        "singular": m.singular,
    }


def glmm_json(m: GeneralizedLinearMixedModel) -> dict:
    """A glmer's numbers: what ``summary(g)``, ``tidy``, ``VarCorr``, ``logLik`` report in R."""
    return {
        "formula": m.formula,
        "family": m.family.name,
        "link": m.family.link,
        "nobs": m.nobs,
        "ngroups": m.ngroups,
        "fixef": m.fixef.to_dict(),
        "tidy": records(m.tidy()),
        "varcorr": records(m.varcorr),
        "theta": m.theta,
        "loglik": m.loglik,
        "aic": m.aic,
        "bic": m.bic,
        "deviance": m.criterion,
        "df_resid": m.df_resid,
        "converged": m.converged,
        "singular": m.singular,
    }


def pbtest_text(test: PBTest, large: str, small: str) -> str:
    """What pbkrtest's ``PBmodcomp`` prints: the samples used, the two models, the LRT and PBtest rows."""
    extremes = int(np.sum(test.reference >= test.lrt))
    used = test.reference.size
    return "\n".join(
        [
            (
                f"Bootstrap test; samples: {used} of {test.nsim} ({test.n_failed} failed, "
                f"{test.n_negative} negative); extremes: {extremes}; "
                f"pbkrtest's p (positive draws only): {test.p_boot_pbkrtest:.4g}"
            ),
            f"large : {large}",
            f"small : {small}",
            test.table().to_string(),
        ]
    )


def write_csv(table: pd.DataFrame, path: str) -> None:
    try:
        table.to_csv(path, index=False)
    except OSError as exc:
        raise DataError(f"cannot write {path}: {exc.strerror or exc}") from None


def dump(obj) -> None:
    print(json.dumps(plain(obj), indent=2, allow_nan=False))


# ---------------------------------------------------------------- commands
def cmd_fit(args: argparse.Namespace) -> None:
    """``summary(lmer(formula, data))``, or its numbers as JSON; ``--coefs`` writes the per-group table."""
    if args.family is not None and args.coefs:
        raise DataError("--coefs writes an lmer's per-group table; it does not apply with --family")
    (m,) = fit_models(read_data(args.data), [args.formula], args.reml, args.weights, args.family)
    if args.coefs:
        write_csv(m.group_coefficients(), args.coefs)
    if args.json:
        dump(glmm_json(m) if args.family is not None else model_json(m))
    else:
        print(m.summary())


def cmd_anova(args: argparse.Namespace) -> None:
    """lme4's ``anova(m1, m2, ...)`` (REML fits refitted by ML), with ``Pr(boot)`` when ``--nsim`` > 0."""
    names = args.names or [f"m{k + 1}" for k in range(len(args.formulas))]
    if len(names) != len(args.formulas):
        raise DataError(f"--names gives {len(names)} name(s) for {len(args.formulas)} models")
    models = fit_models(read_data(args.data), args.formulas, args.reml, args.weights, args.family)
    table = anova(*models, names=names, nsim=args.nsim, seed=args.seed, progress=args.progress)
    if args.json:
        dump([{"model": name, **row} for name, row in zip(table.index, records(table))])
    else:
        print(table)


def cmd_pbtest(args: argparse.Namespace) -> None:
    """pbkrtest's ``PBmodcomp(large, small, nsim)``."""
    large, small = fit_models(read_data(args.data), [args.large, args.small], args.reml, args.weights, args.family)
    test = pbtest(large, small, nsim=args.nsim, seed=args.seed, progress=args.progress)
    if args.json:
        dump(
            {
                "large": args.large,
                "small": args.small,
                "nsim": test.nsim,
                "n_failed": test.n_failed,
                "lrt": test.lrt,
                "df": test.df,
                "p_chisq": test.p_chisq,
                "p_boot": test.p_boot,
                "p_boot_pbkrtest": test.p_boot_pbkrtest,
                "n_negative": test.n_negative,
            }
        )
    else:
        print(pbtest_text(test, args.large, args.small))


def json_argument(text: str, name: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{name} is not valid JSON: {exc.msg} at position {exc.pos}") from None
    if not isinstance(value, dict):
        raise DataError(f'{name} must be a JSON object such as {{"x": 0.5}}')
    return value


def cmd_power(args: argparse.Namespace) -> None:
    """simr's ``powerSim``: power of a test of ``--term`` for the specified model on DATA's design."""
    result = power(
        args.formula,
        read_data(args.data),
        fixef=json_argument(args.fixef, "--fixef"),
        covariance=json_argument(args.covariance, "--covariance"),
        sigma=args.sigma,
        term=args.term,
        test=args.test,
        nsim=args.nsim,
        alpha=args.alpha,
        seed=args.seed,
        nboot=args.nboot,
        progress=args.progress,
    )
    summary = {k: result[k] for k in ("power", "se", "n_valid", "n_failed")}
    if args.json:
        dump({"formula": args.formula, "term": args.term, "test": args.test, "alpha": args.alpha, **summary})
    else:
        print(
            f"Power for {args.term!r} by {args.test} test at alpha {args.alpha:g}: {summary['power']:.4f} "
            f"(SE {summary['se']:.4f}); {summary['n_valid']} of {args.nsim} simulations valid, "
            f"{summary['n_failed']} failed"
        )


def at_least(minimum: int):
    """An argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value

    return parse


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("data", help="a .csv, .tsv or .parquet file (a .gz etc. compressed CSV works too)")
    crit = p.add_mutually_exclusive_group()
    crit.add_argument("--reml", dest="reml", action="store_true", default=True, help="fit by REML (default, as lmer)")
    crit.add_argument("--ml", dest="reml", action="store_false", help="fit by maximum likelihood")
    p.add_argument("--json", action="store_true", help="print JSON instead of R-style text")
    p.add_argument("--weights", metavar="COLUMN", default=None, help="the column of prior weights (lmer's weights=)")
    p.add_argument(
        "--family",
        choices=("binomial", "poisson"),
        default=None,
        help="fit glmer with this family (canonical link; maximum likelihood) instead of lmer",
    )


def _bootstrap_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=None, help="random seed of the simulations")
    p.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        help="no progress bars (they show only when stderr is a terminal)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxlmm",
        description="Linear mixed models (lme4's lmer) in JAX.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"jaxlmm {__version__}")
    parser.add_argument("--traceback", action="store_true", help="show the traceback of an internal error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{fit,anova,pbtest,power}")

    p = sub.add_parser(
        "fit",
        help="fit one model and print lmerTest's summary",
        description="Fit an lme4 formula and print lmerTest's summary (or --json).",
    )
    _common(p)
    p.add_argument("formula", help='lme4 formula, e.g. "y ~ x + (1 | Group)"')
    p.add_argument("--coefs", metavar="OUT.csv", help="write the per-group coefficients to this CSV")
    p.set_defaults(run=cmd_fit)

    p = sub.add_parser(
        "anova",
        help="likelihood-ratio table of nested models (lme4's anova)",
        description="Fit each formula and print anova(m1, m2, ...); REML fits are refitted by ML.",
    )
    _common(p)
    p.add_argument("formulas", nargs="+", metavar="FORMULA", help="two or more lme4 formulas")
    p.add_argument(
        "--names",
        type=lambda text: text.split(","),
        metavar="N1,N2,...",
        help="comma-separated model names (default m1,m2,...)",
    )
    p.add_argument(
        "--nsim",
        type=at_least(0),
        default=0,
        help="add a parametric-bootstrap Pr(boot) column from N simulations per pair",
    )
    _bootstrap_options(p)
    p.set_defaults(run=cmd_anova)

    p = sub.add_parser(
        "pbtest",
        help="parametric bootstrap LRT (pbkrtest's PBmodcomp)",
        description="Parametric bootstrap likelihood-ratio test of SMALL nested in LARGE.",
    )
    _common(p)
    p.add_argument("large", help="the larger model's formula")
    p.add_argument("small", help="the smaller model's formula")
    p.add_argument("--nsim", type=at_least(1), default=1000, help="number of simulations (default 1000)")
    _bootstrap_options(p)
    p.set_defaults(run=cmd_pbtest)

    p = sub.add_parser(
        "power",
        help="power by simulation (simr's powerSim) for a specified model",
        description="Simulate from the specified model on DATA's design (its covariates and groups; "
        "the response column is ignored) and report the power of a test of --term.",
    )
    p.add_argument("data", help="a .csv, .tsv or .parquet file with the design's columns")
    p.add_argument("formula", help='lme4 formula, e.g. "y ~ x + (1 | Group)"')
    p.add_argument("--term", required=True, help="the fixed-effect term to test, e.g. x")
    p.add_argument(
        "--fixef", required=True, metavar="JSON", help='fixed effects, e.g. \'{"(Intercept)": 1, "x": 0.5}\''
    )
    p.add_argument(
        "--covariance",
        required=True,
        metavar="JSON",
        help="random-effects covariance per grouping factor, e.g. '{\"Group\": [[0.3]]}'",
    )
    p.add_argument("--sigma", type=float, required=True, help="residual standard deviation")
    p.add_argument("--test", choices=("lrt", "pb", "satterthwaite", "kr"), default="lrt", help="the test (default lrt)")
    p.add_argument("--nsim", type=at_least(1), default=1000, help="number of simulations (default 1000)")
    p.add_argument("--nboot", type=at_least(1), default=1000, help="bootstrap draws for --test pb (default 1000)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _bootstrap_options(p)
    p.set_defaults(run=cmd_power)
    return parser


def error_line(exc: Exception) -> str:
    """One line naming the problem; a formula error says where (FormulaError's caret picture is dropped)."""
    if isinstance(exc, FormulaError):
        first = str(exc).splitlines()[0].rstrip(":")
        return f"bad formula: {first} in {exc.formula!r}" if exc.formula else f"bad formula: {first}"
    return " ".join(str(exc).split()) or type(exc).__name__


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"jaxlmm: warning: {' '.join(str(message).split())}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jaxlmm`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "progress", False):
        args.progress = sys.stderr.isatty()
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            args.run(args)
        except JaxlmmError as exc:
            print(f"jaxlmm: error: {error_line(exc)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("jaxlmm: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:  # the reader went away (jaxlmm ... | head): stop quietly, as Python's docs advise
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except Exception as exc:
            if args.traceback:
                raise
            print(
                f"jaxlmm: internal error: {type(exc).__name__}: {error_line(exc)} "
                "(rerun as jaxlmm --traceback ... and report it)",
                file=sys.stderr,
            )
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
