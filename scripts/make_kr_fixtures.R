# Reference values for type III anova (lmerTest), Kenward-Roger (pbkrtest) and profile intervals (lme4).
# Run from the repository root: Rscript scripts/make_kr_fixtures.R
# Writes tests/fixtures/kr/*.json and the simulated data sets tests/fixtures/kr/*.csv.
suppressMessages({library(lme4); library(lmerTest); library(pbkrtest); library(jsonlite)})
out <- "tests/fixtures/kr"
dir.create(out, showWarnings = FALSE, recursive = TRUE)
ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5))

# unbalanced crossed subjects x items, a 3-level factor, a covariate and their interaction
set.seed(16)
ns <- 24; ni <- 16
d <- expand.grid(subj = sprintf("s%02d", 1:ns), item = sprintf("i%02d", 1:ni), stringsAsFactors = FALSE)
d$cond <- c("a", "b", "c")[(as.integer(factor(d$item)) %% 3) + 1]
d$x <- round(rnorm(nrow(d)), 3)
s_int <- rnorm(ns, sd = 1); s_slope <- rnorm(ns, sd = 0.5); i_int <- rnorm(ni, sd = 0.7)
si <- match(d$subj, sprintf("s%02d", 1:ns)); ii <- match(d$item, sprintf("i%02d", 1:ni))
d$y <- round(1 + 0.4 * (d$cond == "b") - 0.3 * (d$cond == "c") + 0.5 * d$x + 0.3 * d$x * (d$cond == "c") +
  s_int[si] + s_slope[si] * d$x + i_int[ii] + rnorm(nrow(d), sd = 1), 4)
d <- d[sample(nrow(d), 260), ]  # unbalanced
d <- d[order(d$subj, d$item), ]
write.csv(d, file.path(out, "crossed.csv"), row.names = FALSE)

# balanced split plot: whole plots (block) x treatment, subplots
set.seed(7)
b <- expand.grid(dose = c("lo", "hi"), trt = c("t1", "t2", "t3"), block = sprintf("b%d", 1:6),
                 stringsAsFactors = FALSE)
b$y <- round(rnorm(6, sd = 1.2)[as.integer(factor(b$block))] + c(0, 0.5, 1.1)[as.integer(factor(b$trt))] +
  0.4 * (b$dose == "hi") + rnorm(nrow(b)), 4)
write.csv(b, file.path(out, "balanced.csv"), row.names = FALSE)

# a singular fit: the item variance is estimated as zero
set.seed(2)
s <- expand.grid(subj = sprintf("s%02d", 1:12), item = sprintf("i%d", 1:6), stringsAsFactors = FALSE)
s$grp <- ifelse(as.integer(factor(s$subj)) <= 6, "g1", "g2")
s$x <- round(rnorm(nrow(s)), 3)
s$y <- round(rnorm(12, sd = 0.8)[as.integer(factor(s$subj))] + 0.3 * (s$grp == "g2") + 0.4 * s$x + rnorm(nrow(s)), 4)
write.csv(s, file.path(out, "singular.csv"), row.names = FALSE)

# lmerTest's ham (balanced: 81 consumers x 4 products x 2 information levels) and an unbalanced subset,
# the factors written as labels so that every reader codes them as factors
h <- lmerTest::ham
h <- data.frame(Consumer = sprintf("c%02d", as.integer(h$Consumer)), Product = paste0("p", h$Product),
                Information = paste0("i", h$Information), Gender = paste0("g", h$Gender),
                Informed.liking = h$Informed.liking)
write.csv(h, file.path(out, "ham.csv"), row.names = FALSE)
set.seed(11)
hu <- h[sort(sample(nrow(h), 520)), ]
write.csv(hu, file.path(out, "ham_unbalanced.csv"), row.names = FALSE)

sleep <- read.csv("tests/fixtures/data/sleepstudy.csv")
datasets <- list(crossed = d, balanced = b, singular = s, sleepstudy = sleep, ham = h, ham_unbalanced = hu)

cases <- list(
  list(name = "crossed_full", data = "crossed", formula = "y ~ cond * x + (1 + x | subj) + (1 | item)"),
  list(name = "crossed_main", data = "crossed", formula = "y ~ cond + x + (1 | subj) + (1 | item)"),
  list(name = "balanced", data = "balanced", formula = "y ~ trt * dose + (1 | block)"),
  list(name = "balanced_oneway", data = "balanced", formula = "y ~ trt + (1 | block)"),
  list(name = "singular", data = "singular", formula = "y ~ grp * x + (1 | subj) + (1 | item)"),
  list(name = "sleepstudy", data = "sleepstudy", formula = "Reaction ~ Days + (Days | Subject)"),
  list(name = "crossed_xfirst", data = "crossed", formula = "y ~ x * cond + (1 | subj) + (1 | item)"),
  list(name = "crossed_noint", data = "crossed", formula = "y ~ 0 + cond + x + (1 | subj)"),
  list(name = "ham", data = "ham",
       formula = "Informed.liking ~ Gender * Information * Product + (1 | Consumer) + (1 | Consumer:Product)"),
  list(name = "ham_unbalanced", data = "ham_unbalanced",
       formula = "Informed.liking ~ Gender * Information * Product + (1 | Consumer) + (1 | Consumer:Product)")
)

anova_table <- function(a) {
  list(terms = rownames(a), SumSq = a[["Sum Sq"]], MeanSq = a[["Mean Sq"]], NumDF = a$NumDF, DenDF = a$DenDF,
       F = a[["F value"]], p = a[["Pr(>F)"]])
}

for (cs in cases) {
  m <- lmerTest::lmer(as.formula(cs$formula), data = datasets[[cs$data]], REML = TRUE, control = ctrl)
  sat <- anova(m, type = 3, ddf = "Satterthwaite")
  kr <- anova(m, type = 3, ddf = "Kenward-Roger")
  cs_sat <- summary(m, ddf = "Satterthwaite")$coefficients
  cs_kr <- summary(m, ddf = "Kenward-Roger")$coefficients
  Va <- as.matrix(vcovAdj(m))
  hyp <- lapply(attr(sat, "hypotheses"), function(L) unname(L))
  res <- list(
    formula = cs$formula, data = cs$data, REML = TRUE, singular = isSingular(m),
    theta = getME(m, "theta"), sigma = sigma(m), reml_criterion = REMLcrit(m),
    fixef_names = names(fixef(m)),
    anova_satterthwaite = anova_table(sat), anova_kenward_roger = anova_table(kr),
    hypotheses = hyp,
    coef_satterthwaite = list(se = cs_sat[, "Std. Error"], df = cs_sat[, "df"], t = cs_sat[, "t value"]),
    coef_kenward_roger = list(se = cs_kr[, "Std. Error"], df = cs_kr[, "df"], t = cs_kr[, "t value"],
                              p = cs_kr[, "Pr(>|t|)"]),
    vcov = unname(as.matrix(vcov(m))), vcov_adjusted = unname(Va)
  )
  writeLines(toJSON(res, digits = NA, auto_unbox = TRUE, matrix = "rowmajor"),
             file.path(out, paste0(cs$name, ".json")))
}

# contest: a two-row contrast and a one-row contrast on the crossed model
m <- lmerTest::lmer(y ~ cond * x + (1 + x | subj) + (1 | item), data = d, REML = TRUE, control = ctrl)
L2 <- rbind(c(0, 1, -1, 0, 0, 0), c(0, 0, 0, 1, 0.5, 0.5))
L1 <- c(0, 1, 0, 0.5, 0, 0)
ct <- list(
  L2 = L2, L1 = L1,
  md_satterthwaite = as.list(contestMD(m, L2, ddf = "Satterthwaite")),
  md_kenward_roger = as.list(contestMD(m, L2, ddf = "Kenward-Roger")),
  d1_satterthwaite = as.list(contest1D(m, L1, ddf = "Satterthwaite")),
  d1_kenward_roger = as.list(contest1D(m, L1, ddf = "Kenward-Roger"))
)
writeLines(toJSON(ct, digits = NA, auto_unbox = TRUE, matrix = "rowmajor"), file.path(out, "contest_crossed.json"))

# KRmodcomp: nested fixed parts (the large model's covariance), one and several df
krcases <- list(
  list(name = "krmodcomp_crossed_cond", data = "crossed", large = "y ~ cond * x + (1 + x | subj) + (1 | item)",
       small = "y ~ x + (1 + x | subj) + (1 | item)"),
  list(name = "krmodcomp_crossed_x", data = "crossed", large = "y ~ cond + x + (1 | subj) + (1 | item)",
       small = "y ~ cond + (1 | subj) + (1 | item)"),
  list(name = "krmodcomp_sleepstudy", data = "sleepstudy", large = "Reaction ~ Days + (Days | Subject)",
       small = "Reaction ~ 1 + (Days | Subject)")
)
for (kc in krcases) {
  large <- lme4::lmer(as.formula(kc$large), data = datasets[[kc$data]], REML = TRUE, control = ctrl)
  small <- lme4::lmer(as.formula(kc$small), data = datasets[[kc$data]], REML = TRUE, control = ctrl)
  k <- KRmodcomp(large, small)
  res <- list(data = kc$data, large = kc$large, small = kc$small,
              F = k$test["Ftest", "stat"], ndf = k$test["Ftest", "ndf"], ddf = k$test["Ftest", "ddf"],
              F_scaling = k$test["Ftest", "F.scaling"], p = k$test["Ftest", "p.value"],
              F_unscaled = k$test["FtestU", "stat"])
  writeLines(toJSON(res, digits = NA, auto_unbox = TRUE), file.path(out, paste0(kc$name, ".json")))
}

# profile confidence intervals (lme4's default names, oldNames = FALSE)
pcases <- list(
  list(name = "profile_sleepstudy", data = "sleepstudy", formula = "Reaction ~ Days + (Days | Subject)", REML = TRUE),
  list(name = "profile_sleepstudy_ml", data = "sleepstudy", formula = "Reaction ~ Days + (Days | Subject)", REML = FALSE),
  list(name = "profile_crossed", data = "crossed", formula = "y ~ cond + x + (1 | subj) + (1 | item)", REML = TRUE),
  list(name = "profile_sleepstudy_dblbar", data = "sleepstudy",
       formula = "Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)", REML = TRUE)
)
for (pc in pcases) {
  m <- lme4::lmer(as.formula(pc$formula), data = datasets[[pc$data]], REML = pc$REML, control = ctrl)
  ci <- confint(m, method = "profile", level = 0.95, oldNames = FALSE)
  ci90 <- confint(m, method = "profile", level = 0.90, oldNames = FALSE)
  res <- list(formula = pc$formula, data = pc$data, REML = pc$REML, names = rownames(ci),
              lower = unname(ci[, 1]), upper = unname(ci[, 2]),
              lower90 = unname(ci90[, 1]), upper90 = unname(ci90[, 2]))
  writeLines(toJSON(res, digits = NA, auto_unbox = TRUE), file.path(out, paste0(pc$name, ".json")))
}
