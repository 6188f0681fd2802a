"""Has a training run converged?  Read off its ``metrics.jsonl``.

A run's *progress metric* is its objective's ``progress_metric`` (``eval_kl`` for next-token
tasks, ``eval_nmse_last`` for regression) in excess of the Bayes-optimal value on the same
evaluation batch (``Objective.optimum``: exact Bayes for MTD, the posterior mean for regression),
so that an irreducible floor does not hide what is left to learn.  The run counts as
*converged* when that excess improved by less than ``TOLERANCE`` (5 %) of its value over the
last ``TAIL`` (20 %) of training: between the evaluation at 80 % of the steps and the last.

The optimum comes from the run's task family (its Bayes-optimal predictor, through
``Objective.optimum``).  A family that has none (real text, or a plugin family that names no
Bayes predictor) cannot say how far a run is from the best: its runs' convergence is
``unknown``, never ``yes``; a plateau far above the optimum would otherwise read as converged.

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
              f"the last {TAIL:.0%} of its training steps; unknown where the task family has no Bayes-optimal "
              f"predictor to measure the excess against")
YES, NO, UNKNOWN = "yes", "no", "unknown"


@dataclass(frozen=True)
class Convergence:
    """The progress metric of one run at ``(1 - TAIL)`` of training (``start``) and at the end."""

    metric: str
    optimum: float | None  # None: the family has no Bayes-optimal predictor
    start_step: int
    steps: int
    start: float
    final: float
    tolerance: float = TOLERANCE

    @property
    def improvement(self) -> float:
        """The relative fall of the excess over the tail: ``(start - final) / (start - optimum)``
        (NaN without an optimum)."""
        if self.optimum is None:
            return float("nan")
        excess = self.start - self.optimum
        return (self.start - self.final) / excess if excess > 0 else 0.0

    @property
    def excess(self) -> float:
        """The final value's excess over the optimum (NaN without an optimum)."""
        return float("nan") if self.optimum is None else self.final - self.optimum

    @property
    def converged(self) -> bool | None:
        """Whether the run converged; ``None`` (unknown) without an optimum."""
        return None if self.optimum is None else self.improvement < self.tolerance

    @property
    def status(self) -> str:
        """``yes``, ``no`` or ``unknown``: what tables show."""
        return UNKNOWN if self.converged is None else YES if self.converged else NO

    def as_dict(self) -> dict:
        return {**asdict(self), "excess_final": self.excess, "improvement": self.improvement,
                "converged": self.status}


def combined_status(statuses) -> str:
    """One verdict for runs a result rests on: ``no`` if any is ``no``, else ``unknown`` if any
    is, else ``yes``."""
    statuses = set(statuses)
    return NO if NO in statuses else UNKNOWN if UNKNOWN in statuses or not statuses else YES


def progress_metric(cfg) -> str:
    """The eval metric a run of the training config ``cfg`` is judged by (its objective's)."""
    from icmix.train.loop import build_objective, build_task

    return build_objective(build_task(cfg), cfg).progress_metric


_OPTIMA: dict[str, float | None] = {}  # what the eval batch depends on -> optimum (runs share eval batches)


def _optimum(cfg) -> float | None:
    """The objective's optimum on the run's evaluation batch (``None`` where the family has none)."""
    from icmix.random import Stream, stream
    from icmix.train.loop import build_objective, build_task

    # The evaluation batch depends on the task, its size, the seed and (a curriculum) the steps,
    # not on the model: models trained on one task share it.
    key = repr((cfg.task, cfg.eval_size, cfg.seed, cfg.steps))
    if key not in _OPTIMA:
        objective = build_objective(build_task(cfg), cfg)
        value = objective.optimum(objective.eval_batch(cfg.eval_size, stream(cfg.seed, Stream.TRAINING_EVALUATION)))
        _OPTIMA[key] = None if value is None else float(value)
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
