"""The MTD lag estimators' names and what each computes, without their code (or torch): the
command line lists them in its help at once.  ``icmix.families.mtd.LAG_ESTIMATORS`` pairs each
with its function."""

LAG_ESTIMATOR_HELP: dict[str, str] = {
    "md": "--steps steps of mirror descent at --eta (or --beta) from λ = 1/m",
    "em": "the MLE, by EM run to convergence (at most --max-iter iterations)",
    "em-steps": "--steps iterations of EM from λ = 1/m, stopped early (a regulariser, like k-step MD)",
    "bayes-exact": "the posterior mean under a Dirichlet(--alpha) prior, exactly",
    "bayes-gibbs": "the posterior mean under a Dirichlet(--alpha) prior, by Gibbs sampling",
}
