"""Trainable models that expose their attention patterns (and, for the disentangled one,
name their stream blocks).  ``MODELS`` maps a config ``kind`` to (config class, model class);
a plugin adds its own with ``register_model`` as its family's module is imported (a family lists
the model kinds that learn it, so a config of the family finds its model)."""

from icmix.models.disentangled import DisentangledConfig, DisentangledTransformer, StreamLayout
from icmix.models.gpt import GPTConfig, GPTTransformer, RegressionGPT, RegressionGPTConfig

MODELS = {
    "disentangled": (DisentangledConfig, DisentangledTransformer),
    "gpt": (GPTConfig, GPTTransformer),
    "gpt-regression": (RegressionGPTConfig, RegressionGPT),
}



def register_model(kind: str, config_class: type, model_class: type, replace: bool = False) -> None:
    """Register the model ``kind``: ``config_class`` (a frozen dataclass with ``from_dict``) and
    ``model_class`` (an ``icmix.models.base.Pretrained`` built from it).  ``ValueError`` if the kind
    is taken by other classes (``replace=True`` replaces them; the same classes again, as a
    re-imported module registers them, are accepted)."""
    from icmix.models.base import Pretrained

    if not (isinstance(model_class, type) and issubclass(model_class, Pretrained)):
        raise ValueError(f"a model class must subclass icmix.models.base.Pretrained, got {model_class!r}")
    if not hasattr(config_class, "from_dict"):
        raise ValueError(f"model config {config_class!r} has no from_dict")
    taken = MODELS.get(kind)
    def where(c: type) -> tuple[str, str]:
        return c.__module__, c.__qualname__

    if taken is not None and not replace and (where(taken[0]), where(taken[1])) != (where(config_class),
                                                                                    where(model_class)):
        raise ValueError(f"a model kind {kind!r} is already registered ({taken[1].__name__}); pass replace=True to "
                         "replace it")
    MODELS[kind] = (config_class, model_class)


__all__ = ["MODELS", "register_model", "DisentangledConfig", "DisentangledTransformer", "GPTConfig", "GPTTransformer", "RegressionGPT", "RegressionGPTConfig",
           "StreamLayout"]
