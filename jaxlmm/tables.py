"""The tables R users read: lmerTest's coefficient table, broom.mixed's ``tidy``, ``ranef``/``coef``,
and the text of lmerTest's ``summary``."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .ftests import t_tests
from .params import ran_pars
from .rformat import abbreviate, coefmat_lines, format_numbers, matrix_lines, named_vector_lines, stars, zapsmall

# lmerTest's title as R prints it at width 80 (lme4's .prt.methTit wraps it; "likelihood ." is lmerTest's)
TITLE_REML = ["Linear mixed model fit by REML. t-tests use Satterthwaite's method [", "lmerModLmerTest]"]
TITLE_ML = ["Linear mixed model fit by maximum likelihood . t-tests use Satterthwaite's", "  method [lmerModLmerTest]"]
CORRELATION_MAX = 12  # lme4.summary.cor.max: larger fixed-effect correlation matrices are not printed


def coef_table(model, ddf: str = "Satterthwaite") -> pd.DataFrame:
    """lmerTest's ``summary(m, ddf = ...)$coefficients``: Estimate, Std. Error, df, t value, Pr(>|t|)
    (Satterthwaite; or Kenward–Roger: pbkrtest's adjusted standard errors and KR df)."""
    table = t_tests(model, np.eye(model.design.p), ddf)
    table.index = model.design.fixef_names
    return table


def tidy(model, ddf: str = "Satterthwaite") -> pd.DataFrame:
    """broom.mixed's ``tidy(m)`` (Satterthwaite or Kenward–Roger df and p; effect, group, term, estimate, std.error, statistic, df, p.value) and the
    seed analysis's ``Significance`` column of stars: ``***`` p < 0.001, ``**`` < 0.01, ``*`` < 0.05,
    ``.`` < 0.1, blank otherwise, and blank on ran_pars rows.

    Where broom.mixed has NA (the group of a fixed effect; std.error, statistic, df, p.value of a ran_pars
    row) the table has NaN, pandas' missing value (``isna`` finds it), never ``None``."""
    ct = coef_table(model, ddf)
    fixed = pd.DataFrame(
        {
            "effect": "fixed",
            "group": np.nan,
            "term": ct.index,
            "estimate": ct["Estimate"].values,
            "std.error": ct["Std. Error"].values,
            "statistic": ct["t value"].values,
            "df": ct["df"].values,
            "p.value": ct["Pr(>|t|)"].values,
        }
    )
    fixed["group"] = fixed["group"].astype(object)
    rand = pd.DataFrame(
        [(g, term, float(v)) for g, term, v in ran_pars(model.term_covariances(), model.sigma)],
        columns=["group", "term", "estimate"],
    )
    rand.insert(0, "effect", "ran_pars")
    for col in ("std.error", "statistic", "df", "p.value"):
        rand[col] = np.nan
    out = pd.concat([fixed, rand], ignore_index=True)
    out["Significance"] = [stars(p).strip() if e == "fixed" else "" for e, p in zip(out.effect, out["p.value"])]
    return out


def ranef(model) -> pd.DataFrame:
    """R's ``as.data.frame(ranef(m, condVar = TRUE))``: grpvar, term, grp, condval, condsd."""
    d = model.design
    frames = []
    for k, name in enumerate(d.group_names):
        cols = d.block_columns(k)
        modes, sds = model.conditional_modes[k], np.sqrt(np.diagonal(model.condvar[k], axis1=1, axis2=2))
        for j, c in enumerate(cols):
            frames.append(
                pd.DataFrame(
                    {
                        "grpvar": name,
                        "term": c,
                        "grp": list(d.group_levels[k]),
                        "condval": modes[:, j],
                        "condsd": sds[:, j],
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def coef(model) -> dict[str, pd.DataFrame]:
    """R's ``coef(m)``: per grouping factor, fixed effects plus that factor's random effects per level."""
    d = model.design
    out = {}
    fe = model.fixef
    modes = model.conditional_modes
    for k, name in enumerate(d.group_names):
        cols = d.block_columns(k)
        table = pd.DataFrame(
            np.tile(fe.values, (len(d.group_levels[k]), 1)),
            columns=fe.index,
            index=pd.Index(d.group_levels[k], name=name),
        )
        for j, c in enumerate(cols):
            table[c] = table.get(c, 0.0) + modes[k][:, j]
        out[name] = table
    return out


def group_coefficients(model, group: str | None = None) -> pd.DataFrame:
    """The seed's per-group CSV: ``intercept``, one column per other fixed effect named after it (``x``),
    the group, then ``ranef_intercept`` and ``ranef_<column>`` per random effect of that group.

    The coefficient columns are R's ``coef(m)[[group]]`` (fixed effects plus the level's random effects),
    the ``ranef_*`` columns the conditional modes.  Write it with ``.to_csv(path, index=False)``.
    """
    d = model.design
    group = group or d.group_names[0]
    k = d.group_names.index(group)
    table = coef(model)[group]
    out = pd.DataFrame({"intercept": table["(Intercept)"].values if "(Intercept)" in table else np.nan})
    for name in model.fixef.index:
        if name != "(Intercept)":
            out[name] = table[name].values
    out[group] = list(d.group_levels[k])
    modes = model.conditional_modes[k]
    for j, c in enumerate(d.block_columns(k)):
        out["ranef_intercept" if c == "(Intercept)" else f"ranef_{c}"] = modes[:, j]
    return out


class Summary(str):
    """The text of lmerTest's ``summary(m)``: a ``str`` that a REPL shows as the text itself (R prints a
    summary once; ``print(m.summary())`` and an interactive ``m.summary()`` both show it once)."""

    def __repr__(self) -> str:
        return str(self)

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(str(self))


def random_effects_lines(model, digits: int = 4) -> list[str]:
    """lme4's ``formatVC`` table (Groups, Name, Variance, Std.Dev., Corr), left-justified as R prints it."""
    covariances = model.term_covariances()
    sds = np.concatenate([np.sqrt(np.diag(S)) for _, _, S in covariances] + [[model.sigma]])
    rows = []
    for name, cols, S in covariances:
        rows += [[name if i == 0 else "", c] for i, c in enumerate(cols)]
    rows.append(["Residual", ""])
    cells = np.column_stack([np.array(rows, dtype=object), format_numbers(sds**2, digits), format_numbers(sds, digits)])
    header = ["Groups", "Name", "Variance", "Std.Dev."]
    width = max(len(cols) for _, cols, _ in covariances)
    if width > 1:  # R: round(cor, 2) formatted per term with nsmall = 2, lower triangle, last column dropped
        corr = np.full((len(rows), width - 1), "", dtype=object)
        first = 0
        for _, cols, S in covariances:
            sd = np.sqrt(np.diag(S))
            with np.errstate(invalid="ignore", divide="ignore"):
                cor = S / np.outer(sd, sd)
            text = np.array(format_numbers(np.round(cor, 2).ravel(), 7, "NaN", 2), dtype=object).reshape(cor.shape)
            for i in range(1, len(cols)):
                corr[first + i, :i] = text[i, :i]
            first += len(cols)
        cells = np.column_stack([cells, corr])
        header += ["Corr"] + [""] * (width - 2)
    return matrix_lines([""] * len(rows), header, cells, right=False)


def fixed_effects_correlation_lines(model) -> list[str]:
    """lme4's "Correlation of Fixed Effects" block: rows named by ``abbreviate(names, 11)``, columns by
    ``abbreviate(names, 6)`` (``(Intr)``), round(r, 3) shown with 3 decimals, lower triangle only."""
    names = list(model.design.fixef_names)
    V = model.vcov.to_numpy()
    s = np.sqrt(np.diag(V))
    C = np.round(V / np.outer(s, s), 3)
    text = np.array(format_numbers(C.ravel(), 7, nsmall=3), dtype=object).reshape(C.shape)
    text[np.triu_indices(len(names))] = ""
    return matrix_lines(abbreviate(names, 11)[1:], abbreviate(names, 6)[:-1], text[1:, :-1], right=False)


def summary_text(model, ddf: str = "Satterthwaite") -> Summary:
    """What lmerTest's ``summary(m, ddf = ...)`` prints (the ``Data:`` line names ``model.data_name``)."""
    d = model.design
    lines = []
    lines += [t.replace("Satterthwaite", ddf) for t in (TITLE_REML if model.reml else TITLE_ML)]  # same width
    lines.append(f"Formula: {model.formula}")
    lines.append(f"   Data: {model.data_name}")
    if d.n_dropped:
        lines.append(f"  ({d.n_dropped} observations deleted due to missingness)")
    lines.append("")
    if model.reml:  # lme4's .prt.aictab: rounded to 1 decimal, then format()
        (criterion,) = format_numbers([round(-2 * model.loglik, 1)], 7)
        lines.append(f"REML criterion at convergence: {criterion}")
    else:
        values = format_numbers(np.round([model.aic, model.bic, model.loglik, model.deviance], 1), 7)
        lines += named_vector_lines(
            ["AIC", "BIC", "logLik", "deviance", "df.resid"], [*values, str(model.nobs - model.npar)]
        )
    lines.append("")
    resid = model.residuals("pearson") / model.sigma  # lme4: residuals(m, "pearson", scaled = TRUE)
    q = zapsmall(np.quantile(resid, [0, 0.25, 0.5, 0.75, 1]), 5)  # lme4: zapsmall(quantile, digits + 1)
    lines.append("Scaled residuals: ")
    lines += named_vector_lines(["Min", "1Q", "Median", "3Q", "Max"], format_numbers(q, 4))
    lines.append("")
    lines.append("Random effects:")
    lines += random_effects_lines(model)
    groups = "; ".join(f"{k}, {v}" for k, v in model.ngroups.items())
    lines.append(f"Number of obs: {model.nobs}, groups:  {groups}")
    lines.append("")
    lines.append("Fixed effects:")
    lines += coefmat_lines(coef_table(model, ddf), digits=4)
    if d.p > CORRELATION_MAX:  # lme4 says so in a message (getOption("lme4.summary.cor.max"))
        lines.append("")
        lines.append(f"Correlation matrix not shown by default, as p = {d.p} > {CORRELATION_MAX}.")
        lines.append("Use m.vcov if you need it")
    elif d.p > 1:
        lines.append("")
        lines.append("Correlation of Fixed Effects:")
        lines += fixed_effects_correlation_lines(model)
    if model.singular:
        code = "0 (OK)" if model.converged else "1 (not converged)"
        lines.append(f"optimizer ({model.opt.optimizer}) convergence code: {code}")
        lines.append("boundary (singular) fit: see help('isSingular')")
    if not model.converged:
        lines.append(f"Warning: {model.opt.message}")
    return Summary("\n".join(lines))
