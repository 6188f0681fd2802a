"""Interpretability tools for every icmix model: hook points by name, activation caches, hooks
that ablate or patch, and circuit scores."""

from icmix.interp.hooks import ActivationCache, hook_names, hook_points, hooks, run_with_cache, run_with_hooks, select
from icmix.interp.scores import (activation_patching, attention_patterns, construction_agreement, head_scores,
                                 induction_score, offset_mass, offset_profile, previous_token_score, repeated_sequences)

__all__ = ["ActivationCache", "activation_patching", "attention_patterns", "construction_agreement", "head_scores",
           "hook_names", "hook_points", "hooks", "induction_score", "offset_mass", "offset_profile",
           "previous_token_score", "repeated_sequences", "run_with_cache", "run_with_hooks", "select"]
