#!/usr/bin/env Rscript
# lme4's best glmer fit of each random GLMM case (scripts/make_random_glmm_cases.py), for
# tests/test_glmm_random_cases.py.
# Usage (from the repository root): Rscript scripts/make_random_glmm_fixtures.R
# Every case is fitted with lme4's default optimiser (bobyqa then Nelder_Mead), bobyqa and Nelder_Mead with
# large budgets, and bobyqa and nloptwrap with tolerances far tighter than lme4's defaults and a tight PIRLS
# tolerance (tolPwrss = 1e-12).  Each fit's criterion is re-evaluated by lme4's own deviance function with
# tolPwrss = 1e-12 at its (theta, beta), and the fit with the lowest is kept (as scripts/make_glmm_fixtures.R).
# Writes tests/fixtures/glmm_random/lme4_best.json.
suppressPackageStartupMessages({library(lme4); library(jsonlite)})
dir <- "tests/fixtures/glmm_random"
cases <- fromJSON(file.path(dir, "cases.json"), simplifyVector = FALSE)

tight <- list(xtol_abs = 1e-14, ftol_abs = 1e-16, xtol_rel = 1e-14, ftol_rel = 1e-16, maxeval = 1e5)
controls <- list(
  default = glmerControl(),
  bobyqa = glmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5)),
  Nelder_Mead = glmerControl(optimizer = "Nelder_Mead", optCtrl = list(maxfun = 1e5)),
  bobyqa_tight = glmerControl(optimizer = "bobyqa", tolPwrss = 1e-12, optCtrl = list(rhoend = 1e-12, maxfun = 1e5)),
  nlopt_tight = glmerControl(optimizer = "nloptwrap", tolPwrss = 1e-12, optCtrl = tight))

read_frame <- function(path, factors) {
  d <- read.csv(path, stringsAsFactors = FALSE)
  for (f in factors) d[[f]] <- factor(as.character(d[[f]]))
  for (f in names(d)) {  # pandas writes booleans as True/False; glmer refuses a logical response: 0/1
    if (is.character(d[[f]]) && all(d[[f]] %in% c("True", "False"))) d[[f]] <- as.integer(d[[f]] == "True")
  }
  d
}

results <- list()
for (cs in cases) {
  d <- read_frame(file.path(dir, paste0(cs$name, ".csv")), unlist(cs$factors))
  new <- read.csv(file.path(dir, paste0(cs$name, "_new.csv")), stringsAsFactors = FALSE)
  for (f in unlist(cs$factors)) {
    # fixed-effect factors keep the fit's levels; grouping factors may have new ones
    new[[f]] <- if (all(as.character(new[[f]]) %in% levels(d[[f]]))) factor(new[[f]], levels = levels(d[[f]]))
                else as.character(new[[f]])
  }
  base <- list(formula = as.formula(cs$formula), data = d, family = cs$family, nAGQ = cs$nagq)
  if (!is.null(cs$weights)) base$weights <- d[[cs$weights]]
  if (!is.null(cs$offset)) base$offset <- d[[cs$offset]]
  fits <- list(); failures <- list()
  for (k in names(controls)) {
    fit <- tryCatch(suppressMessages(suppressWarnings(do.call(glmer, c(base, list(control = controls[[k]]))))),
                    error = function(e) conditionMessage(e))
    if (is.character(fit)) failures[[k]] <- fit else fits[[k]] <- fit
  }
  devfun <- do.call(glmer, c(base, list(devFunOnly = TRUE, control = glmerControl(tolPwrss = 1e-12))))
  crit <- sapply(fits, function(m) devfun(c(getME(m, "theta"), fixef(m))))
  # restarts of the tight optimisers from the best fit so far (on flat, near-singular optima every
  # optimiser above stops short by up to 1e-6 relative)
  best <- fits[[which.min(crit)]]
  for (k in c("bobyqa_tight", "nlopt_tight")) {
    start <- list(theta = getME(best, "theta"), fixef = fixef(best))
    fit <- tryCatch(suppressMessages(suppressWarnings(do.call(glmer, c(base, list(control = controls[[k]],
                    start = start))))), error = function(e) conditionMessage(e))
    k <- paste0(k, "_restart")
    if (is.character(fit)) failures[[k]] <- fit else {
      fits[[k]] <- fit
      crit[[k]] <- devfun(c(getME(fit, "theta"), fixef(fit)))
    }
  }
  m <- fits[[which.min(crit)]]
  vcov_note <- NULL
  V <- withCallingHandlers(as.matrix(vcov(m)), warning = function(w) {
    vcov_note <<- conditionMessage(w); invokeRestart("muffleWarning")})
  # lme4's vcov() comes from a finite-difference Hessian with steps of 1e-4 in every parameter: with a
  # covariate in units of 1e-3 or 1e3 its curvature along that coefficient is lost in rounding (SEs off by
  # up to 40%).  The same model with the covariate divided by its SD gives lme4's well-conditioned SEs,
  # mapped back here (x -> x / s multiplies x's coefficients by s).
  se_rescaled <- NULL
  if ("x" %in% names(d) && !(sd(d$x, na.rm = TRUE) > 0.01 && sd(d$x, na.rm = TRUE) < 100)) {
    s <- sd(d$x, na.rm = TRUE)
    scaled <- base; scaled$data$x <- d$x / s
    mx <- suppressMessages(suppressWarnings(do.call(glmer, c(scaled, list(control = controls$nlopt_tight)))))
    has_x <- sapply(strsplit(names(fixef(mx)), ":"), function(parts) "x" %in% parts)
    se_rescaled <- sqrt(diag(as.matrix(vcov(mx)))) / ifelse(has_x, s, 1)
    stopifnot(abs(deviance(mx) - deviance(m)) < 1e-5 * deviance(m),
              max(abs(fixef(mx) / ifelse(has_x, s, 1) - fixef(m)) / abs(fixef(m))) < 1e-3)
    se_rescaled <- as.list(se_rescaled)
  }
  # where lme4's Hessian is not positive definite, vcov() falls back to RX (the Hessian ignoring theta's
  # uncertainty); its finite differences of 1e-4 can be lost in the deviance function's noise
  # (a Poisson (1 | a/b) probe: off-diagonals of -94 where steps of 1e-3 give 9.8): the SEs from a
  # Richardson-extrapolated central-difference Hessian of lme4's own deviance function (steps 2e-3, 4e-3)
  se_devfun_hessian <- NULL
  if (!is.null(vcov_note)) {
    x0 <- c(getME(m, "theta"), fixef(m))
    hess <- function(h) {
      n <- length(x0); H <- matrix(0, n, n); e <- function(k) replace(numeric(n), k, h)
      for (i in 1:n) for (j in 1:n)
        H[i, j] <- (devfun(x0 + e(i) + e(j)) - devfun(x0 + e(i) - e(j)) - devfun(x0 - e(i) + e(j)) +
                    devfun(x0 - e(i) - e(j))) / (4 * h^2)
      H
    }
    beta <- length(getME(m, "theta")) + seq_along(fixef(m))
    se_devfun_hessian <- as.list(setNames(sqrt(diag(2 * solve((4 * hess(2e-3) - hess(4e-3)) / 3)))[beta],
                                          names(fixef(m))))
  }
  vc <- as.data.frame(VarCorr(m))
  vc <- vc[is.na(vc$var2), ]  # the random effects' standard deviations
  pred <- list()
  for (re in c("conditional", "population")) {
    for (type in c("link", "response")) {
      rf <- if (re == "conditional") NULL else NA
      pred[[paste(re, type, sep = "_")]] <- unname(predict(m, newdata = new, re.form = rf, type = type,
                                                           allow.new.levels = TRUE))
    }
  }
  results[[length(results) + 1]] <- c(cs, list(
    criterion = min(crit), exact_criteria = as.list(crit),
    reported_criteria = as.list(sapply(fits, function(f) f@devcomp$cmp[["dev"]])),
    failures = failures, best_optimizer = names(fits)[which.min(crit)],
    logLik = as.numeric(logLik(m)), AIC = AIC(m), deviance = deviance(m), nobs = nobs(m),
    singular = isSingular(m), theta = as.list(unname(getME(m, "theta"))),
    theta_names = as.list(names(getME(m, "theta"))),
    sd = unname(Map(function(g, t, s) list(grp = g, term = t, sd = s), vc$grp, vc$var1, vc$sdcor)),
    fixef = as.list(fixef(m)), se = as.list(sqrt(diag(V))),
    se_rescaled = se_rescaled, se_devfun_hessian = se_devfun_hessian,
    se_rx = as.list(sqrt(diag(as.matrix(suppressWarnings(vcov(m, use.hessian = FALSE)))))), vcov_note = vcov_note,
    predictions = pred))
  cat(sprintf("%-32s criterion %.10f by %-12s (%s)%s\n", cs$name, min(crit), names(fits)[which.min(crit)],
              paste(sprintf("%s %+.2e", names(crit), crit - min(crit)), collapse = ", "),
              if (is.null(vcov_note)) "" else paste(" vcov:", vcov_note)))
}
results_json <- toJSON(results, digits = NA, auto_unbox = TRUE, null = "null", pretty = TRUE)
writeLines(results_json, file.path(dir, "lme4_best.json"))
cat("lme4", as.character(packageVersion("lme4")), "\n")
