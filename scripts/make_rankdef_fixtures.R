# Reference values for type III anova and contest (lmerTest) on rank-deficient fixed-effects designs, where
# lme4 drops aliased columns of X: a missing cell of a two-factor interaction (a non-reference and the
# reference cell), the same with a covariate's three-way interaction, a covariate that is a linear
# combination of two others, and a factor nested in another with labels unique across it (empty
# combinations); and two full-rank designs with terms lacking a margin (lmerTest's containment).  Run from the repository root: Rscript scripts/make_rankdef_fixtures.R
# Writes tests/fixtures/kr/rankdef_*.json and tests/fixtures/kr/rankdef.csv, rankdef_nested.csv.
suppressMessages({library(lme4); library(lmerTest); library(pbkrtest); library(jsonlite)})
out <- "tests/fixtures/kr"
dir.create(out, showWarnings = FALSE, recursive = TRUE)
ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5))
ctrl_nlopt <- lmerControl(optimizer = "nloptwrap",
                          optCtrl = list(xtol_abs = 1e-10, ftol_abs = 1e-12, maxeval = 1e5))

# unbalanced crossed subjects x items: A (3 levels, between items), B (2 levels, within both), covariates
set.seed(1616)
ns <- 20; ni <- 12
d <- expand.grid(subj = sprintf("s%02d", 1:ns), item = sprintf("i%02d", 1:ni), stringsAsFactors = FALSE)
si <- match(d$subj, sprintf("s%02d", 1:ns)); ii <- match(d$item, sprintf("i%02d", 1:ni))
d$A <- c("a1", "a2", "a3")[ii %% 3 + 1]
d$B <- c("b1", "b2")[(si + ii) %% 2 + 1]
d$x1 <- round(rnorm(nrow(d)), 3)
d$x2 <- round(rnorm(nrow(d)), 3)
d$x3 <- d$x1 + 2 * d$x2  # aliased with x1 and x2
d$y <- round(1 + 0.5 * (d$A == "a2") - 0.4 * (d$A == "a3") + 0.3 * (d$B == "b2") +
  0.6 * (d$A == "a2" & d$B == "b2") + 0.4 * d$x1 - 0.2 * d$x2 +
  rnorm(ns, sd = 0.9)[si] + rnorm(ni, sd = 0.6)[ii] + rnorm(nrow(d)), 4)
d <- d[sample(nrow(d), 190), ]  # unbalanced
d <- d[order(d$subj, d$item), ]
write.csv(d, file.path(out, "rankdef.csv"), row.names = FALSE)
cell <- d[!(d$A == "a3" & d$B == "b2"), ]  # a missing non-reference cell
cell0 <- d[!(d$A == "a1" & d$B == "b1"), ]  # the reference cell missing

# a factor nested in another with labels unique across it: site/plot has empty site x plot combinations
set.seed(1617)
nn <- expand.grid(subj = sprintf("s%02d", 1:14), plot = sprintf("p%d", 1:7), rep = 1:2, stringsAsFactors = FALSE)
nn$site <- c("s1", "s1", "s1", "s2", "s2", "s3", "s3")[match(nn$plot, sprintf("p%d", 1:7))]
nn$y <- round(c(s1 = 0, s2 = 0.8, s3 = -0.5)[nn$site] + rnorm(7, sd = 0.5)[match(nn$plot, sprintf("p%d", 1:7))] +
  rnorm(14, sd = 1)[match(nn$subj, sprintf("s%02d", 1:14))] + rnorm(nrow(nn)), 4)
nn$pw <- c("w1", "w2", "w1", "w1", "w2", "w1", "w2")[match(nn$plot, sprintf("p%d", 1:7))]  # plot within site
nn <- nn[sample(nrow(nn), 170), ]
nn <- nn[order(nn$subj, nn$plot), ]
write.csv(nn, file.path(out, "rankdef_nested.csv"), row.names = FALSE)

datasets <- list(rankdef_cell = cell, rankdef_cell0 = cell0, rankdef = d, rankdef_nested = nn)
cases <- list(
  list(name = "rankdef_cell", data = "rankdef_cell", formula = "y ~ A * B + (1 | subj) + (1 | item)"),
  list(name = "rankdef_cell0", data = "rankdef_cell0", formula = "y ~ A * B + (1 | subj) + (1 | item)"),
  list(name = "rankdef_cell_x", data = "rankdef_cell", formula = "y ~ A * B * x1 + (1 | subj) + (1 | item)"),
  list(name = "rankdef_lincomb", data = "rankdef", formula = "y ~ x1 + x2 + x3 + A + (1 | subj) + (1 | item)"),
  list(name = "rankdef_nested", data = "rankdef_nested", formula = "y ~ site / plot + (1 | subj)"),
  # full rank, but terms whose factors attribute has a 2 (a margin absent): lmerTest's containment
  list(name = "containment_nested", data = "rankdef_nested", formula = "y ~ site / pw + (1 | subj)"),
  list(name = "containment_slope", data = "rankdef", formula = "y ~ x1 + A:x1 + B + (1 | subj) + (1 | item)")
)

anova_table <- function(a) {
  list(terms = rownames(a), SumSq = a[["Sum Sq"]], MeanSq = a[["Mean Sq"]], NumDF = a$NumDF, DenDF = a$DenDF,
       F = a[["F value"]], p = a[["Pr(>F)"]])
}

best_fit <- function(formula, data) {  # the better optimum of bobyqa and a tight nloptwrap
  fits <- lapply(list(ctrl, ctrl_nlopt), function(cc)
    suppressMessages(lmerTest::lmer(as.formula(formula), data = data, REML = TRUE, control = cc)))
  fits[[which.min(sapply(fits, REMLcrit))]]
}

for (cs in cases) {
  dat <- datasets[[cs$data]]
  m <- best_fit(cs$formula, dat)
  msgs <- character(0)
  sat <- withCallingHandlers(anova(m, type = 3, ddf = "Satterthwaite"),
                             message = function(e) { msgs <<- c(msgs, conditionMessage(e)); invokeRestart("muffleMessage") })
  kr <- anova(m, type = 3, ddf = "Kenward-Roger")
  hyp <- lapply(attr(sat, "hypotheses"), function(L) unname(L))
  res <- list(
    formula = cs$formula, data = cs$data, REML = TRUE, nobs = nobs(m),
    theta = getME(m, "theta"), sigma = sigma(m), reml_criterion = REMLcrit(m),
    fixef_names = names(fixef(m)), dropped = names(attr(getME(m, "X"), "col.dropped")),
    messages = msgs,
    anova_satterthwaite = anova_table(sat), anova_kenward_roger = anova_table(kr),
    hypotheses = hyp
  )
  if (cs$name == "rankdef_cell") {  # contest: a two-row contrast with dependent rows and a one-row contrast
    p <- length(fixef(m))
    L2 <- rbind(c(0, 1, -1, 0, 0, rep(0, p - 5)), c(0, 0, 0, 1, 1, rep(0, p - 5)), c(0, 1, -1, 1, 1, rep(0, p - 5)))
    L1 <- c(0, 0, 1, 0, 0.5, rep(0, p - 5))
    res$contest <- list(
      L = L2, L1 = L1,
      md_satterthwaite = as.list(contestMD(m, L2, ddf = "Satterthwaite")),
      md_kenward_roger = as.list(contestMD(m, L2, ddf = "Kenward-Roger")),
      d1_satterthwaite = as.list(contest1D(m, L1, ddf = "Satterthwaite")),
      d1_kenward_roger = as.list(contest1D(m, L1, ddf = "Kenward-Roger"))
    )
  }
  writeLines(toJSON(res, digits = NA, auto_unbox = TRUE, matrix = "rowmajor", na = "null"),
             file.path(out, paste0(cs$name, ".json")))
  cat(cs$name, "\n"); print(sat); print(kr); print(msgs)
}
