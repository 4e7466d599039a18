"""R's rules for printing numbers and tables, so that jaxlmm's prints read as R's.

* :func:`format_numbers` — R's ``format(x, digits)`` of a numeric vector (``formatReal``: one notation and
  one number of decimals for the whole vector, each element shown to at least ``digits`` significant
  digits where needed, scientific when narrower than fixed);
* :func:`format_pval` — R's ``format.pval`` (``< 2e-16`` below the machine epsilon);
* :func:`abbreviate` — R's ``abbreviate(names, minlength)`` (drop lower-case vowels from the end, then
  lower-case letters, then any letter, never a word's first);
* :func:`coefmat_lines` — R's ``printCoefmat`` (lmerTest's and lme4's tables: coefficient columns, test
  statistics, p-values with significance stars, blank cells for NA).
"""

from __future__ import annotations

import math

import numpy as np

EPS = float(np.finfo(float).eps)  # R's .Machine$double.eps, printCoefmat's eps.Pvalue
STAR_CUTS = ((0.001, "***"), (0.01, "**"), (0.05, "*"), (0.1, "."))
SIGNIF_LEGEND = "Signif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1"


def stars(p: float) -> str:
    """R's significance code of one p-value (``symnum`` with printCoefmat's cut points); "" for NaN."""
    if p is None or not np.isfinite(p):
        return ""
    return next((s for cut, s in STAR_CUTS if p < cut), " ")


def _significant(x: float, digits: int) -> tuple[int, int]:
    """(decimal exponent, significant digits needed) of ``x`` shown to ``digits`` significant digits
    (R's ``scientific``: trailing zeros are not needed)."""
    if x == 0:
        return 0, 1
    mantissa, exponent = f"{abs(x):.{digits - 1}e}".split("e")
    return int(exponent), max(1, len(mantissa.replace(".", "").rstrip("0")))


def format_numbers(values, digits: int, na: str = "NA", nsmall: int = 0) -> list[str]:
    """R's ``format(x, digits = digits, nsmall = nsmall)`` of a numeric vector, right-justified to a
    common width.

    Fixed notation has as many decimals as the element needing most (to show ``digits`` significant
    digits), at least ``nsmall``; scientific notation is used when it is narrower (R's ``formatReal`` with
    ``scipen = 0``).
    """
    x = np.asarray(values, dtype=float)
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        out = [na if math.isnan(v) else ("Inf" if v > 0 else "-Inf") for v in x]
    else:
        parts = [_significant(v, digits) for v in finite]
        neg = bool(np.any(finite < 0))
        left = max(int(v < 0) + max(kp + 1, 1) for v, (kp, _) in zip(finite, parts))
        right = max(max(nsig - kp - 1, 0) for kp, nsig in parts)
        fixed_width = left + right + (right > 0)
        mantissa = max(nsig for _, nsig in parts) - 1
        big_exponent = any(abs(kp) >= 100 for kp, _ in parts)
        sci_width = neg + (mantissa > 0) + mantissa + 4 + big_exponent
        fmt = f".{max(right, nsmall)}f" if fixed_width <= sci_width else f".{mantissa}e"
        out = [format(v, fmt) if np.isfinite(v) else (na if math.isnan(v) else ("Inf" if v > 0 else "-Inf")) for v in x]
    width = max((len(s) for s in out), default=0)
    return [s.rjust(width) for s in out]


def format_pval(pv, digits: int, eps: float = EPS) -> list[str]:
    """R's ``format.pval(pv, digits, eps)``: p-values below ``eps`` as ``< 2e-16`` (or ``<2e-16``)."""
    pv = np.asarray(pv, dtype=float)
    out = [""] * pv.size
    tiny = pv < eps
    rest = np.flatnonzero(~tiny)
    if rest.size:
        values = pv[rest]
        exponent = np.floor(np.log10(np.where(values > 0, values, 1e-50)))
        fixed = (exponent >= -3) | ((exponent == -4) & (digits > 1))
        for mask in (fixed, ~fixed):
            if mask.any():
                for k, s in zip(rest[mask], format_numbers(values[mask], digits)):
                    out[k] = s
    if tiny.any():
        d = max(1, digits - 2)
        if rest.size:
            nc = max(len(out[k]) for k in rest)
            if d > 1 and d + 6 > nc:
                d = max(1, nc - 7)
            sep = "" if d == 1 and nc <= 6 else " "
        else:
            sep = "" if d == 1 else " "
        (text,) = format_numbers([eps], d)
        for k in np.flatnonzero(tiny):
            out[k] = f"<{sep}{text}"
    return out


def _abbreviate_one(name: str, minlength: int) -> str:
    """R's C routine ``stripchars`` (``abbreviate(..., use.classes = TRUE)``)."""
    s = list(name.strip())
    if len(s) < minlength:
        return "".join(s)
    while s and s[-1].isspace():
        s.pop()
    n_space = sum(c.isspace() for c in s)

    def short() -> bool:
        return len(s) - n_space <= minlength

    def first_of_word(i):
        return s[i - 1].isspace()

    def last_of_word(i):
        return not s[i - 1].isspace() and (i + 1 == len(s) or s[i + 1].isspace())

    rules = (
        lambda i: s[i] in "aeiou" and last_of_word(i),
        lambda i: s[i] in "aeiou" and not first_of_word(i),
        lambda i: s[i].islower() and last_of_word(i),
        lambda i: s[i].islower() and not first_of_word(i),
        lambda i: not first_of_word(i) and not s[i].isspace(),
    )
    if not short():
        for rule in rules:
            for i in range(len(s) - 1, 0, -1):
                if i < len(s) and rule(i):
                    del s[i]
                if short():
                    break
            if short():
                break
    if len(s) > minlength:
        s = [c for i, c in enumerate(s) if i == 0 or not c.isspace()]
    return "".join(s)


def abbreviate(names: list[str], minlength: int = 4) -> list[str]:
    """R's ``abbreviate(names, minlength)``: each name shortened to about ``minlength`` characters, with
    ``minlength`` raised for the names whose abbreviations would coincide."""
    unique = list(dict.fromkeys(names))
    out = {n: _abbreviate_one(n, minlength) for n in unique}
    length = minlength
    while True:
        seen: dict[str, list[str]] = {}
        for n in unique:
            seen.setdefault(out[n], []).append(n)
        clashes = [group for group in seen.values() if len(group) > 1]
        if not clashes:
            return [out[n] for n in names]
        length += 1
        for group in clashes:
            for n in group:
                out[n] = _abbreviate_one(n, length)


def zapsmall(x: np.ndarray, digits: int) -> np.ndarray:
    """R's ``zapsmall``: round to ``digits − log10(max |x|)`` decimals (R rounds that count half up)."""
    x = np.asarray(x, dtype=float)
    finite = np.abs(x[np.isfinite(x)])
    mx = finite.max() if finite.size else 0.0
    decimals = max(0, math.floor(digits - math.log10(mx) + 0.5)) if mx > 0 else digits
    return np.round(x, decimals)


def named_vector_lines(names: list[str], cells: list[str]) -> list[str]:
    """R's ``print`` of a named vector on one line: every entry right-justified to one common width."""
    width = max(len(t) for t in [*names, *cells])
    return ["".join(t.rjust(width) + " " for t in texts) for texts in (names, cells)]


def coefmat_lines(
    table,
    digits: int,
    cs_ind: list[int] | None = None,
    tst_ind: list[int] | None = None,
    zap_ind: tuple[int, ...] = (),
    na_print: str = "NA",
    p_ind: tuple[int, ...] = (),
) -> list[str]:
    """R's ``printCoefmat(x, digits, ...)`` as lines: coefficient columns ``cs_ind`` formatted together
    (rounded to the decimals their smallest entry needs), test statistics ``tst_ind`` rounded to
    ``dig.tst = digits - 1`` decimals, others by :func:`format_numbers`, the last column (the p-values) by
    :func:`format_pval`, a column of stars and the ``Signif. codes`` legend when a p < 0.1.
    ``p_ind`` are further p-value columns (formatted as p-values, without stars).  ``table`` is a
    DataFrame (index: row names).  Column indices are 0-based."""
    xm = table.to_numpy(dtype=float, na_value=np.nan).copy()
    nrow, nc = xm.shape
    k = nc - 2  # R's default: the columns before the statistic and the p-value are coefficients
    cs_ind = list(range(k)) if cs_ind is None else list(cs_ind)
    tst_ind = [k] if tst_ind is None else list(tst_ind)
    dig_tst = max(1, min(5, digits - 1))
    cells = np.full(xm.shape, "", dtype=object)
    for i in zap_ind:
        xm[:, i] = zapsmall(xm[:, i], digits)
    if cs_ind:
        block = xm[:, cs_ind]
        acs = np.abs(block[np.isfinite(block) & (block != 0)])
        digmin = 1 + (np.floor(np.log10([acs.min(), acs.max()])) if acs.size else np.zeros(2))
        decimals = int(max(1, *(digits - digmin)))
        formatted = format_numbers(np.round(block, decimals).ravel(), digits)
        cells[:, cs_ind] = np.array(formatted, dtype=object).reshape(block.shape)
    for i in tst_ind:
        cells[:, i] = format_numbers(np.round(xm[:, i], dig_tst), digits)
    p_col = nc - 1
    for i in range(nc):
        if i not in cs_ind and i not in tst_ind and i != p_col and i not in p_ind:
            cells[:, i] = format_numbers(xm[:, i], digits)
    ok = np.isfinite(xm)
    for r in range(nrow):  # a non-zero shown as 0: one digit fewer (printCoefmat's not.both.0)
        for i in range(nc):
            shown = i not in tst_ind and i != p_col and i not in p_ind
            if ok[r, i] and shown and xm[r, i] != 0 and float(cells[r, i]) == 0:
                cells[r, i] = format_numbers([xm[r, i]], max(1, digits - 1))[0]
    cells[np.isnan(xm)] = na_print
    for i in p_ind:
        good = np.isfinite(xm[:, i])
        if good.any():
            cells[good, i] = format_pval(xm[good, i], dig_tst)
    pv = xm[:, p_col]
    good = np.isfinite(pv)
    for r, s in zip(np.flatnonzero(good), format_pval(pv[good], dig_tst)):
        cells[r, p_col] = s
    legend = bool(np.any(pv[good] < 0.1))
    header = list(table.columns)
    if legend:
        codes = [stars(p) if np.isfinite(p) else "" for p in xm[:, p_col]]
        width = max(len(c) for c in codes)
        cells = np.column_stack([cells, [c.ljust(width) for c in codes]])
        header.append("")
    lines = matrix_lines([str(r) for r in table.index], header, cells)
    if legend:
        lines += ["---", SIGNIF_LEGEND]
    return lines


def matrix_lines(row_names: list[str], header: list[str], cells, right: bool = True) -> list[str]:
    """R's ``print`` of a character matrix (``quote = FALSE``): row names left-justified, columns separated
    by a space, cells and headers right-justified (left-justified with ``right=False``)."""
    cells = np.asarray(cells, dtype=object).reshape(len(row_names), len(header))
    wr = max((len(r) for r in row_names), default=0)
    widths = [max([len(h)] + [len(c) for c in cells[:, j]]) for j, h in enumerate(header)]

    def just(text, w):
        return text.rjust(w) if right else text.ljust(w)

    lines = [" " * wr + "".join(" " + just(h, w) for h, w in zip(header, widths))]
    for name, row in zip(row_names, cells):
        lines.append(name.ljust(wr) + "".join(" " + just(c, w) for c, w in zip(row, widths)))
    return lines
