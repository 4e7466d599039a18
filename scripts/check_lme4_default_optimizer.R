# Where lme4's default optimiser (nloptwrap) stops on the seed data, against bobyqa: the figures quoted in
# README.md and benchmarks/RESULTS.md.  Run: Rscript scripts/check_lme4_default_optimizer.R
suppressMessages(library(lme4))
d <- read.csv("jaxlmm/data/seed.csv")
d$Group <- factor(d$Group)
bobyqa <- lmerControl(optimizer = "bobyqa")
report <- function(label, default, best) {
  cat(sprintf("%-48s default %.4f (isSingular %s)   bobyqa %.4f\n", label, deviance(default),
              isSingular(default), deviance(best)))
}
f2 <- y ~ x + (1 | Group) + (0 + x | Group)
f3 <- y ~ x + (1 + x | Group)
report("lmm2 by ML, deviance", suppressWarnings(lmer(f2, d, REML = FALSE)), lmer(f2, d, REML = FALSE, control = bobyqa))
report("lmm3 by REML refitted by ML (as anova does)", refitML(lmer(f3, d)), refitML(lmer(f3, d, control = bobyqa)))
report("lmm3 fitted by ML directly", suppressWarnings(lmer(f3, d, REML = FALSE)),
       lmer(f3, d, REML = FALSE, control = bobyqa))
