"""The field's classic in-context-learning testbeds, beside the two papers' systems.

- ``linreg``: linear regression in context (Garg et al. 2022), with its optimal and classic
  baselines (``icmix.testbeds.linreg``);
- ``markov``: random Markov chains in context, the testbed of statistical induction heads
  (Edelman et al. 2024), with its uniform, unigram and bigram predictors (``icmix.testbeds.markov``);
- ``lsa``: the linear self-attention layer built to perform one step of gradient descent on the
  ``linreg`` prompts (von Oswald et al. 2023), ``linreg``'s ``lsa_gd`` predictor (``icmix.testbeds.lsa``).

Each testbed is a task family (and, in time, a figure with its claims) that reaches icmix only
through its plugin seams: the package's own entry points in the ``icmix.families`` and
``icmix.figures`` groups, exactly as another distribution's plugin would.  Nothing in
``icmix`` imports this package; the registries find it.
"""
