# Best criterion lme4 reaches on each random case (scripts/make_random_cases.py), over three optimisers.
# Usage (from the repository root): Rscript scripts/make_random_fixtures.R
suppressPackageStartupMessages({library(lme4); library(jsonlite)})
dir <- "tests/fixtures/random"
cases <- fromJSON(file.path(dir, "cases.json"))
best <- rep(NA_real_, nrow(cases))
failure <- rep(NA_character_, nrow(cases))  # lme4's error where no optimiser could fit the case
for (i in seq_len(nrow(cases))) {
  d <- read.csv(file.path(dir, paste0(cases$data[i], ".csv")),
                colClasses = c(f = "character", g = "character", h = "character"))
  for (opt in c("bobyqa", "Nelder_Mead", "nloptwrap")) {
    m <- tryCatch(suppressWarnings(suppressMessages(lmer(as.formula(cases$formula[i]), d, REML = cases$reml[i],
                  control = lmerControl(optimizer = opt, check.conv.singular = "ignore")))),
                  error = function(e) conditionMessage(e))
    if (is.character(m)) {
      failure[i] <- m
    } else {
      best[i] <- min(best[i], if (cases$reml[i]) REMLcrit(m) else deviance(m), na.rm = TRUE)
    }
  }
  if (!is.na(best[i])) failure[i] <- NA
}
cases$lme4_best_criterion <- best
cases$lme4_error <- failure
cases$lme4_version <- as.character(packageVersion("lme4"))
write(toJSON(cases, digits = NA, pretty = TRUE), file.path(dir, "lme4_best.json"))
