"""icmix: in-context learning of latent mixture models.

The flow of the library: tasks -> predictors (estimators, trained and constructed
transformers) -> metrics -> experiments -> figures.

- ``icmix.tasks``: ``MTDTask``, ``MixLinRegTask``.
- ``icmix.families``: task families (``TaskFamily``, ``register_family``, ``get_family``): the unit of
  extension; each names its predictors and its Bayes-optimal one.
- ``icmix.predictors``: ``Key``, the predictor protocols, ``LagPredictor``, ``TunedMirrorDescent``,
  ``RegressionPredictor``; ``icmix.train.TrainedPredictor`` makes a finished run one.
- ``icmix.estimators.mtd``: ``mirror_descent``, ``em``, ``bayes_exact``, ``bayes_gibbs``, ``predictive``.
- ``icmix.estimators.regression``: ``posterior_mean``, ``argmin``, ``ols``, ``ridge``, ``batch_em``.
- ``icmix.metrics``: ``kl_divergence``, ``mean_ci``, ``normalised_mse``.
- ``icmix.evaluate``: predictors x task x lengths -> tidy table with intervals.
- ``icmix.experiments``: one ``Figure`` per paper figure (``compute`` -> tables, ``draw`` -> figure, its
  claims declared with ``Figure.claim``), ``get_figure``, ``register_figure``.
- ``icmix.plugins``: modules from outside the package (entry points, ``icmix --plugin``).
"""

__version__ = "0.1.0"
__all__ = ["MTDTask", "MixLinRegTask", "__version__"]


def __getattr__(name: str):
    # The tasks (and torch) load when first asked for, so that the command line answers
    # ``icmix --help`` and ``icmix zoo list`` without them.
    if name in ("MTDTask", "MixLinRegTask"):
        from icmix import tasks

        return getattr(tasks, name)
    raise AttributeError(f"module 'icmix' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"MTDTask", "MixLinRegTask"})
