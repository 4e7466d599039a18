#!/usr/bin/env Rscript
# Reference fits from lme4 + lmerTest + broom.mixed for jaxlmm's tests.
# Usage (from the repository root), two steps:
#   python scripts/export_jaxlmm_theta.py    # 1. jaxlmm's theta per case -> tests/fixtures/jaxlmm_theta.json
#   Rscript scripts/make_lme4_fixtures.R      # 2. the fixtures, with lme4's criterion at jaxlmm's theta
# (a case new to this script needs a run of step 2 first, which makes the fixture step 1 reads).
# Needs Debian's r-base-core r-cran-lme4 r-cran-lmertest r-cran-broom.mixed r-cran-jsonlite
# r-cran-pbkrtest r-cran-performance (for Nakagawa's R2).  Writes tests/fixtures/data/*.csv and
# tests/fixtures/lme4/*.json.  Each model is fitted with lme4's default optimiser, bobyqa, Nelder_Mead
# and bobyqa and nloptwrap with tolerances far tighter than lme4's defaults (which stop ~1e-6 short in
# theta on some fits); the fixture keeps the lowest criterion ("best of lme4's optimisers").  Each
# fixture also holds lme4's own deviance function (lmer(..., devFunOnly = TRUE)) evaluated at jaxlmm's
# theta from step 1 (lme4_criterion_at_jaxlmm_theta, at jaxlmm_theta), R's Wald intervals for the fixed
# effects, R's residuals and deviance(m, REML = FALSE).
suppressPackageStartupMessages({
  library(lme4); library(lmerTest); library(broom.mixed); library(jsonlite); library(pbkrtest)
})
have_performance <- requireNamespace("performance", quietly = TRUE)
if (!have_performance) warning("performance is not installed: the fixtures lose r2_nakagawa")
jaxlmm_theta_file <- "tests/fixtures/jaxlmm_theta.json"
jaxlmm_theta <- if (file.exists(jaxlmm_theta_file)) fromJSON(jaxlmm_theta_file)$lme4 else list()
dir.create("tests/fixtures/data", recursive = TRUE, showWarnings = FALSE)
dir.create("tests/fixtures/lme4", recursive = TRUE, showWarnings = FALSE)

write_data <- function(df, name) {
  write.csv(df, file.path("tests/fixtures/data", paste0(name, ".csv")), row.names = FALSE)
}

# bobyqa and nloptwrap run to tolerances far below lme4's defaults: the reference optimum
tight_controls <- list(
  bobyqa_tight = lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12, maxfun = 1e5)),
  nlopt_tight = lmerControl(optimizer = "nloptwrap", optCtrl = list(xtol_abs = 1e-14, ftol_abs = 1e-16,
                                                                   xtol_rel = 1e-14, ftol_rel = 1e-16,
                                                                   maxeval = 1e5)))

best_fit <- function(formula, data, REML) {
  fits <- list(
    default = lmerTest::lmer(formula, data = data, REML = REML),
    bobyqa = lmerTest::lmer(formula, data = data, REML = REML, control = lmerControl(optimizer = "bobyqa")),
    nm = lmerTest::lmer(formula, data = data, REML = REML, control = lmerControl(optimizer = "Nelder_Mead"))
  )
  for (k in names(tight_controls))
    fits[[k]] <- suppressMessages(suppressWarnings(
      lmerTest::lmer(formula, data = data, REML = REML, control = tight_controls[[k]])))
  crit <- sapply(fits, function(m) if (REML) m@devcomp$cmp[["REML"]] else m@devcomp$cmp[["dev"]])
  list(best = fits[[which.min(crit)]], crit = crit)
}

# rsq (Zhang 2022) for an LMM, written from the definition, independent of jaxlmm
rsq_lmm <- function(m) {
  y <- getME(m, "y"); X <- getME(m, "X"); Z <- getME(m, "Z"); Lambda <- getME(m, "Lambda")
  e <- as.vector(y - X %*% fixef(m))
  ZL <- Z %*% Lambda
  tau2 <- rowSums(as.matrix(ZL)^2)
  r <- 1 / (1 + tau2)
  sst <- sum((y - mean(y))^2)
  s2 <- sigma(m)^2
  fixed <- 1 - sum(e^2) / sst
  model <- 1 - sum(r * (tau2 * s2 + r * e^2)) / sst
  list(model = model, fixed = fixed, random = model - fixed)
}

case <- function(name, formula, data, dataname, REML) {
  f <- as.formula(formula)
  bf <- best_fit(f, data, REML)
  m <- bf$best
  cf <- summary(m)$coefficients
  vc <- as.data.frame(VarCorr(m))
  re <- as.data.frame(ranef(m, condVar = TRUE))
  co <- lapply(coef(m), function(d) cbind(level = rownames(d), d))
  td <- as.data.frame(broom.mixed::tidy(m))
  out <- list(
    name = name, formula = formula, data = dataname, REML = REML,
    criterion = if (REML) m@devcomp$cmp[["REML"]] else m@devcomp$cmp[["dev"]],
    criteria_by_optimizer = as.list(bf$crit),
    theta = unname(getME(m, "theta")), theta_names = names(getME(m, "theta")),
    lower = getME(m, "lower"),
    fixef = as.list(fixef(m)), sigma = sigma(m),
    vcov = as.matrix(vcov(m)), vcov_names = colnames(vcov(m)),
    loglik = as.numeric(logLik(m)), aic = AIC(m), bic = BIC(m), nobs = nobs(m),
    deviance_ml = as.numeric(deviance(refitML(m))),
    ml_deviance_at_estimates = deviance(m, REML = FALSE),  # REML fits: the ML deviance at the REML estimates
    ngroups = as.list(ngrps(m)), singular = isSingular(m),
    varcorr = vc,
    coef_table = data.frame(term = rownames(cf), estimate = cf[, 1], std_error = cf[, 2],
                            df = cf[, "df"], t = cf[, "t value"], p = cf[, "Pr(>|t|)"]),
    ranef = re, coef = co, tidy = td,
    fitted = unname(fitted(m)),
    rsq = rsq_lmm(m),
    residuals = unname(residuals(m)),
    confint_wald = as.data.frame(confint(m, parm = "beta_", method = "Wald"))
  )
  jt <- jaxlmm_theta[[name]]
  if (!is.null(jt)) {  # lme4's deviance function at jaxlmm's theta (scripts/export_jaxlmm_theta.py)
    devfun <- lme4::lmer(f, data = data, REML = REML, devFunOnly = TRUE)
    out$jaxlmm_theta <- as.numeric(jt$theta)
    out$lme4_criterion_at_jaxlmm_theta <- devfun(as.numeric(jt$theta))
  }
  if (have_performance) {
    r2 <- tryCatch(performance::r2_nakagawa(m, tolerance = 0), error = function(e) NULL)
    if (!is.null(r2)) out$r2_nakagawa <- list(conditional = unname(r2$R2_conditional),
                                              marginal = unname(r2$R2_marginal))
  }
  write(toJSON(out, digits = NA, auto_unbox = TRUE, na = "null"),
        file.path("tests/fixtures/lme4", paste0(name, ".json")))
  cat(sprintf("%-28s crit %.10f  (%s) lme4 at jaxlmm's theta %.10f\n", name, out$criterion,
              paste(names(bf$crit), sprintf("%.10f", bf$crit), collapse = ", "),
              if (is.null(jt)) NA else out$lme4_criterion_at_jaxlmm_theta))
  invisible(m)
}

anova_case <- function(name, models, dataname) {
  a <- do.call(anova, unname(models))
  tab <- data.frame(model = names(models)[order(sapply(models, function(m) attr(logLik(m), "df")))],
                    as.data.frame(a), check.names = FALSE)
  write(toJSON(list(name = name, data = dataname, table = tab), digits = NA, na = "null"),
        file.path("tests/fixtures/lme4", paste0("anova_", name, ".json")))
}

data("sleepstudy", "Dyestuff", "Dyestuff2", "Penicillin", "Pastes", "cake", package = "lme4")
write_data(sleepstudy, "sleepstudy")
write_data(Dyestuff, "Dyestuff"); write_data(Dyestuff2, "Dyestuff2")
write_data(Penicillin, "Penicillin"); write_data(Pastes, "Pastes")
cake2 <- cake; cake2$temperature <- factor(as.character(cake2$temperature),
                                          levels = as.character(sort(unique(as.numeric(as.character(cake$temperature))))))
write_data(cake2, "cake")
data("Orthodont", "Machines", "Oats", package = "nlme")
orth <- as.data.frame(Orthodont); orth$Subject <- as.character(orth$Subject); orth$Sex <- as.character(orth$Sex)
write_data(orth, "Orthodont")
mach <- as.data.frame(Machines); mach$Worker <- as.character(mach$Worker); mach$Machine <- as.character(mach$Machine)
write_data(mach, "Machines")
oats <- as.data.frame(Oats); oats$Block <- as.character(oats$Block); oats$Variety <- as.character(oats$Variety)
write_data(oats, "Oats")
as_plain <- function(d) {  # factors as character columns, the way the tests read them back
  d <- as.data.frame(d)
  for (v in names(d)) if (is.factor(d[[v]])) d[[v]] <- as.character(d[[v]])
  d
}
refactor <- function(d) {  # and as R fits them: character columns are factors (sorted levels)
  for (v in names(d)) if (is.character(d[[v]])) d[[v]] <- factor(d[[v]])
  d
}
data("ergoStool", "Oxboys", "Pixel", "Assay", "Gasoline", "Rail", package = "nlme")
ergo <- as_plain(ergoStool); write_data(ergo, "ergoStool")
oxboys <- as_plain(Oxboys); write_data(oxboys, "Oxboys")
pixel <- as_plain(Pixel); write_data(pixel, "Pixel")
assay <- as_plain(Assay); write_data(assay, "Assay")
gasoline <- as_plain(Gasoline); write_data(gasoline, "Gasoline")
rail <- as_plain(Rail); write_data(rail, "Rail")
co2 <- as_plain(CO2); write_data(co2, "CO2")
seed <- read.csv("jaxlmm/data/seed.csv")
seed2 <- read.csv("tests/fixtures/data/seed2.csv")

ss1 <- case("sleepstudy_corr_reml", "Reaction ~ Days + (Days | Subject)", sleepstudy, "sleepstudy", TRUE)
ss2 <- case("sleepstudy_corr_ml", "Reaction ~ Days + (Days | Subject)", sleepstudy, "sleepstudy", FALSE)
case("sleepstudy_indep_reml", "Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)", sleepstudy, "sleepstudy", TRUE)
ss4 <- case("sleepstudy_dblbar_ml", "Reaction ~ Days + (Days || Subject)", sleepstudy, "sleepstudy", FALSE)
ss5 <- case("sleepstudy_int_ml", "Reaction ~ Days + (1 | Subject)", sleepstudy, "sleepstudy", FALSE)
case("sleepstudy_transform_reml", "log(Reaction) ~ Days + I(Days^2) + (1 | Subject)", sleepstudy, "sleepstudy", TRUE)
anova_case("sleepstudy", list(m_int = ss5, m_dbl = ss4, m_corr = ss2), "sleepstudy")
case("dyestuff_reml", "Yield ~ 1 + (1 | Batch)", Dyestuff, "Dyestuff", TRUE)
case("dyestuff_ml", "Yield ~ 1 + (1 | Batch)", Dyestuff, "Dyestuff", FALSE)
case("dyestuff2_reml", "Yield ~ 1 + (1 | Batch)", Dyestuff2, "Dyestuff2", TRUE)
case("penicillin_reml", "diameter ~ 1 + (1 | plate) + (1 | sample)", Penicillin, "Penicillin", TRUE)
case("pastes_reml", "strength ~ 1 + (1 | batch/cask)", Pastes, "Pastes", TRUE)
case("cake_reml", "angle ~ recipe * temperature + (1 | recipe:replicate)", cake2, "cake", TRUE)
case("orthodont_reml", "distance ~ age * Sex + (age | Subject)", orth, "Orthodont", TRUE)
case("machines_reml", "score ~ Machine + (1 | Worker/Machine)", mach, "Machines", TRUE)
case("oats_reml", "yield ~ nitro + Variety + (1 | Block/Variety)", oats, "Oats", TRUE)
case("oats_interaction_ml", "yield ~ nitro * Variety + (1 | Block) + (1 | Block:Variety)", oats, "Oats", FALSE)
case("ergostool_reml", "effort ~ Type + (1 | Subject)", refactor(ergo), "ergoStool", TRUE)
case("oxboys_quadratic_reml", "height ~ age + I(age^2) + (age | Subject)", refactor(oxboys), "Oxboys", TRUE)
case("pixel_nested_slope_reml", "pixel ~ day + I(day^2) + (day | Dog) + (1 | Side:Dog)", refactor(pixel), "Pixel", TRUE)
case("assay_three_crossed_reml", "logDens ~ sample * dilut + (1 | Block) + (1 | sample:Block) + (1 | dilut:Block)",
     refactor(assay), "Assay", TRUE)
case("gasoline_ml", "yield ~ endpoint + vapor + (1 | Sample)", refactor(gasoline), "Gasoline", FALSE)
case("rail_ml", "travel ~ 1 + (1 | Rail)", refactor(rail), "Rail", FALSE)
case("co2_log_interaction_reml", "uptake ~ log(conc) + Type * Treatment + (1 | Plant)", refactor(co2), "CO2", TRUE)
for (d in list(list(seed, "seed"), list(seed2, "seed2"))) {
  nm <- d[[2]]; df <- d[[1]]
  l1 <- case(paste0(nm, "_lmm1_ml"), "y ~ x + (1 | Group)", df, nm, FALSE)
  l2 <- case(paste0(nm, "_lmm2_ml"), "y ~ x + (1 | Group) + (0 + x | Group)", df, nm, FALSE)
  l3 <- case(paste0(nm, "_lmm3_reml"), "y ~ x + (1 + x | Group)", df, nm, TRUE)
  case(paste0(nm, "_lmm3_ml"), "y ~ x + (1 + x | Group)", df, nm, FALSE)
  anova_case(nm, list(lmm1 = l1, lmm2 = l2, lmm3 = l3), nm)
}

# pbkrtest's parametric bootstrap LRT, for comparing reference distributions
pb_large <- lme4::lmer(y ~ x + (1 + x | Group), seed2, REML = TRUE)
pb_small <- lme4::lmer(y ~ x + (1 | Group), seed2, REML = TRUE)
set.seed(1)  # PBmodcomp's own seed argument does not fix its simulations (pbkrtest 0.5.1)
pb <- PBmodcomp(pb_large, pb_small, nsim = 500, seed = 1)
pb_ref <- pb$ref; if (is.list(pb_ref)) pb_ref <- pb_ref$ref
write(toJSON(list(data = "seed2", large = "y ~ x + (1 + x | Group)", small = "y ~ x + (1 | Group)",
                  lrt = pb$test["LRT", "stat"], p_boot = pb$test["PBtest", "p.value"],
                  reference = as.numeric(pb_ref)), digits = NA, auto_unbox = TRUE),
      "tests/fixtures/pbkrtest_seed2.json")

# lme4's percentile bootstrap intervals (bootMer, 2,000 simulations) for one model, compared loosely (through
# the bootstrap distribution's CDF at R's endpoints) with jaxlmm's confint(method = "boot")
boot_model <- lme4::lmer(Reaction ~ Days + (Days | Subject), sleepstudy, REML = TRUE,
                         control = tight_controls$bobyqa_tight)
set.seed(1)
boot_nsim <- 2000
boot_ci <- suppressMessages(suppressWarnings(confint(boot_model, method = "boot", nsim = boot_nsim,
                                                     oldNames = FALSE)))
write(toJSON(list(data = "sleepstudy", formula = "Reaction ~ Days + (Days | Subject)", REML = TRUE,
                  nsim = boot_nsim, level = 0.95, parameter = rownames(boot_ci),
                  lower = unname(boot_ci[, 1]), upper = unname(boot_ci[, 2])), digits = NA, auto_unbox = TRUE),
      "tests/fixtures/confint_boot_sleepstudy.json")
