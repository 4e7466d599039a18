#!/usr/bin/env Rscript
# Reference fits with prior weights and offsets from lme4 + lmerTest (+ performance) for
# tests/test_weights_offset.py.  Usage (from the repository root), two steps:
#   Rscript scripts/make_weights_fixtures.R        # data + fixtures (tests/fixtures/weights/)
#   python scripts/export_weights_theta.py         # jaxlmm's theta per case -> tests/fixtures/weights/jaxlmm_theta.json
#   Rscript scripts/make_weights_fixtures.R        # again: lme4's deviance function at jaxlmm's theta
# Each model is fitted with lme4's default optimiser, bobyqa, Nelder_Mead and tight bobyqa/nloptwrap; the
# fixture keeps the lowest criterion.  Weights and offsets are given as columns of the data (weights = w,
# offset = o, or offset(...) terms in the formula); rows with a missing weight or offset are dropped (na.omit).
suppressPackageStartupMessages({
  library(lme4); library(lmerTest); library(jsonlite); library(performance)
})
out_dir <- "tests/fixtures/weights"
dir.create(out_dir, recursive = TRUE, showWarnings = FALSE)
theta_file <- file.path(out_dir, "jaxlmm_theta.json")
jaxlmm_theta <- if (file.exists(theta_file)) fromJSON(theta_file) else list()

tight_controls <- list(
  bobyqa_tight = lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12, maxfun = 1e5)),
  nlopt_tight = lmerControl(optimizer = "nloptwrap", optCtrl = list(xtol_abs = 1e-14, ftol_abs = 1e-16,
                                                                   xtol_rel = 1e-14, ftol_rel = 1e-16,
                                                                   maxeval = 1e5)))
controls <- c(list(default = lmerControl(), bobyqa = lmerControl(optimizer = "bobyqa"),
                   nm = lmerControl(optimizer = "Nelder_Mead")), tight_controls)

# wv, ov: the weights and offset vectors (NULL for none), evaluated in this frame by lme4's model.frame
fit_one <- function(f, data, REML, wv, ov, control, devFunOnly = FALSE) {
  if (is.null(wv) && is.null(ov)) return(lmerTest::lmer(f, data = data, REML = REML, control = control))
  if (is.null(ov)) return(lmerTest::lmer(f, data = data, REML = REML, weights = wv, control = control))
  if (is.null(wv)) return(lmerTest::lmer(f, data = data, REML = REML, offset = ov, control = control))
  lmerTest::lmer(f, data = data, REML = REML, weights = wv, offset = ov, control = control)
}

dev_fun <- function(f, data, REML, wv, ov) {
  if (is.null(wv) && is.null(ov)) return(lme4::lmer(f, data = data, REML = REML, devFunOnly = TRUE))
  if (is.null(ov)) return(lme4::lmer(f, data = data, REML = REML, weights = wv, devFunOnly = TRUE))
  if (is.null(wv)) return(lme4::lmer(f, data = data, REML = REML, offset = ov, devFunOnly = TRUE))
  lme4::lmer(f, data = data, REML = REML, weights = wv, offset = ov, devFunOnly = TRUE)
}

case <- function(name, formula, data, dataname, REML, wcol = NULL, ocol = NULL, newdata = NULL) {
  # lme4's model.frame works in the formula's environment (this frame): names such as weights, offset
  # there are not safe, hence wcol/ocol
  f <- as.formula(formula)
  wv <- if (is.null(wcol)) NULL else data[[wcol]]
  ov <- if (is.null(ocol)) NULL else data[[ocol]]
  fits <- lapply(controls, function(ctrl) suppressMessages(suppressWarnings(fit_one(f, data, REML, wv, ov, ctrl))))
  crit <- sapply(fits, function(m) if (REML) m@devcomp$cmp[["REML"]] else m@devcomp$cmp[["dev"]])
  m <- fits[[which.min(crit)]]
  cf <- summary(m)$coefficients
  re <- as.data.frame(ranef(m, condVar = TRUE))
  co <- lapply(coef(m), function(d) cbind(level = rownames(d), d))
  r2 <- tryCatch(performance::r2_nakagawa(m, tolerance = 0), error = function(e) NULL)
  out <- list(
    name = name, formula = formula, data = dataname, REML = REML, weights = wcol, offset = ocol,
    criterion = if (REML) m@devcomp$cmp[["REML"]] else m@devcomp$cmp[["dev"]],
    criteria_by_optimizer = as.list(crit),
    theta = unname(getME(m, "theta")),
    fixef = as.list(fixef(m)), sigma = sigma(m),
    vcov = as.matrix(vcov(m)), vcov_names = colnames(vcov(m)),
    loglik = as.numeric(logLik(m)), aic = AIC(m), bic = BIC(m), nobs = nobs(m),
    deviance_ml = as.numeric(deviance(refitML(m))),
    coef_table = data.frame(term = rownames(cf), estimate = cf[, 1], std_error = cf[, 2],
                            df = cf[, "df"], t = cf[, "t value"], p = cf[, "Pr(>|t|)"]),
    ranef = re, coef = co,
    fitted = unname(fitted(m)),
    residuals = unname(residuals(m)),
    residuals_pearson = unname(residuals(m, type = "pearson")),
    scaled_residual_quantiles = unname(quantile(residuals(m, "pearson", scaled = TRUE))),
    predict_re_na = unname(predict(m, re.form = NA))
  )
  if (!is.null(r2)) out$r2_nakagawa <- list(conditional = unname(r2$R2_conditional),
                                            marginal = unname(r2$R2_marginal))
  if (!is.null(newdata)) {
    out$newdata <- newdata
    out$predict_newdata <- unname(predict(m, newdata = newdata))
    out$predict_newdata_re_na <- unname(predict(m, newdata = newdata, re.form = NA))
  }
  jt <- jaxlmm_theta[[name]]
  if (!is.null(jt)) {  # lme4's deviance function at jaxlmm's theta (scripts/export_weights_theta.py)
    devfun <- dev_fun(f, data, REML, wv, ov)
    out$jaxlmm_theta <- as.numeric(jt)
    out$lme4_criterion_at_jaxlmm_theta <- devfun(as.numeric(jt))
  }
  write(toJSON(out, digits = NA, auto_unbox = TRUE, na = "null", null = "null"),
        file.path(out_dir, paste0(name, ".json")))
  cat(sprintf("%-30s crit %.10f  (%s) lme4 at jaxlmm's theta %.10f\n", name, out$criterion,
              paste(names(crit), sprintf("%.10f", crit), collapse = ", "),
              if (is.null(jt)) NA else out$lme4_criterion_at_jaxlmm_theta))
  invisible(m)
}

set.seed(20261126)
ss <- sleepstudy
ss$Subject <- as.character(ss$Subject)
ss$w <- round(runif(nrow(ss), 0.2, 3), 4)
ss$o <- round(rnorm(nrow(ss), 0, 20), 4)
write.csv(ss, file.path(out_dir, "sleepstudy_w.csv"), row.names = FALSE)
ssf <- ss; ssf$Subject <- factor(ssf$Subject)
nd_ss <- ssf[c(1, 15, 33, 60, 101, 178), c("Reaction", "Days", "Subject", "w", "o")]
nd_ss$Days <- nd_ss$Days + 0.5
nd_ss$o <- nd_ss$o + 7
nd_ss$Subject <- as.character(nd_ss$Subject)

pen <- Penicillin
pen$plate <- as.character(pen$plate); pen$sample <- as.character(pen$sample)
pen$w <- round(runif(nrow(pen), 0.5, 2), 4)
pen$w[c(5, 40)] <- NA  # rows dropped (na.omit)
pen$o <- round(rnorm(nrow(pen), 0, 0.5), 4)
pen$o[77] <- NA
write.csv(pen, file.path(out_dir, "penicillin_w.csv"), row.names = FALSE)
penf <- pen; penf$plate <- factor(penf$plate); penf$sample <- factor(penf$sample)
nd_pen <- penf[c(2, 30, 90, 140), c("diameter", "plate", "sample", "w", "o")]
nd_pen$o <- nd_pen$o - 1
nd_pen$plate <- as.character(nd_pen$plate); nd_pen$sample <- as.character(nd_pen$sample)

oats <- as.data.frame(nlme::Oats)
oats$Block <- as.character(oats$Block); oats$Variety <- as.character(oats$Variety)
oats$w <- round(rexp(nrow(oats)) + 0.1, 4)
oats$o <- round(rnorm(nrow(oats), 0, 5), 4)
write.csv(oats, file.path(out_dir, "oats_w.csv"), row.names = FALSE)
oatsf <- oats; oatsf$Block <- factor(oatsf$Block); oatsf$Variety <- factor(oatsf$Variety)
nd_oats <- oatsf[c(3, 20, 50, 71), c("yield", "nitro", "Variety", "Block", "w", "o")]
nd_oats$nitro <- nd_oats$nitro + 0.1
nd_oats$o <- nd_oats$o * 2
nd_oats$Block <- as.character(nd_oats$Block); nd_oats$Variety <- as.character(nd_oats$Variety)

ss_reml <- case("sleepstudy_slope_w_reml", "Reaction ~ Days + (Days | Subject)", ssf, "sleepstudy_w", TRUE,
                wcol = "w", newdata = nd_ss)
ss_ml <- case("sleepstudy_slope_w_ml", "Reaction ~ Days + (Days | Subject)", ssf, "sleepstudy_w", FALSE,
              wcol = "w", newdata = nd_ss)
ss_int_ml <- case("sleepstudy_int_w_ml", "Reaction ~ Days + (1 | Subject)", ssf, "sleepstudy_w", FALSE,
                  wcol = "w")
case("sleepstudy_offset_terms_reml", "Reaction ~ Days + offset(o) + offset(2 * Days) + (Days | Subject)", ssf,
     "sleepstudy_w", TRUE, newdata = nd_ss)
case("sleepstudy_offset_arg_ml", "Reaction ~ Days + (1 | Subject)", ssf, "sleepstudy_w", FALSE, ocol = "o",
     newdata = nd_ss)
case("sleepstudy_w_offset_reml", "Reaction ~ Days + offset(o) + (Days || Subject)", ssf, "sleepstudy_w", TRUE,
     wcol = "w", newdata = nd_ss)
case("penicillin_crossed_w_reml", "diameter ~ 1 + (1 | plate) + (1 | sample)", penf, "penicillin_w", TRUE,
     wcol = "w", newdata = nd_pen)
case("penicillin_crossed_w_offset_ml", "diameter ~ 1 + offset(o) + (1 | plate) + (1 | sample)", penf,
     "penicillin_w", FALSE, wcol = "w", newdata = nd_pen)
case("oats_nested_w_offset_reml", "yield ~ nitro + Variety + (1 | Block/Variety)", oatsf, "oats_w", TRUE,
     wcol = "w", ocol = "o", newdata = nd_oats)

a <- anova(ss_int_ml, ss_ml)
write(toJSON(list(data = "sleepstudy_w", weights = "w",
                  small = "Reaction ~ Days + (1 | Subject)", large = "Reaction ~ Days + (Days | Subject)",
                  table = as.data.frame(a)), digits = NA, na = "null", auto_unbox = TRUE),
      file.path(out_dir, "anova_sleepstudy_w.json"))
