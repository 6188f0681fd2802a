"""Trainable models that expose their attention patterns (and, for the disentangled one,
name their stream blocks).  ``MODELS`` maps a config ``kind`` to (config class, model class)."""

from icmix.models.disentangled import DisentangledConfig, DisentangledTransformer, StreamLayout
from icmix.models.gpt import GPTConfig, GPTTransformer, RegressionGPT, RegressionGPTConfig

MODELS = {
    "disentangled": (DisentangledConfig, DisentangledTransformer),
    "gpt": (GPTConfig, GPTTransformer),
    "gpt-regression": (RegressionGPTConfig, RegressionGPT),
}

__all__ = ["MODELS", "DisentangledConfig", "DisentangledTransformer", "GPTConfig", "GPTTransformer", "RegressionGPT", "RegressionGPTConfig",
           "StreamLayout"]
