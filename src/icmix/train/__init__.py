"""Training: one loop for every task and model (config -> run directory -> predictor)."""

from icmix.train.config import ModelSpec, OptimConfig, TaskSpec, TrainConfig
from icmix.train.loop import build_model, build_task, fine_tune, load_run, train, train_many

__all__ = ["ModelSpec", "OptimConfig", "TaskSpec", "TrainConfig", "build_model", "build_task", "fine_tune", "load_run", "train", "train_many"]
