#!/usr/bin/env Rscript
# Brute-force lme4 power simulations for tests/test_power_pilot.py (jaxlmm.power from a fitted pilot).
# Usage (from the repository root): Rscript scripts/make_power_fixtures.R [nsim]
# Writes tests/fixtures/power/:
#   pilot.csv                 a crossed subjects x items pilot: a two-level condition within subjects and
#                             items (counterbalanced), a three-level item factor `freq`
#   extended_subj.csv         simr's extend(pilot, along = "subj", n = 24), by simr's rules written out
#                             here (simr is not installed): new subject labels 1..n (a character column,
#                             not a factor: simr gives a factor letters a, b, ...), the pilot's subjects'
#                             rows recycled in order
#   extended_within.csv       simr's extend(pilot, within = "subj + cond", n = 9): a replicate index per
#                             subj x cond cell, then n slices of replicate values recycled
#   power.json                the pilot fit (fixed effects, theta, sigma), its lmerTest type III anova and
#                             LRTs on the pilot's own response, and for each scenario (the pilot design,
#                             the design extended to 24 subjects) the power of the LRT (both by ML, vs the
#                             model without the term) and lmerTest's Satterthwaite F for cond and freq from
#                             nsim data sets simulated with the pilot's theta and sigma and CHANGED fixed
#                             effects, with the failures and singular fits
suppressPackageStartupMessages({ library(lme4); library(lmerTest); library(jsonlite) })
args <- commandArgs(trailingOnly = TRUE)
nsim <- if (length(args)) as.integer(args[1]) else 1000L
out <- "tests/fixtures/power"
dir.create(out, recursive = TRUE, showWarnings = FALSE)

set.seed(20261126)
S <- 12; I <- 12
pilot <- expand.grid(item = sprintf("I%02d", 1:I), subj = sprintf("S%02d", 1:S), stringsAsFactors = FALSE)[, c("subj", "item")]
si <- as.integer(factor(pilot$subj)); ii <- as.integer(factor(pilot$item))
pilot$cond <- ifelse((si + ii) %% 2 == 0, "a", "b")
pilot$freq <- c("lo", "mid", "hi")[(ii - 1) %% 3 + 1]
pilot$y <- round(0.2 * (pilot$cond == "b") + 0.3 * (pilot$freq == "hi") + rnorm(S, sd = 0.6)[si] +
                 rnorm(I, sd = 0.4)[ii] + rnorm(nrow(pilot)), 4)
write.csv(pilot, file.path(out, "pilot.csv"), row.names = FALSE)
pilot <- read.csv(file.path(out, "pilot.csv"))
pilot$freq <- factor(pilot$freq, levels = c("lo", "mid", "hi"))

form <- y ~ cond + freq + (1 | subj) + (1 | item)
ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5))
m <- lmerTest::lmer(form, pilot, REML = TRUE, control = ctrl)
a <- anova(m, ddf = "Satterthwaite")
ml <- lme4::lmer(form, pilot, REML = FALSE, control = ctrl)
lrt_pilot <- function(drop) {
  small <- update(ml, as.formula(paste(". ~ . -", drop)))
  2 * (as.numeric(logLik(ml)) - as.numeric(logLik(small)))
}

# simr's extend, written out (simr's R/extend.R: extend.data.frame)
extend_along <- function(data, along, n) {
  values <- if (is.factor(data[[along]])) make.unique(rep_len(letters, n)) else seq_len(n)
  old <- rep_len(as.character(unique(data[[along]])), n)
  do.call(rbind, Map(function(v, o) { s <- data[as.character(data[[along]]) == o, , drop = FALSE]; s[[along]] <- v; s }, values, old))
}
extend_within <- function(data, within, n) {
  f <- interaction(lapply(within, function(v) data[[v]]))
  repl <- integer(nrow(data))
  for (l in levels(f)) repl[f == l] <- seq_len(sum(f == l))
  old <- rep_len(unique(repl), n)
  do.call(rbind, lapply(old, function(o) data[repl == o, , drop = FALSE]))
}
ext <- extend_along(pilot, "subj", 24)
write.csv(ext, file.path(out, "extended_subj.csv"), row.names = FALSE)
within <- extend_within(pilot, c("subj", "cond"), 9)
write.csv(within, file.path(out, "extended_within.csv"), row.names = FALSE)

beta <- fixef(m)
beta[["condb"]] <- 0.35  # the changed effects
beta[["freqmid"]] <- 0.25
beta[["freqhi"]] <- 0.5
theta <- getME(m, "theta")
sigma <- sigma(m)

scenario <- function(data) {
  data$freq <- factor(data$freq, levels = c("lo", "mid", "hi"))
  Y <- simulate(~ cond + freq + (1 | subj) + (1 | item), nsim = nsim, newdata = data, family = gaussian,
                newparams = list(beta = unname(beta), theta = unname(theta), sigma = sigma))
  rows <- lapply(seq_len(nsim), function(k) {
    data$y <- Y[[k]]
    res <- tryCatch({
      full <- lme4::lmer(form, data, REML = FALSE, control = ctrl)
      no_cond <- lme4::lmer(y ~ freq + (1 | subj) + (1 | item), data, REML = FALSE, control = ctrl)
      no_freq <- lme4::lmer(y ~ cond + (1 | subj) + (1 | item), data, REML = FALSE, control = ctrl)
      reml <- lmerTest::lmer(form, data, REML = TRUE, control = ctrl)
      f <- anova(reml, ddf = "Satterthwaite")
      ll <- function(x) as.numeric(logLik(x))
      c(lrt_cond = pchisq(2 * (ll(full) - ll(no_cond)), 1, lower.tail = FALSE),
        lrt_freq = pchisq(2 * (ll(full) - ll(no_freq)), 2, lower.tail = FALSE),
        sat_cond = f["cond", "Pr(>F)"], sat_freq = f["freq", "Pr(>F)"],
        singular_ml = isSingular(full), singular_reml = isSingular(reml), failed = 0)
    }, error = function(e) c(lrt_cond = NA, lrt_freq = NA, sat_cond = NA, sat_freq = NA,
                             singular_ml = NA, singular_reml = NA, failed = 1))
    res
  })
  r <- as.data.frame(do.call(rbind, rows))
  ok <- r$failed == 0
  pw <- function(p) list(successes = sum(p[ok] < 0.05), n_valid = sum(ok), power = mean(p[ok] < 0.05))
  list(nrow = nrow(data), nsim = nsim, failed = sum(!ok),
       singular_ml = sum(r$singular_ml[ok] == 1), singular_reml = sum(r$singular_reml[ok] == 1),
       lrt = list(cond = pw(r$lrt_cond), freq = pw(r$lrt_freq)),
       satterthwaite = list(cond = pw(r$sat_cond), freq = pw(r$sat_freq)))
}

t0 <- proc.time()[["elapsed"]]
res_pilot <- scenario(pilot)
res_ext <- scenario(ext)
elapsed <- proc.time()[["elapsed"]] - t0

write_json(list(
  formula = "y ~ cond + freq + (1 | subj) + (1 | item)",
  lme4 = as.character(packageVersion("lme4")), lmerTest = as.character(packageVersion("lmerTest")),
  pilot = list(fixef = as.list(fixef(m)), theta = unname(theta), sigma = sigma,
               anova = list(term = rownames(a), F = a[["F value"]], NumDF = a[["NumDF"]], DenDF = a[["DenDF"]],
                            p = a[["Pr(>F)"]]),
               lrt = list(cond = lrt_pilot("cond"), freq = lrt_pilot("freq"))),
  changed_fixef = as.list(beta),
  scenarios = list(pilot = res_pilot, extended_subj_24 = res_ext),
  extended = list(subj_24 = list(nrow = nrow(ext), n_subj = length(unique(ext$subj))),
                  within_subj_cond_9 = list(nrow = nrow(within))),
  r_seconds = elapsed
), file.path(out, "power.json"), auto_unbox = TRUE, digits = NA, pretty = TRUE)
cat("done in", elapsed, "s\n")
