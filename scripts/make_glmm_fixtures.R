#!/usr/bin/env Rscript
# Reference glmer fits from lme4 for jaxlmm's GLMM tests (tests/test_glmm.py).
# Usage (from the repository root): Rscript scripts/make_glmm_fixtures.R
# Writes tests/fixtures/glmm/<case>.csv (the data) and tests/fixtures/glmm/<case>.json (the fit).
# Each model is fitted with lme4's default optimiser (bobyqa then Nelder_Mead), bobyqa alone, and
# bobyqa and nloptwrap with tolerances far tighter than lme4's defaults, the tight ones also with a tight
# PIRLS tolerance (tolPwrss = 1e-12: with lme4's default 1e-7 the inner loop stops short and the cbpp
# optimum lies 5.7e-4 above the true one, and vcov's finite-difference Hessian moves SEs by ~1%).  Every
# fit's criterion is re-evaluated by lme4's own deviance function with tolPwrss = 1e-12 at its (theta,
# beta) ("exact_criteria"); the fixture keeps the fit with the lowest.
suppressPackageStartupMessages({library(lme4); library(jsonlite)})
out <- "tests/fixtures/glmm"
dir.create(out, recursive = TRUE, showWarnings = FALSE)

controls <- list(
  default = glmerControl(),
  bobyqa = glmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5)),
  bobyqa_tight = glmerControl(optimizer = "bobyqa", tolPwrss = 1e-12, optCtrl = list(rhoend = 1e-12, maxfun = 1e5)),
  nlopt_tight = glmerControl(optimizer = "nloptwrap", tolPwrss = 1e-12, optCtrl = list(xtol_abs = 1e-14, ftol_abs = 1e-16,
                                                                   xtol_rel = 1e-14, ftol_rel = 1e-16,
                                                                   maxeval = 1e5)))

case <- function(name, formula, data, family, nAGQ = 1, factors = character(0), newdata = NULL,
                 weights_col = NULL) {
  fits <- list()
  for (k in names(controls)) {
    args <- list(formula = as.formula(formula), data = data, family = family, nAGQ = nAGQ,
                 control = controls[[k]])
    if (!is.null(weights_col)) args$weights <- data[[weights_col]]
    fit <- tryCatch(suppressMessages(suppressWarnings(do.call(glmer, args))), error = function(e) NULL)
    if (!is.null(fit)) fits[[k]] <- fit
  }
  reported <- sapply(fits, function(m) m@devcomp$cmp[["dev"]])
  dargs <- list(formula = as.formula(formula), data = data, family = family, nAGQ = nAGQ, devFunOnly = TRUE,
                control = glmerControl(tolPwrss = 1e-12))
  if (!is.null(weights_col)) dargs$weights <- data[[weights_col]]
  devfun <- do.call(glmer, dargs)
  crit <- sapply(fits, function(m) devfun(c(getME(m, "theta"), fixef(m))))
  m <- fits[[which.min(crit)]]
  re <- ranef(m, condVar = TRUE)
  ranef_rows <- list()
  for (g in names(re)) {
    pv <- attr(re[[g]], "postVar")
    for (j in seq_along(re[[g]])) {
      ranef_rows[[length(ranef_rows) + 1]] <- list(
        grp = g, term = names(re[[g]])[j], level = rownames(re[[g]]),
        condval = re[[g]][[j]], condsd = sqrt(pv[j, j, ]))
    }
  }
  if (is.null(newdata)) newdata <- data
  pred <- list(
    conditional_link = unname(predict(m, newdata = newdata, type = "link")),
    conditional_response = unname(predict(m, newdata = newdata, type = "response")),
    population_link = unname(predict(m, newdata = newdata, re.form = NA, type = "link")),
    population_response = unname(predict(m, newdata = newdata, re.form = NA, type = "response")))
  s <- summary(m)
  res <- list(
    name = name, formula = formula, family = family, nAGQ = nAGQ, factors = factors,
    weights = if (is.null(weights_col)) NULL else weights_col,
    n = nobs(m),
    criterion = min(crit), exact_criteria = as.list(crit), reported_criteria = as.list(reported),
    best_optimizer = names(fits)[which.min(crit)],
    logLik = as.numeric(logLik(m)), AIC = AIC(m), BIC = BIC(m), deviance = deviance(m),
    summary_deviance = unname(s$AICtab["deviance"]), df_resid = df.residual(m),
    theta = unname(getME(m, "theta")), theta_names = names(getME(m, "theta")),
    fixef = as.list(fixef(m)), se = as.list(sqrt(diag(as.matrix(vcov(m))))),
    se_rx = as.list(sqrt(diag(as.matrix(vcov(m, use.hessian = FALSE))))),
    vcov = unname(as.matrix(vcov(m))),
    z = as.list(s$coefficients[, "z value"]), p = as.list(s$coefficients[, "Pr(>|z|)"]),
    ranef = ranef_rows,
    fitted = unname(fitted(m)),
    resid_deviance = unname(residuals(m, type = "deviance")),
    resid_pearson = unname(residuals(m, type = "pearson")),
    scaled_resid_quantiles = unname(quantile(residuals(m, type = "pearson", scaled = TRUE))),
    newdata_rows = nrow(newdata), predictions = pred)
  write.csv(data, file.path(out, paste0(name, ".csv")), row.names = FALSE)
  write.csv(newdata, file.path(out, paste0(name, "_new.csv")), row.names = FALSE)
  writeLines(toJSON(res, digits = NA, auto_unbox = TRUE, null = "null"), file.path(out, paste0(name, ".json")))
  cat(name, ": criterion", format(min(crit), digits = 12), "by", names(fits)[which.min(crit)], "\n")
}

# ---- R's own data
cbpp <- lme4::cbpp
cbpp_new <- cbpp[c(1, 5, 9, 20, 33, 50), ]
case("cbpp", "cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, "binomial",
     factors = c("herd", "period"), newdata = cbpp_new)
case("cbpp_agq25", "cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, "binomial", nAGQ = 25,
     factors = c("herd", "period"), newdata = cbpp_new)
gt <- lme4::grouseticks[, c("INDEX", "TICKS", "BROOD", "HEIGHT", "YEAR", "LOCATION")]
case("grouseticks", "TICKS ~ YEAR + scale(HEIGHT) + (1 | BROOD) + (1 | INDEX) + (1 | LOCATION)", gt, "poisson",
     factors = c("INDEX", "BROOD", "YEAR", "LOCATION"))

# ---- simulated designs
set.seed(15)
ns <- 30; ni <- 20
crossed <- expand.grid(subj = paste0("s", 1:ns), item = paste0("i", 1:ni))
crossed$cond <- ifelse((as.integer(crossed$subj) + as.integer(crossed$item)) %% 2 == 0, "a", "b")
su <- rnorm(ns, sd = 0.8); iu <- rnorm(ni, sd = 0.5); ss <- rnorm(ns, sd = 0.4)
eta <- 0.3 + 0.6 * (crossed$cond == "b") + su[crossed$subj] + iu[crossed$item] +
  ss[crossed$subj] * (crossed$cond == "b")
crossed$acc <- rbinom(nrow(crossed), 1, plogis(eta))
crossed_new <- rbind(crossed[c(1, 2, 45, 310, 599), ],
                     data.frame(subj = "s3", item = "i7", cond = c("a", "b"), acc = 0))
case("crossed", "acc ~ cond + (1 | subj) + (1 | item)", crossed, "binomial",
     factors = c("subj", "item", "cond"), newdata = crossed_new)
case("slopes", "acc ~ cond + (1 + cond | subj) + (1 | item)", crossed, "binomial",
     factors = c("subj", "item", "cond"), newdata = crossed_new)

ng <- 40; per <- 8
pois <- data.frame(g = factor(rep(sprintf("g%02d", 1:ng), each = per)), x = round(runif(ng * per, -1, 1), 3),
                   exposure = round(runif(ng * per, 0.5, 4), 2))
gu <- rnorm(ng, sd = 0.6)
pois$count <- rpois(nrow(pois), pois$exposure * exp(0.2 + 0.5 * pois$x + gu[pois$g]))
pois_new <- pois[c(1, 10, 100, 200, 319), ]
case("poisson_offset", "count ~ x + offset(log(exposure)) + (1 | g)", pois, "poisson",
     factors = "g", newdata = pois_new)
case("poisson_offset_agq25", "count ~ x + offset(log(exposure)) + (1 | g)", pois, "poisson", nAGQ = 25,
     factors = "g", newdata = pois_new)

ng <- 25; per <- 6
sep <- data.frame(g = factor(rep(sprintf("g%02d", 1:ng), each = per)), x = round(rnorm(ng * per), 3))
gu <- rnorm(ng, sd = 1.5); gu[1:4] <- c(6, 6, -6, -6)
sep$y <- rbinom(nrow(sep), 1, plogis(-0.2 + 1.2 * sep$x + gu[sep$g]))
case("separation", "y ~ x + (1 | g)", sep, "binomial", factors = "g", newdata = sep[c(1, 7, 19, 100), ])

ng <- 20; per <- 10
zero <- data.frame(g = factor(rep(sprintf("g%02d", 1:ng), each = per)), x = round(rnorm(ng * per), 3))
zero$y <- rbinom(nrow(zero), 1, plogis(0.1 + 0.8 * zero$x))
case("zero_variance", "y ~ x + (1 | g)", zero, "binomial", factors = "g", newdata = zero[c(1, 50, 150), ])

ng <- 30; per <- 5
prop <- data.frame(g = factor(rep(sprintf("g%02d", 1:ng), each = per)), x = round(rnorm(ng * per), 3),
                   trials = sample(3:12, ng * per, replace = TRUE))
gu <- rnorm(ng, sd = 0.7)
prop$prop <- rbinom(nrow(prop), prop$trials, plogis(-0.5 + 0.7 * prop$x + gu[prop$g])) / prop$trials
case("proportion_weights", "prop ~ x + (1 + x | g)", prop, "binomial", factors = "g",
     newdata = prop[c(1, 60, 149), ], weights_col = "trials")
