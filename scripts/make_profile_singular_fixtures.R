# lme4's profile confidence intervals at singular fits (confint(m, method = "profile", oldNames = FALSE)), with
# the warnings lme4 gives (or its error); the best of bobyqa and a tight nloptwrap for the fit.
# Run from the repository root: Rscript scripts/make_profile_singular_fixtures.R
# Writes tests/fixtures/kr/profile_singular_*.json.
suppressMessages({library(lme4); library(jsonlite)})
out <- "tests/fixtures/kr"
ctrls <- list(lmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5)),
              lmerControl(optimizer = "nloptwrap", optCtrl = list(xtol_abs = 1e-10, ftol_abs = 1e-12, maxeval = 1e5)))
sing <- read.csv("tests/fixtures/data/edge_singular.csv")
s <- read.csv(file.path(out, "singular.csv"))
datasets <- list(edge_singular = sing, singular = s)
cases <- list(
  list(name = "profile_singular_crossed", data = "singular", formula = "y ~ grp * x + (1 | subj) + (1 | item)", REML = TRUE),
  list(name = "profile_singular_zero_var", data = "edge_singular", formula = "y0 ~ x + (1 | g)", REML = TRUE),
  list(name = "profile_singular_zero_cov_ml", data = "edge_singular", formula = "y0 ~ x + (1 + x | g)", REML = FALSE),
  list(name = "profile_singular_cor_plus_ml", data = "edge_singular", formula = "y1 ~ x + (1 + x | g)", REML = FALSE),
  list(name = "profile_singular_cor_minus", data = "edge_singular", formula = "y2 ~ x + (1 + x | g)", REML = TRUE)
)
for (pc in cases) {
  fits <- lapply(ctrls, function(cc) suppressMessages(lmer(as.formula(pc$formula), datasets[[pc$data]], REML = pc$REML, control = cc)))
  m <- fits[[which.min(sapply(fits, function(f) if (pc$REML) REMLcrit(f) else deviance(f)))]]
  w <- character(0)
  err <- NULL
  ci <- tryCatch(withCallingHandlers(suppressMessages(confint(m, method = "profile", level = 0.95, oldNames = FALSE)),
                            warning = function(e) { w <<- c(w, conditionMessage(e)); invokeRestart("muffleWarning") }),
                 error = function(e) { err <<- conditionMessage(e); NULL })
  res <- list(formula = pc$formula, data = pc$data, REML = pc$REML, singular = isSingular(m), theta = getME(m, "theta"),
              names = if (is.null(ci)) NULL else rownames(ci), lower = if (is.null(ci)) NULL else unname(ci[, 1]),
              upper = if (is.null(ci)) NULL else unname(ci[, 2]), warnings = unique(w), error = err)
  writeLines(toJSON(res, digits = NA, auto_unbox = TRUE, na = "null"), file.path(out, paste0(pc$name, ".json")))
  cat(pc$name, "\n"); print(ci)
}
