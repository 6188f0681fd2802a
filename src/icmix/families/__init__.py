"""Task families, the unit of extension: each knows its spec, task, training objective,
standard predictors and run-name fragment (``TaskFamily``), and registers under its kind.

    from icmix.families import TaskFamily, register_family, get_family
"""

from icmix.families.base import (NextTokenObjective, Objective, RegressionFamily, SequenceFamily, TaskFamily, families,
                                 get_family, register_family)

__all__ = ["NextTokenObjective", "Objective", "RegressionFamily", "SequenceFamily", "TaskFamily", "families",
           "get_family", "register_family"]
