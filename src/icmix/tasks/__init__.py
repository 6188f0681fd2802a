"""Tasks: samplers that know their ground truth."""

from icmix.tasks.mtd import MTDTask
from icmix.tasks.regression import MixLinRegTask

__all__ = ["MTDTask", "MixLinRegTask"]
