#!/usr/bin/env Rscript
# Reference fits from lme4 for R's model-matrix coding in jaxlmm (issue 14): contrasts (ordered factors'
# contr.poly, contrasts = list(f = "contr.sum" | "contr.helmert" | a matrix)), poly() orthogonal and raw
# (also in interactions and inside a bar), ns(), bs(), scale(), and predict() on new data (one row and
# many; re.form = NULL, NA and partial; allow.new.levels = TRUE).
# Usage (from the repository root): Rscript scripts/make_formula_fixtures.R
# Reads tests/fixtures/data/*.csv (as the Python tests read them) and writes tests/fixtures/formula/*.json.
# Each model is fitted with lme4's default optimiser, bobyqa, Nelder_Mead, and bobyqa and nloptwrap with
# tight tolerances; the fixture keeps the lowest criterion (the best of lme4's optimisers).
suppressPackageStartupMessages({
  library(lme4); library(jsonlite); library(splines)
})
out_dir <- "tests/fixtures/formula"
dir.create(out_dir, recursive = TRUE, showWarnings = FALSE)

read_data <- function(name, factors = character(), ordered = character()) {
  d <- read.csv(file.path("tests/fixtures/data", paste0(name, ".csv")), stringsAsFactors = TRUE)
  for (v in factors) d[[v]] <- factor(d[[v]])
  for (v in ordered) d[[v]] <- factor(d[[v]], ordered = TRUE)
  d
}

controls <- list(
  default = lmerControl(),
  bobyqa = lmerControl(optimizer = "bobyqa"),
  nm = lmerControl(optimizer = "Nelder_Mead"),
  bobyqa_tight = lmerControl(optimizer = "bobyqa", optCtrl = list(rhoend = 1e-12, maxfun = 1e5)),
  nlopt_tight = lmerControl(optimizer = "nloptwrap", optCtrl = list(xtol_abs = 1e-14, ftol_abs = 1e-16,
                                                                   xtol_rel = 1e-14, ftol_rel = 1e-16,
                                                                   maxeval = 1e5)))

best_fit <- function(formula, data, REML, contrasts) {
  fits <- lapply(controls, function(ctrl) suppressMessages(suppressWarnings(
    lmer(formula, data = data, REML = REML, contrasts = contrasts, control = ctrl))))
  crit <- sapply(fits, function(m) if (REML) m@devcomp$cmp[["REML"]] else m@devcomp$cmp[["dev"]])
  fits[[which.min(crit)]]
}

# a contrasts= entry as the Python tests pass it: a name, or list(matrix = rows, columns = names or NULL)
contrast_json <- function(x) {
  if (is.character(x)) return(x)
  list(matrix = unname(lapply(seq_len(nrow(x)), function(i) x[i, ])), columns = colnames(x))
}

# predictions: list(list(newdata, re_form = NULL / NA / "~...", allow = FALSE), ...)
make_case <- function(name, data_name, formula, data, REML = TRUE, contrasts = NULL, factors = character(),
                      ordered = character(), predictions = list()) {
  m <- best_fit(as.formula(formula), data, REML, contrasts)
  preds <- lapply(predictions, function(p) {
    re_form <- if (is.null(p$re_form)) NULL else if (identical(p$re_form, NA)) NA else as.formula(p$re_form)
    allow <- isTRUE(p$allow)
    values <- predict(m, newdata = p$newdata, re.form = re_form, allow.new.levels = allow)
    list(newdata = p$newdata, re_form = if (is.null(p$re_form)) "NULL" else if (identical(p$re_form, NA)) "NA"
         else p$re_form, allow_new_levels = allow, values = unname(values))
  })
  fx <- list(
    formula = formula, data = data_name, reml = REML, factors = factors, ordered = ordered,
    contrasts = if (is.null(contrasts)) NULL else lapply(contrasts, contrast_json),
    criterion = if (REML) m@devcomp$cmp[["REML"]] else m@devcomp$cmp[["dev"]],
    fixef_names = names(fixef(m)), fixef = unname(fixef(m)), se = unname(sqrt(diag(as.matrix(vcov(m))))),
    theta = unname(getME(m, "theta")), sigma = sigma(m),
    ngrps = as.list(ngrps(m)), varcorr_grp = as.data.frame(VarCorr(m))$grp,
    varcorr_var1 = as.data.frame(VarCorr(m))$var1,
    predictions = preds)
  write(toJSON(fx, auto_unbox = TRUE, digits = NA, null = "null", na = "null", pretty = TRUE),
        file.path(out_dir, paste0(name, ".json")))
  cat(name, ":", names(fixef(m)), "\n")
}

sleep <- read_data("sleepstudy", factors = "Subject")
one_row <- data.frame(Days = 2.5, Subject = "308")
grid <- data.frame(Days = c(-1, 0, 2.5, 4.5, 9, 11), Subject = c("308", "309", "330", "999", "371", "308"))
seen_grid <- grid[grid$Subject != "999", ]

make_case("sleep_poly", "sleepstudy", "Reaction ~ poly(Days, 2) + (1 | Subject) + (0 + Days | Subject)", sleep,
  factors = "Subject",
  predictions = list(
    list(newdata = one_row), list(newdata = seen_grid), list(newdata = grid, re_form = NA),
    list(newdata = grid, allow = TRUE), list(newdata = seen_grid, re_form = "~(1 | Subject)"),
    list(newdata = grid, re_form = "~(0 + Days | Subject)", allow = TRUE)))

make_case("sleep_poly_raw", "sleepstudy", "Reaction ~ poly(Days, 3, raw = TRUE) + (Days | Subject)", sleep,
  factors = "Subject",
  predictions = list(list(newdata = one_row), list(newdata = grid, allow = TRUE), list(newdata = grid, re_form = NA)))

make_case("sleep_poly_in_bar", "sleepstudy", "Reaction ~ poly(Days, 2) + (poly(Days, 2) | Subject)", sleep,
  factors = "Subject",
  predictions = list(list(newdata = one_row), list(newdata = grid, allow = TRUE)))

make_case("sleep_ns", "sleepstudy", "Reaction ~ ns(Days, 3) + (1 | Subject)", sleep, factors = "Subject",
  predictions = list(list(newdata = one_row), list(newdata = grid, allow = TRUE), list(newdata = grid, re_form = NA)))

make_case("sleep_bs", "sleepstudy", "Reaction ~ bs(Days, df = 5) + (Days | Subject)", sleep, factors = "Subject",
  predictions = list(list(newdata = one_row), list(newdata = grid, allow = TRUE), list(newdata = grid, re_form = NA)))

make_case("sleep_ns_knots", "sleepstudy", "Reaction ~ ns(Days, knots = c(2, 5)) + (1 | Subject)", sleep,
  factors = "Subject", predictions = list(list(newdata = grid, allow = TRUE)))

make_case("sleep_scale", "sleepstudy", "Reaction ~ scale(Days) + (scale(Days) | Subject)", sleep,
  factors = "Subject",
  predictions = list(list(newdata = one_row), list(newdata = grid, allow = TRUE), list(newdata = grid, re_form = NA),
                     list(newdata = seen_grid, re_form = "~0")))

ortho <- read_data("Orthodont", factors = c("Subject", "Sex"))
ortho_new <- data.frame(age = c(8, 9.5, 14, 16), Sex = c("Male", "Female", "Female", "Male"),
                        Subject = c("M01", "F02", "F11", "M99"))
make_case("orthodont_poly_by_sex", "Orthodont", "distance ~ poly(age, 2) * Sex + (1 | Subject)", ortho,
  factors = c("Subject", "Sex"),
  predictions = list(list(newdata = ortho_new[1, ]), list(newdata = ortho_new, allow = TRUE),
                     list(newdata = ortho_new, re_form = NA)))
make_case("orthodont_raw_poly_sex_only_interaction", "Orthodont",
  "distance ~ poly(age, 2, raw = TRUE):Sex + (1 | Subject)", ortho, factors = c("Subject", "Sex"),
  predictions = list(list(newdata = ortho_new, allow = TRUE)))
make_case("orthodont_sum_interaction_without_main", "Orthodont", "distance ~ age + age:Sex + (1 | Subject)", ortho,
  factors = c("Subject", "Sex"), contrasts = list(Sex = "contr.sum"),
  predictions = list(list(newdata = ortho_new, allow = TRUE)))
make_case("orthodont_sum", "Orthodont", "distance ~ age * Sex + (1 | Subject)", ortho,
  factors = c("Subject", "Sex"), contrasts = list(Sex = "contr.sum"),
  predictions = list(list(newdata = ortho_new, allow = TRUE)))

cake <- read_data("cake", factors = c("replicate", "recipe"), ordered = "temperature")
cake_new <- data.frame(recipe = c("A", "C", "B"), temperature = c("175", "215", "225"), replicate = c("1", "14", "16"))
make_case("cake_ordered", "cake", "angle ~ recipe * temperature + (1 | recipe:replicate)", cake,
  factors = c("replicate", "recipe"), ordered = "temperature",
  predictions = list(list(newdata = cake_new, allow = TRUE), list(newdata = cake_new, re_form = NA)))
make_case("cake_helmert_sum", "cake", "angle ~ recipe + temperature + (1 | replicate)", cake,
  factors = c("replicate", "recipe"), ordered = "temperature",
  contrasts = list(recipe = "contr.sum", temperature = "contr.helmert"),
  predictions = list(list(newdata = cake_new, allow = TRUE)))
make_case("cake_ordered_ml_no_intercept", "cake", "angle ~ 0 + temperature + recipe + (1 | replicate)", cake,
  REML = FALSE, factors = c("replicate", "recipe"), ordered = "temperature",
  predictions = list(list(newdata = cake_new, allow = TRUE)))

machines <- read_data("Machines", factors = c("Worker"), ordered = "Machine")
machines_new <- data.frame(Machine = c("A", "C"), Worker = c("1", "6"))
make_case("machines_ordered_in_bar", "Machines", "score ~ Machine + (Machine | Worker)", machines,
  factors = "Worker", ordered = "Machine", predictions = list(list(newdata = machines_new)))
machines_u <- read_data("Machines", factors = c("Worker", "Machine"))
contrast_matrix <- cbind(AvsBC = c(2, -1, -1), BvsC = c(0, 1, -1))
make_case("machines_matrix_contrast", "Machines", "score ~ Machine + (1 | Worker) + (1 | Worker:Machine)",
  machines_u, factors = c("Worker", "Machine"), contrasts = list(Machine = contrast_matrix),
  predictions = list(list(newdata = machines_new), list(newdata = machines_new, re_form = "~(1 | Worker)")))
make_case("machines_unnamed_matrix", "Machines", "score ~ Machine + (1 | Worker)", machines_u,
  factors = c("Worker", "Machine"), contrasts = list(Machine = unname(contrast_matrix)))

# nested grouping a/b/c: lme4's names c:(b:a), b:a, a
nested <- sleep
nested$a <- factor(rep(1:3, length.out = 180)); nested$b <- factor(rep(1:4, each = 45))
nested$c <- factor(rep(1:5, length.out = 180))
write.csv(nested[, c("Reaction", "Days", "a", "b", "c")], file.path(out_dir, "nested.csv"), row.names = FALSE)
make_case("nested_abc", "nested", "Reaction ~ Days + (1 | a/b/c)", nested, factors = c("a", "b", "c"))
