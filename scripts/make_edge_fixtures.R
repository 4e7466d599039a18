#!/usr/bin/env Rscript
# Edge-case reference fits from lme4 for tests/test_edge_cases.py.
# Usage (from the repository root):
#   python scripts/make_edge_data.py          # the 10,000-group data set (NumPy, fixed seed)
#   python scripts/export_jaxlmm_theta.py     # jaxlmm's theta per case -> tests/fixtures/jaxlmm_theta.json
#   Rscript scripts/make_edge_fixtures.R      # simulates the small data sets, fits everything
# (a case new to this script needs a run of the R step first, which makes the fixture the export reads).
# Writes tests/fixtures/data/edge_*.csv and tests/fixtures/edge/*.json.  Every model is fitted with
# lme4's default optimiser, bobyqa, Nelder_Mead, and bobyqa and nloptwrap with tolerances far tighter than
# lme4's defaults; the fixture keeps the lowest criterion (the "best of lme4's optimisers") and records
# each optimiser's criterion and convergence messages, and lme4's own deviance function (lmer(...,
# devFunOnly = TRUE)) evaluated at jaxlmm's theta (lme4_criterion_at_jaxlmm_theta, at jaxlmm_theta).
suppressPackageStartupMessages({ library(lme4); library(jsonlite) })
dir.create("tests/fixtures/data", recursive = TRUE, showWarnings = FALSE)
dir.create("tests/fixtures/edge", recursive = TRUE, showWarnings = FALSE)

write_data <- function(df, name) {
  write.csv(df, file.path("tests/fixtures/data", paste0(name, ".csv")), row.names = FALSE)
  read.csv(file.path("tests/fixtures/data", paste0(name, ".csv")))  # fit exactly what Python reads
}

jaxlmm_theta_file <- "tests/fixtures/jaxlmm_theta.json"
jaxlmm_theta <- if (file.exists(jaxlmm_theta_file)) fromJSON(jaxlmm_theta_file)$edge else list()

# bobyqa and nloptwrap run to tolerances far below lme4's defaults
TIGHT <- list(bobyqa = list(rhoend = 1e-12, maxfun = 1e5),
              nloptwrap = list(xtol_abs = 1e-14, ftol_abs = 1e-16, xtol_rel = 1e-14, ftol_rel = 1e-16, maxeval = 1e5))

fit_one <- function(formula, data, REML, optimizer, start = NULL, tight = FALSE) {
  msgs <- character(0)
  ctrl <- if (is.null(optimizer)) lmerControl() else if (tight) lmerControl(optimizer = optimizer, optCtrl = TIGHT[[optimizer]]) else lmerControl(optimizer = optimizer)
  m <- withCallingHandlers(lmer(formula, data = data, REML = REML, control = ctrl, start = start),
                           warning = function(w) { msgs <<- c(msgs, conditionMessage(w)); invokeRestart("muffleWarning") })
  list(model = m, warnings = c(msgs, m@optinfo$conv$lme4$messages))
}

# start: an optional theta; the three optimisers are then also run from it ("*_start")
case <- function(name, formula, data, dataname, REML, start = NULL) {
  f <- as.formula(formula)
  fits <- list(default = fit_one(f, data, REML, NULL), bobyqa = fit_one(f, data, REML, "bobyqa"),
               nm = fit_one(f, data, REML, "Nelder_Mead"),
               bobyqa_tight = fit_one(f, data, REML, "bobyqa", tight = TRUE),
               nlopt_tight = fit_one(f, data, REML, "nloptwrap", tight = TRUE))
  if (!is.null(start)) fits <- c(fits, list(
    default_start = fit_one(f, data, REML, NULL, start), bobyqa_start = fit_one(f, data, REML, "bobyqa", start),
    nm_start = fit_one(f, data, REML, "Nelder_Mead", start),
    bobyqa_tight_start = fit_one(f, data, REML, "bobyqa", start, tight = TRUE),
    nlopt_tight_start = fit_one(f, data, REML, "nloptwrap", start, tight = TRUE)))
  crit <- sapply(fits, function(x) if (REML) x$model@devcomp$cmp[["REML"]] else x$model@devcomp$cmp[["dev"]])
  m <- fits[[which.min(crit)]]$model
  out <- list(
    name = name, formula = formula, data = dataname, REML = REML,
    criterion = min(crit), criteria_by_optimizer = as.list(crit),
    warnings_by_optimizer = lapply(fits, function(x) unique(x$warnings)),
    theta = unname(getME(m, "theta")), theta_names = names(getME(m, "theta")),
    fixef = as.list(fixef(m)), sigma = sigma(m),
    vcov = as.matrix(vcov(m)), vcov_names = colnames(vcov(m)),
    nobs = nobs(m), ngroups = as.list(ngrps(m)), singular = isSingular(m),
    varcorr = as.data.frame(VarCorr(m))
  )
  jt <- jaxlmm_theta[[name]]
  if (!is.null(jt)) {  # lme4's deviance function at jaxlmm's theta (scripts/export_jaxlmm_theta.py)
    devfun <- lmer(f, data = data, REML = REML, devFunOnly = TRUE)
    out$jaxlmm_theta <- as.numeric(jt$theta)
    out$lme4_criterion_at_jaxlmm_theta <- devfun(as.numeric(jt$theta))
  }
  write(toJSON(out, digits = NA, auto_unbox = TRUE, na = "null"),
        file.path("tests/fixtures/edge", paste0(name, ".json")))
  cat(sprintf("%-26s crit %.10f  (%s) singular %s, lme4 at jaxlmm's theta %.10f\n", name, out$criterion,
              paste(names(crit), sprintf("%.10f", crit), collapse = ", "), out$singular,
              if (is.null(jt)) NA else out$lme4_criterion_at_jaxlmm_theta))
}

set.seed(20261125)

# 1. covariates on scales from 1e-6 to 1e6 (x1 ~ 1e-6, x2 ~ 1e6), slopes random on either
G <- 25; k <- 8
g <- rep(sprintf("s%02d", 1:G), each = k)
x1 <- round(runif(G * k) * 1e-6, 12); x2 <- round(rnorm(G * k) * 1e6, 0)
b0 <- rnorm(G, sd = 1); b1 <- rnorm(G, sd = 4e5); b2 <- rnorm(G, sd = 5e-7)
y <- 2 + 3e6 * x1 + 2e-6 * x2 + b0[as.integer(factor(g))] + b1[as.integer(factor(g))] * x1 +
  b2[as.integer(factor(g))] * x2 + rnorm(G * k, sd = 0.5)
scales <- write_data(data.frame(y = round(y, 8), x1 = x1, x2 = x2, g = g), "edge_scales")
# lme4's optimisers stop short on these scales; a start from the fit to unit-scaled covariates
# (theta's slope row multiplied back by the covariate's scale factor) lets them reach the optimum
unit_start <- function(formula, REML, slope_scale) {
  m <- lmer(as.formula(formula), data = transform(scales, x1 = x1 * 1e6, x2 = x2 * 1e-6), REML = REML,
            control = lmerControl(optimizer = "bobyqa"))
  list(theta = getME(m, "theta") * c(1, slope_scale, slope_scale))
}
case("scales_small_slope_reml", "y ~ x1 + x2 + (1 + x1 | g)", scales, "edge_scales", TRUE,
     unit_start("y ~ x1 + x2 + (1 + x1 | g)", TRUE, 1e6))
case("scales_big_slope_ml", "y ~ x1 + x2 + (1 + x2 | g)", scales, "edge_scales", FALSE,
     unit_start("y ~ x1 + x2 + (1 + x2 | g)", FALSE, 1e-6))

# 2. a perfectly balanced design: 12 blocks x 3 treatments x 2 replicates (split plot)
blk <- rep(sprintf("b%02d", 1:12), each = 6); trt <- rep(rep(c("A", "B", "C"), each = 2), 12)
y <- 10 + c(A = 0, B = 1, C = 2.5)[trt] + rnorm(12)[as.integer(factor(blk))] +
  rnorm(36, sd = 0.7)[as.integer(factor(paste(blk, trt)))] + rnorm(72)
balanced <- write_data(data.frame(y = round(y, 6), trt = trt, block = blk), "edge_balanced")
case("balanced_reml", "y ~ trt + (1 | block) + (1 | block:trt)", balanced, "edge_balanced", TRUE)
case("balanced_ml", "y ~ trt + (1 | block)", balanced, "edge_balanced", FALSE)

# 3. groups with a single observation (sizes 1 to 6, three singletons)
sizes <- c(1, 1, 1, 2, 3, 4, 5, 6, 6, 5, 4, 3, 6, 6, 2)
g <- rep(sprintf("u%02d", seq_along(sizes)), sizes); x <- round(rnorm(length(g)), 4)
b <- matrix(rnorm(2 * length(sizes)), ncol = 2) %*% diag(c(1, 0.5))
gi <- as.integer(factor(g))
y <- 1 + 0.5 * x + b[gi, 1] + b[gi, 2] * x + rnorm(length(g), sd = 0.6)
single <- write_data(data.frame(y = round(y, 6), x = x, g = g), "edge_single_obs")
case("single_obs_int_reml", "y ~ x + (1 | g)", single, "edge_single_obs", TRUE)
case("single_obs_slope_ml", "y ~ x + (1 + x | g)", single, "edge_single_obs", FALSE)

# 4. singular fits: no group variance at all; perfectly correlated intercept and slope
g <- rep(sprintf("z%02d", 1:15), each = 6); x <- round(rep(0:5, 15) + rnorm(90, sd = 0.1), 4)
e0 <- rnorm(90); y0 <- 3 + 0.2 * x + e0 - ave(e0, g)          # group means of the noise removed: variance 0
u <- rnorm(15)[as.integer(factor(g))]
y1 <- 3 + 0.2 * x + u + 0.5 * u * x + rnorm(90, sd = 0.5)   # slope = 0.5 x intercept: cor +1
y2 <- 3 + 0.2 * x + u - 0.5 * u * x + rnorm(90, sd = 0.5)   # cor -1
sing <- write_data(data.frame(y0 = round(y0, 6), y1 = round(y1, 6), y2 = round(y2, 6), x = x, g = g), "edge_singular")
case("singular_zero_var_reml", "y0 ~ x + (1 | g)", sing, "edge_singular", TRUE)
case("singular_zero_var_slope_ml", "y0 ~ x + (1 + x | g)", sing, "edge_singular", FALSE)
case("singular_cor_plus_ml", "y1 ~ x + (1 + x | g)", sing, "edge_singular", FALSE)
case("singular_cor_minus_reml", "y2 ~ x + (1 + x | g)", sing, "edge_singular", TRUE)

# 5. nearly unidentifiable: two crossed factors that almost coincide; a slope on a covariate
#    that is nearly constant within groups
g <- rep(sprintf("a%02d", 1:20), each = 5); h <- g
flip <- c(7, 33, 58, 81); h[flip] <- sprintf("a%02d", c(2, 11, 4, 19))
w <- round(rep(rnorm(20), each = 5) + rnorm(100, sd = 0.01), 5)
y <- 1 + rnorm(20)[as.integer(factor(g))] + 0.3 * w + rnorm(100)
near <- write_data(data.frame(y = round(y, 6), w = w, g = g, h = h), "edge_near_unidentifiable")
case("near_crossed_reml", "y ~ 1 + (1 | g) + (1 | h)", near, "edge_near_unidentifiable", TRUE)
case("near_within_const_slope_ml", "y ~ w + (1 + w | g)", near, "edge_near_unidentifiable", FALSE)

# 6. 10,000 groups of 2-5 rows (written by scripts/make_edge_data.py)
many <- read.csv("tests/fixtures/data/edge_many_groups.csv")
case("many_groups_int_ml", "y ~ x + (1 | g)", many, "edge_many_groups", FALSE)
case("many_groups_slope_reml", "y ~ x + (1 + x | g)", many, "edge_many_groups", TRUE)
