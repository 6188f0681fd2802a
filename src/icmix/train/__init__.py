"""Training: one loop for every task and model (config -> run directory -> predictor)."""

from icmix.train.config import ModelSpec, OptimConfig, TaskSpec, TrainConfig
from icmix.train.launch import Launcher, make_launcher
from icmix.train.loop import (TrainState, build_model, build_objective, build_task, evaluate, fine_tune, load_run,
                              restore, train, train_many, train_step, write_checkpoint)
from icmix.train.predictors import TrainedPredictor, TrainedRegressor, trained_key

__all__ = ["Launcher", "ModelSpec", "OptimConfig", "TaskSpec", "TrainConfig", "TrainState", "TrainedPredictor", "TrainedRegressor", "build_model", "build_objective",
           "build_task", "evaluate", "fine_tune", "load_run", "restore", "train", "train_many", "train_step",
           "trained_key", "make_launcher", "write_checkpoint"]
