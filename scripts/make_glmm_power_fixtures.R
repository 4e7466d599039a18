#!/usr/bin/env Rscript
# Brute-force lme4 glmer power simulations for tests/test_glmm_power.py (jaxlmm.power of a glmer pilot).
# Usage (from the repository root): Rscript scripts/make_glmm_power_fixtures.R [nsim]
# Writes tests/fixtures/glmm_power/:
#   pilot.csv     a crossed 12 subjects x 12 items pilot: a two-level condition within subjects and items
#                 (counterbalanced), a three-level item factor `freq`, a 0/1 response `acc` and a count `n`
#   <case>.json   per case (binomial: acc ~ cond + freq + (1|subj) + (1|item); poisson: n ~ cond +
#                 (1|subj) + (1|item)): the truth (beta, theta) the simulations use, then nsim responses
#                 simulated by lme4's simulate() at the truth, each refitted by glmer (bobyqa) with and
#                 without each term (LRT via anova: chi-square with the term's df) and the Wald z of the
#                 single coefficient (Wald chi-square for a factor); the power of each test, and for the
#                 first `keep` responses the responses themselves and every per-response statistic
suppressPackageStartupMessages({ library(lme4); library(jsonlite) })
args <- commandArgs(trailingOnly = TRUE)
nsim <- if (length(args)) as.integer(args[1]) else 600L
keep <- 30L
out <- "tests/fixtures/glmm_power"
dir.create(out, recursive = TRUE, showWarnings = FALSE)

set.seed(20261126)
S <- 12; I <- 12
pilot <- expand.grid(item = sprintf("I%02d", 1:I), subj = sprintf("S%02d", 1:S), stringsAsFactors = FALSE)[, c("subj", "item")]
si <- as.integer(factor(pilot$subj)); ii <- as.integer(factor(pilot$item))
pilot$cond <- ifelse((si + ii) %% 2 == 0, "a", "b")
pilot$freq <- c("lo", "mid", "hi")[(ii - 1) %% 3 + 1]
eta <- -0.3 + 0.7 * (pilot$cond == "b") + 0.4 * (pilot$freq == "hi") + rnorm(S, sd = 0.8)[si] + rnorm(I, sd = 0.5)[ii]
pilot$acc <- rbinom(nrow(pilot), 1, plogis(eta))
pilot$n <- rpois(nrow(pilot), exp(0.5 + 0.3 * (pilot$cond == "b") + rnorm(S, sd = 0.4)[si] + rnorm(I, sd = 0.3)[ii]))
write.csv(pilot, file.path(out, "pilot.csv"), row.names = FALSE)
pilot <- read.csv(file.path(out, "pilot.csv"))
pilot$freq <- factor(pilot$freq, levels = c("lo", "mid", "hi"))
ctrl <- glmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5))

run_case <- function(name, form, family, beta, theta, tests) {
  m <- glmer(form, pilot, family = family, control = ctrl)
  reduced <- lapply(tests, function(t) update(m, as.formula(paste(". ~ . -", t$term))))
  Y <- simulate(m, nsim = nsim, seed = 7, newparams = list(beta = beta, theta = theta))
  rows <- vector("list", nsim)
  for (k in seq_len(nsim)) {
    y <- Y[[k]]
    full <- suppressWarnings(suppressMessages(refit(m, newresp = y)))
    V <- as.matrix(vcov(full)); b <- fixef(full)
    r <- list(dev_full = as.numeric(-2 * logLik(full)), singular_full = isSingular(full))
    for (j in seq_along(tests)) {
      t <- tests[[j]]
      small <- suppressWarnings(suppressMessages(refit(reduced[[j]], newresp = y)))
      a <- anova(small, full)
      cols <- t$columns
      w <- as.numeric(t(b[cols]) %*% solve(V[cols, cols, drop = FALSE]) %*% b[cols])
      r[[paste0("lrt_", t$term)]] <- a$Chisq[2]
      r[[paste0("p_lrt_", t$term)]] <- a[["Pr(>Chisq)"]][2]
      r[[paste0("wald_", t$term)]] <- w
      r[[paste0("p_z_", t$term)]] <- pchisq(w, length(cols), lower.tail = FALSE)
      r[[paste0("singular_", t$term)]] <- isSingular(small)
    }
    rows[[k]] <- as.data.frame(r)
  }
  res <- do.call(rbind, rows)
  power <- list()
  for (t in tests) for (test in c("lrt", "z")) {
    p <- res[[paste0("p_", test, "_", t$term)]]
    power[[paste(t$term, test)]] <- list(term = t$term, test = test, successes = sum(p < 0.05, na.rm = TRUE),
                                        n_valid = sum(is.finite(p)), power = mean(p < 0.05, na.rm = TRUE))
  }
  responses <- as.matrix(as.data.frame(Y)[, seq_len(min(keep, nsim))])
  write_json(list(formula = deparse(form), family = family, nsim = nsim, beta = unname(beta), theta = unname(theta),
                  fixef_names = names(fixef(m)), pilot_beta = unname(fixef(m)), pilot_theta = unname(getME(m, "theta")),
                  power = unname(power), responses = unname(split(responses, col(responses))),
                  per_response = res[seq_len(min(keep, nsim)), ], n_singular_full = sum(res$singular_full)),
             file.path(out, paste0(name, ".json")), digits = NA, auto_unbox = TRUE)
  cat(name, "\n"); print(do.call(rbind, lapply(power, as.data.frame)))
}

run_case("binomial", acc ~ cond + freq + (1 | subj) + (1 | item), "binomial", beta = c(-0.3, 0.6, 0.1, 0.5),
         theta = c(0.8, 0.5), tests = list(list(term = "cond", columns = 2), list(term = "freq", columns = 3:4)))
run_case("poisson", n ~ cond + (1 | subj) + (1 | item), "poisson", beta = c(0.5, 0.12), theta = c(0.4, 0.3),
         tests = list(list(term = "cond", columns = 2)))
