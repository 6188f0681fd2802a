"""Estimators: the classical algorithms every transformer is compared against."""

from icmix.estimators import mtd, regression

__all__ = ["mtd", "regression"]
