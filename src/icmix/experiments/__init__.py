"""Experiments: one module per paper figure, each with a frozen ``Config``, ``PRESETS``,
``compute(cfg) -> table`` and ``draw(table) -> figure``.  ``REGISTRY`` maps the names used
by ``icmix reproduce`` to their modules."""

from icmix.experiments import constructions, mlr_fig2, mlr_fig3, mlr_fig4, mlr_shifts, mtd_fig3, mtd_fig4, mtd_fig5, mtd_fig7, mtd_orders

REGISTRY = {
    "mtd-construction": constructions.mtd_construction,
    "mtd-fig3": mtd_fig3,
    "mtd-fig4": mtd_fig4,
    "mtd-fig5": mtd_fig5,
    "mtd-fig6": mtd_orders.fig6,
    "mtd-fig7": mtd_fig7,
    "mtd-fig8": mtd_orders.fig8,
    "mlr-construction": constructions.mlr_construction,
    "mlr-fig2": mlr_fig2,
    "mlr-fig3": mlr_fig3,
    "mlr-fig4": mlr_fig4,
    **mlr_shifts.figures,
}

__all__ = ["REGISTRY"]
