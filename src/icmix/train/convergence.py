"""Has a training run converged?  Read off its ``metrics.jsonl``.

A run's *progress metric* is its objective's ``progress_metric`` (``eval_kl`` for next-token
tasks, ``eval_nmse_last`` for regression) in excess of the Bayes-optimal value on the same
evaluation batch (``Objective.optimum``: exact Bayes for MTD, the posterior mean for regression),
so that an irreducible floor does not hide what is left to learn.  The run counts as
*converged* when that excess improved by less than ``TOLERANCE`` (5 %) of its value over the
last ``TAIL`` (20 %) of training: between the evaluation at 80 % of the steps and the last.

The threshold is one statement, used by the claims table and the report (``DEFINITION``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

TAIL = 0.2
TOLERANCE = 0.05
DEFINITION = (f"a run is converged when its eval metric's excess over the Bayes-optimal value on the same "
              f"evaluation batch (KL for MTD, NMSE for regression) improved by less than {TOLERANCE:.0%} over "
              f"the last {TAIL:.0%} of its training steps")


@dataclass(frozen=True)
class Convergence:
    """The progress metric of one run at ``(1 - TAIL)`` of training (``start``) and at the end."""

    metric: str
    optimum: float
    start_step: int
    steps: int
    start: float
    final: float
    tolerance: float = TOLERANCE

    @property
    def improvement(self) -> float:
        """The relative fall of the excess over the tail: ``(start - final) / (start - optimum)``."""
        excess = self.start - self.optimum
        return (self.start - self.final) / excess if excess > 0 else 0.0

    @property
    def converged(self) -> bool:
        return self.improvement < self.tolerance

    def as_dict(self) -> dict:
        return {**asdict(self), "excess_final": self.final - self.optimum, "improvement": self.improvement,
                "converged": self.converged}


def progress_metric(cfg) -> str:
    """The eval metric a run of the training config ``cfg`` is judged by (its objective's)."""
    from icmix.train.loop import build_objective, build_task

    return build_objective(build_task(cfg), cfg).progress_metric


_OPTIMA: dict[str, float] = {}  # what the eval batch depends on -> optimum (runs share eval batches)


def _optimum(cfg) -> float:
    """The objective's optimum on the run's evaluation batch (0 where the family has none)."""
    from icmix.random import Stream, stream
    from icmix.train.loop import build_objective, build_task

    # The evaluation batch depends on the task, its size, the seed and (a curriculum) the steps,
    # not on the model: models trained on one task share it.
    key = repr((cfg.task, cfg.eval_size, cfg.seed, cfg.steps))
    if key not in _OPTIMA:
        objective = build_objective(build_task(cfg), cfg)
        value = objective.optimum(objective.eval_batch(cfg.eval_size, stream(cfg.seed, Stream.TRAINING_EVALUATION)))
        _OPTIMA[key] = 0.0 if value is None else float(value)
    return _OPTIMA[key]


def run_convergence(run: str | Path, tail: float = TAIL, tolerance: float = TOLERANCE) -> Convergence:
    """The ``Convergence`` of the finished run directory ``run``.

    Raises ``ValueError`` if the run has no config, no metrics, has not finished (its last
    evaluation is not at its last step: an interrupted run is not judged), or has no evaluation
    at or before ``(1 - tail)`` of its steps."""
    from icmix.train import TrainConfig

    run = Path(run)
    if not (run / "config.yaml").exists() or not (run / "metrics.jsonl").exists():
        raise ValueError(f"{run} is not a training run with metrics (config.yaml, metrics.jsonl)")
    cfg = TrainConfig.from_yaml(run / "config.yaml")
    metric = progress_metric(cfg)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if metric in r]
    if not rows or rows[-1]["step"] != cfg.steps:
        done = rows[-1]["step"] if rows else 0
        raise ValueError(f"{run} has not finished: its last {metric} is at step {done} of {cfg.steps}")
    cut = (1 - tail) * cfg.steps
    before = [r for r in rows if r["step"] <= cut]
    if not before:
        raise ValueError(f"{run}: no {metric} at or before step {cut:.0f}")
    start, final = before[-1], rows[-1]
    return Convergence(metric, _optimum(cfg), int(start["step"]), int(final["step"]), float(start[metric]),
                       float(final[metric]), tolerance)
