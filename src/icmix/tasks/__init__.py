"""Tasks: samplers that know their ground truth."""

from icmix.tasks.mtd import MTDTask

__all__ = ["MTDTask"]
