#!/usr/bin/env Rscript
# pbkrtest references for the bootstrap p-values at a variance boundary, and R's prints of the seed analysis.
# Usage (from the repository root): Rscript scripts/make_pbtest_fixtures.R
# Needs lme4, lmerTest, pbkrtest, jsonlite.  Writes tests/fixtures/pbtest/{boundary,positive}.csv and
# pbtest.json, and tests/fixtures/prints/{anova_seed,summary_seed_lmm3}.txt.
#
# Two data sets of 96 rows: y ~ x with a random intercept per g (12 levels) and a crossed factor h (6 levels).
# The large model adds (1 | h).  "boundary": h has no effect and its variance is estimated as exactly 0, so
# the observed LRT is 0 up to rounding.  "positive": h has an effect (sd 0.5), LRT about 2.1.  For each,
# PBmodcomp's reference draws (nsim = 1000, lme4's default optimiser) are saved raw with its printed p
# (which keeps only the positive draws) and the statistic.
suppressPackageStartupMessages({library(lme4); library(lmerTest); library(pbkrtest); library(jsonlite)})
out_dir <- "tests/fixtures/pbtest"
dir.create(out_dir, recursive = TRUE, showWarnings = FALSE)
dir.create("tests/fixtures/prints", recursive = TRUE, showWarnings = FALSE)

make_data <- function(seed, sd_h) {
  set.seed(seed)
  g <- factor(rep(sprintf("g%02d", 1:12), each = 8))
  h <- factor(rep(sprintf("h%d", 1:6), times = 16))
  x <- round(runif(96, 0, 10), 3)
  y <- round(1 + 0.3 * x + rnorm(12, sd = 1)[g] + rnorm(6, sd = sd_h)[h] + rnorm(96, sd = 1.5), 4)
  data.frame(y, x, g, h)
}

large_formula <- y ~ x + (1 | g) + (1 | h)
small_formula <- y ~ x + (1 | g)
cases <- list(boundary = list(seed = 2, sd_h = 0), positive = list(seed = 10, sd_h = 0.5))
out <- list()
for (name in names(cases)) {
  cs <- cases[[name]]
  d <- make_data(cs$seed, cs$sd_h)
  write.csv(d, file.path(out_dir, paste0(name, ".csv")), row.names = FALSE)
  large <- lme4::lmer(large_formula, d, REML = FALSE)
  small <- lme4::lmer(small_formula, d, REML = FALSE)
  pb <- PBmodcomp(large, small, nsim = 1000, seed = 20261126)
  ref <- as.numeric(pb$ref)  # the reference draws PBmodcomp used
  stopifnot(sum(ref > 0) == pb$samples[["npos"]])
  printed <- capture.output(print(pb))
  out[[name]] <- list(
    data = paste0(name, ".csv"), large = deparse(large_formula), small = deparse(small_formula),
    theta_large = getME(large, "theta"), deviance_small = deviance(small),
    lrt = pb$test["LRT", "stat"], df = pb$test["LRT", "df"],
    p_chisq = pb$test["LRT", "p.value"], p_pbkrtest = pb$test["PBtest", "p.value"],
    nsim = unname(pb$samples["nsim"]), npos = unname(pb$samples["npos"]), n_extreme = pb$n.extreme,
    printed = printed, reference = ref
  )
}
write(toJSON(out, digits = NA, auto_unbox = TRUE), file.path(out_dir, "pbtest.json"))

# R's prints of the seed analysis (lme4's anova, lmerTest's summary), for the layout tests; bobyqa run to
# convergence (lme4's default optimiser stops short on lmm3), so that the printed digits are the optimum's
data <- read.csv("jaxlmm/data/seed.csv")
ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5))
lmm1 <- lmerTest::lmer(y ~ x + (1 | Group), data = data, REML = FALSE, control = ctrl)
lmm2 <- lmerTest::lmer(y ~ x + (1 | Group) + (0 + x | Group), data = data, REML = FALSE, control = ctrl)
lmm3 <- lmerTest::lmer(y ~ x + (1 + x | Group), data = data, control = ctrl)
writeLines(capture.output(print(anova(lmm1, lmm2, lmm3))), "tests/fixtures/prints/anova_seed.txt")
writeLines(capture.output(print(summary(lmm3))), "tests/fixtures/prints/summary_seed_lmm3.txt")

# lmerTest's summary of fixture models (tests/fixtures/data), bobyqa run to convergence
summary_cases <- list(
  sleepstudy_corr_ml = list("Reaction ~ Days + (Days | Subject)", "sleepstudy", FALSE),
  machines_reml = list("score ~ Machine + (1 | Worker/Machine)", "Machines", TRUE),
  cake_reml = list("angle ~ recipe * temperature + (1 | recipe:replicate)", "cake", TRUE),
  penicillin_reml = list("diameter ~ 1 + (1 | plate) + (1 | sample)", "Penicillin", TRUE)
)
for (name in names(summary_cases)) {
  cs <- summary_cases[[name]]
  data <- read.csv(file.path("tests/fixtures/data", paste0(cs[[2]], ".csv")))
  if (cs[[2]] == "cake") data$temperature <- factor(data$temperature)
  m <- eval(bquote(lmerTest::lmer(.(as.formula(cs[[1]])), data = data, REML = .(cs[[3]]), control = ctrl)))
  writeLines(capture.output(print(summary(m))), file.path("tests/fixtures/prints", paste0("summary_", name, ".txt")))
}
