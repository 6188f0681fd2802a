"""Experiments: one module per paper figure, each with a frozen ``Config``, ``PRESETS``,
``compute(cfg) -> table`` and ``draw(table) -> figure``.  ``REGISTRY`` maps the names used
by ``icmix reproduce`` to their modules."""

from icmix.experiments import mtd_fig3, mtd_fig4

REGISTRY = {
    "mtd-fig3": mtd_fig3,
    "mtd-fig4": mtd_fig4,
}

__all__ = ["REGISTRY"]
