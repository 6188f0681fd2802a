"""Trainable models that expose their attention patterns and name their stream blocks."""

from icmix.models.disentangled import DisentangledConfig, DisentangledTransformer, StreamLayout

__all__ = ["DisentangledConfig", "DisentangledTransformer", "StreamLayout"]
