"""Estimators: the classical algorithms every transformer is compared against."""

from icmix.estimators import mtd

__all__ = ["mtd"]
