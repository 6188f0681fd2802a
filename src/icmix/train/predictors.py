"""A finished training run as a predictor: ``TrainedPredictor`` (sequence families) and
``TrainedRegressor`` (regression), with the key of a trained model (``trained_key``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from icmix.models import RegressionGPT
from icmix.objectives import to_distribution
from icmix.predictors import Key
from icmix.train.loop import build_task, load_run


@dataclass
class TrainedPredictor:
    """A trained model (a finished run directory) as a sequence predictor.

    Its output at position ``L - 1`` is the prediction after the prefix of length ``L``,
    mapped to a distribution as its training loss implies (see ``icmix.objectives``).  It
    refuses a task other than the one it was trained on (its family's ``same_task``).
    """

    name: str
    model: torch.nn.Module
    loss: str
    task: object
    family: object
    batch_size: int = 256
    key: Key = Key("trained")

    @classmethod
    def from_run(cls, run_dir, name: str | None = None, key: Key | None = None) -> TrainedPredictor:
        """The final model of a finished run; its key is the model's kind, depth and loss
        (``trained_key``) unless ``key`` is given (two runs of one model kind in one table)."""

        cfg, model = load_run(run_dir)
        model.eval()
        return cls(name or f"trained {cfg.model.kind} ({Path(run_dir).name})", model, cfg.loss, build_task(cfg),
                   cfg.family, key=key or trained_key(cfg))

    def outputs(self, tokens: Tensor) -> Tensor:
        """Raw model outputs ``(B, T, Q)``, in batches, without gradients."""
        param = next(self.model.parameters())
        chunks = []
        with torch.no_grad():
            for start in range(0, tokens.shape[0], self.batch_size):
                chunks.append(self.model(tokens[start : start + self.batch_size].to(param.device)).double().cpu())
        return torch.cat(chunks)

    def predict(self, tokens: Tensor, task, lengths: Sequence[int]) -> Tensor:
        """``(B, P, Q)`` float64: the model's output at position ``L - 1`` for each length ``L``, read
        as a distribution as its training loss implies; ``ValueError`` for a task other than its own."""
        if not self.family.same_task(task, self.task):
            raise ValueError(f"{self.name} was trained on a different task ({self.task!r}), not {task!r}")
        lengths = list(lengths)
        out = self.outputs(tokens[:, : max(lengths)])
        return to_distribution(out[:, torch.tensor(lengths) - 1], self.loss)


def trained_key(cfg) -> Key:
    """The key of a trained model: its kind, depth and loss."""
    return Key("trained", model_kind=cfg.model.kind, depth=getattr(cfg.model_config(), "n_layers", None), loss=cfg.loss)


@dataclass
class TrainedRegressor:
    """A finished regression training run as a predictor (float32 model, float64 output)."""

    name: str
    model: torch.nn.Module
    batch_size: int = 512
    key: Key = Key("trained")

    @classmethod
    def from_run(cls, run_dir, name: str | None = None, key: Key | None = None) -> TrainedRegressor:
        """The final model of a finished regression run (``ValueError`` if it is not a
        ``RegressionGPT``); its key as in ``TrainedPredictor.from_run``."""
        cfg, model = load_run(run_dir)
        if not isinstance(model, RegressionGPT):
            raise ValueError(f"{run_dir} holds a {cfg.model.kind!r} model, not a regression transformer")
        return cls(name or f"transformer ({Path(run_dir).name})", model.eval(), key=key or trained_key(cfg))

    def predict(self, xs: Tensor, ys: Tensor) -> Tensor:
        """``(B, N)`` float64, column j predicting ``ys[:, j]`` from the pairs before it and
        ``xs[:, j]``; computed in batches of ``batch_size`` on the model's device, without gradients."""
        param = next(self.model.parameters())
        out = []
        with torch.no_grad():
            for s in range(0, xs.shape[0], self.batch_size):
                x, y = xs[s : s + self.batch_size].to(param.device), ys[s : s + self.batch_size].to(param.device)
                out.append(self.model(x, y).double().cpu())
        return torch.cat(out)
