"""Training: one loop for every task and model (config -> run directory -> predictor).

The names below load their module (and torch) when first asked for, so that what needs only
the launchers or the convergence rule's statement (the command line's parser) starts at once."""

import importlib

_HOMES = {
    "config": ["ModelSpec", "OptimConfig", "TaskSpec", "TrainConfig"],
    "launch": ["Launcher", "make_launcher"],
    "loop": ["TrainState", "build_model", "build_objective", "build_task", "evaluate", "evaluation_batch", "fine_tune", "load_run",
             "restore", "train", "train_many", "train_step", "write_checkpoint"],
    "predictors": ["TrainedPredictor", "TrainedRegressor", "trained_key"],
}
_MODULE = {name: module for module, names in _HOMES.items() for name in names}

__all__ = sorted(_MODULE)


def __getattr__(name: str):
    module = _MODULE.get(name)
    if module is None:
        raise AttributeError(f"module 'icmix.train' has no attribute {name!r}")
    # not cached here: a name patched in its module (tests) is what this one gives, and stays so
    return getattr(importlib.import_module(f"icmix.train.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE))
