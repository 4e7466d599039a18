"""The tables R users read: lmerTest's coefficient table, broom.mixed's ``tidy``, ``ranef``/``coef``,
and the text of lmerTest's ``summary``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.special

from .inference import satterthwaite_df
from .params import ran_pars


def coef_table(model) -> pd.DataFrame:
    """lmerTest's ``summary(m)$coefficients``: Estimate, Std. Error, df, t value, Pr(>|t|) (Satterthwaite)."""
    p = model.design.p
    df, var = satterthwaite_df(
        model.theta, model.sigma, np.eye(p), model.cp, model.structure, model.reml, model.theta_scale
    )
    est = model.fixef.values
    se = np.sqrt(np.asarray(var))
    t = est / se
    df = np.asarray(df)
    return pd.DataFrame(
        {
            "Estimate": est,
            "Std. Error": se,
            "df": df,
            "t value": t,
            "Pr(>|t|)": 2 * scipy.special.stdtr(df, -np.abs(t)),
        },
        index=model.design.fixef_names,
    )


def tidy(model) -> pd.DataFrame:
    """broom.mixed's ``tidy(m)``: effect, group, term, estimate, std.error, statistic, df, p.value."""
    ct = coef_table(model)
    fixed = pd.DataFrame(
        {
            "effect": "fixed",
            "group": None,
            "term": ct.index,
            "estimate": ct["Estimate"].values,
            "std.error": ct["Std. Error"].values,
            "statistic": ct["t value"].values,
            "df": ct["df"].values,
            "p.value": ct["Pr(>|t|)"].values,
        }
    )
    rand = pd.DataFrame(
        [(g, term, float(v)) for g, term, v in ran_pars(model.term_covariances(), model.sigma)],
        columns=["group", "term", "estimate"],
    )
    rand.insert(0, "effect", "ran_pars")
    for col in ("std.error", "statistic", "df", "p.value"):
        rand[col] = np.nan
    return pd.concat([fixed, rand], ignore_index=True)


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
    """The seed's per-group CSV: intercept, slope, the group, ranef_intercept (and ranef_<x> per random slope).

    ``coef`` gives the per-group ``intercept`` and ``slope`` (the first non-intercept fixed effect); the
    ``ranef_*`` columns are the conditional modes.  Write it with ``.to_csv(path, index=False)``.
    """
    d = model.design
    group = group or d.group_names[0]
    k = d.group_names.index(group)
    table = coef(model)[group]
    names = list(model.fixef.index)
    slope = next((n for n in names if n != "(Intercept)"), None)
    out = pd.DataFrame({"intercept": table["(Intercept)"].values if "(Intercept)" in table else np.nan})
    if slope is not None:
        out["slope"] = table[slope].values
    out[group] = list(d.group_levels[k])
    modes = model.conditional_modes[k]
    for j, c in enumerate(d.block_columns(k)):
        out["ranef_intercept" if c == "(Intercept)" else f"ranef_{c}"] = modes[:, j]
    return out


def stars(p: float) -> str:
    """R's significance stars: *** < 0.001, ** < 0.01, * < 0.05, . < 0.1."""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else "." if p < 0.1 else " "


def summary_text(model) -> str:
    """What lmerTest's ``summary(m)`` prints."""
    d = model.design
    lines = []
    method = "REML" if model.reml else "maximum likelihood"
    lines.append(f"Linear mixed model fit by {method}. t-tests use Satterthwaite's method [lmerModLmerTest]")
    lines.append(f"Formula: {model.formula}")
    if d.n_dropped:
        lines.append(f"  ({d.n_dropped} observations deleted due to missingness)")
    lines.append("")
    if model.reml:
        lines.append(f"REML criterion at convergence: {-2 * model.loglik:.1f}")
    else:
        lines.append(f"{'AIC':>9} {'BIC':>9} {'logLik':>9} {'deviance':>9} {'df.resid':>9}")
        lines.append(
            f"{model.aic:9.1f} {model.bic:9.1f} {model.loglik:9.1f} {model.deviance:9.1f} {model.nobs - model.npar:9d}"
        )
    lines.append("")
    resid = model.residuals() / model.sigma
    q = np.quantile(resid, [0, 0.25, 0.5, 0.75, 1])
    lines.append("Scaled residuals: ")
    lines.append("".join(f"{h:>9}" for h in ("Min", "1Q", "Median", "3Q", "Max")))
    lines.append("".join(f"{v:9.4f}" for v in q))
    lines.append("")
    lines.append("Random effects:")
    vc_rows = []
    for name, cols, S in model.term_covariances():
        sd = np.sqrt(np.diag(S))
        for i, c in enumerate(cols):
            cors = [S[i, j] / (sd[i] * sd[j]) if sd[i] * sd[j] > 0 else np.nan for j in range(i)]
            vc_rows.append((name if i == 0 else "", c, S[i, i], sd[i], cors))
    vc_rows.append(("Residual", "", model.sigma**2, model.sigma, []))
    w1 = max(len("Groups"), *(len(r[0]) for r in vc_rows))
    w2 = max(len("Name"), *(len(r[1]) for r in vc_rows))
    header = f" {'Groups':<{w1}} {'Name':<{w2}} {'Variance':>10} {'Std.Dev.':>9}"
    if any(r[4] for r in vc_rows):
        header += " Corr"
    lines.append(header)
    for g, nm, var, sd, cors in vc_rows:
        lines.append(f" {g:<{w1}} {nm:<{w2}} {var:10.4g} {sd:9.4g}" + "".join(f" {c:5.2f}" for c in cors))
    groups = ", ".join(f"{k}, {v}" for k, v in model.ngroups.items())
    lines.append(f"Number of obs: {model.nobs}, groups:  {groups}")
    lines.append("")
    lines.append("Fixed effects:")
    ct = coef_table(model)
    wn = max(len(n) for n in ct.index)
    lines.append(f"{'':<{wn}} {'Estimate':>11} {'Std. Error':>11} {'df':>9} {'t value':>8} {'Pr(>|t|)':>10}")
    for name, row in ct.iterrows():
        p = row["Pr(>|t|)"]
        lines.append(
            f"{name:<{wn}} {row['Estimate']:11.4g} {row['Std. Error']:11.4g} {row['df']:9.3f} "
            f"{row['t value']:8.3f} {p:10.3g} {stars(p)}"
        )
    lines.append("---")
    lines.append("Signif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1")
    if d.p > 1:
        lines.append("")
        lines.append("Correlation of Fixed Effects:")
        V = model.vcov.values
        s = np.sqrt(np.diag(V))
        C = V / np.outer(s, s)
        short = [n[:6] for n in d.fixef_names]
        lines.append(" " * (wn + 1) + " ".join(f"{n:>6}" for n in short[:-1]))
        for i in range(1, d.p):
            lines.append(f"{d.fixef_names[i]:<{wn}} " + " ".join(f"{C[i, j]:6.3f}" for j in range(i)))
    if model.singular:
        code = "0 (OK)" if model.converged else "1 (not converged)"
        lines.append(f"optimizer ({model.opt.optimizer}) convergence code: {code}")
        lines.append("boundary (singular) fit: see help('isSingular')")
    if not model.converged:
        lines.append(f"Warning: {model.opt.message}")
    return "\n".join(lines)
