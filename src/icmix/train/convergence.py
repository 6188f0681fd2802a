"""Has a training run converged?  Read off its ``metrics.jsonl``.

A run's *progress metric* is its objective's ``progress_metric`` (``eval_kl`` for next-token
tasks, ``eval_nmse_last`` for regression) in excess of the Bayes-optimal value on the same
evaluation batch (``Objective.optimum``: exact Bayes for MTD, the posterior mean for regression),
so that an irreducible floor does not hide what is left to learn.

The rule asks what doubling the budget did: the excess at the end of the run against the excess
at half its steps, each the mean of the evaluations in the ``WINDOW`` (10 %) of steps before it.
The run counts as *converged* when that fall is under ``TOLERANCE`` (5 %) of the excess at half
the steps, or within its 95 % interval (the evaluations' spread around each end: what the
weights' noise at a constant learning rate moves it by).  This needs a learning rate that is
constant over the second half: under a cosine or linear schedule the rate anneals there, and the
excess falls because it anneals (32 of the 40 cpu zoo runs "improved" by more than 5 % in their
last 20 %), whatever more steps would bring.  Such runs (every preset's: they are cosine) read
``unknown``; the claims measured at several budgets are judged on their scaling data instead
(``icmix.experiments.scaling``: doubling the budget, each budget its own runs).

The optimum comes from the run's task family (its Bayes-optimal predictor, through
``Objective.optimum``).  A family that has none (real text, or a plugin family that names no
Bayes predictor) cannot say how far a run is from the best: its runs' convergence is
``unknown``, never ``yes``.

The threshold is one statement, used by the claims table and the report (``DEFINITION``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

WINDOW = 0.1
TOLERANCE = 0.05
DEFINITION = (f"a run is converged when doubling its steps lowered its eval metric's excess over the Bayes-optimal "
              f"value on the same evaluation batch (KL for MTD, NMSE for regression) by less than {TOLERANCE:.0%}, or "
              f"by less than the 95 % interval of that change (the excess at the end against the excess at half the "
              f"steps, each averaged over the evaluations of the {WINDOW:.0%} of steps before it), at a learning rate "
              f"constant over the second half; unknown where the rate was annealing there (a cosine or linear "
              f"schedule: its tail falls because it anneals) or the task family has no Bayes-optimal predictor")
YES, NO, UNKNOWN = "yes", "no", "unknown"


@dataclass(frozen=True)
class Convergence:
    """The progress metric of one run around half its steps (``start``, at ``start_step``) and
    around its end (``end``), each averaged over ``WINDOW``; ``final``: the last evaluation (the
    run's weights); ``interval``: the 95 % half-width of ``start - end``; ``constant``: whether
    the learning rate was constant over the second half."""

    metric: str
    optimum: float | None  # None: the family has no Bayes-optimal predictor
    start_step: int
    steps: int
    start: float
    final: float
    end: float | None = None  # None: the last evaluation
    interval: float = 0.0
    constant: bool = True
    tolerance: float = TOLERANCE

    @property
    def fall(self) -> float:
        """How much doubling the steps lowered the metric (``start - end``)."""
        return self.start - (self.final if self.end is None else self.end)

    @property
    def improvement(self) -> float:
        """The relative fall of the excess from half the steps to the end:
        ``(start - end) / (start - optimum)`` (NaN without an optimum)."""
        if self.optimum is None:
            return float("nan")
        excess = self.start - self.optimum
        return self.fall / excess if excess > 0 else 0.0

    @property
    def excess(self) -> float:
        """The final value's excess over the optimum (NaN without an optimum)."""
        return float("nan") if self.optimum is None else self.final - self.optimum

    @property
    def converged(self) -> bool | None:
        """Whether the run converged; ``None`` (unknown) without an optimum or under an annealed rate."""
        if self.optimum is None or not self.constant:
            return None
        return self.improvement < self.tolerance or self.fall <= self.interval

    @property
    def status(self) -> str:
        """``yes``, ``no`` or ``unknown``: what tables show."""
        return UNKNOWN if self.converged is None else YES if self.converged else NO

    @property
    def why(self) -> str:
        """What decided ``status``, in words."""
        if self.optimum is None:
            return "no Bayes-optimal predictor to measure the excess against"
        if not self.constant:
            return "the learning rate anneals over the second half: its tail cannot tell"
        return (f"doubling the steps lowered the excess by {self.improvement:.1%} "
                f"({self.fall:.3g}, 95 % interval ±{self.interval:.2g})")

    def as_dict(self) -> dict:
        """The fields plus ``excess_final``, ``improvement`` and ``converged`` (``status``: yes, no
        or unknown), as tables and the zoo record them."""
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
    from icmix.train.loop import build_objective, build_task, evaluation_batch

    # The evaluation batch depends on the task, its size, the seed and (a curriculum) the steps,
    # not on the model: models trained on one task share it.
    key = repr((cfg.task, cfg.eval_size, cfg.seed, cfg.steps))
    if key not in _OPTIMA:
        objective = build_objective(build_task(cfg), cfg)
        value = objective.optimum(evaluation_batch(objective, cfg))
        _OPTIMA[key] = None if value is None else float(value)
    return _OPTIMA[key]


def welch_interval(a, b) -> float:
    """The 95 % half-width of ``mean(a) - mean(b)`` (Welch: a Student-t quantile at the
    Welch–Satterthwaite degrees of freedom); 0 where either side has fewer than 2 values."""
    import numpy as np
    from scipy import stats

    if min(len(a), len(b)) < 2:
        return 0.0
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    if va + vb == 0:
        return 0.0
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return float(stats.t.ppf(0.975, df) * np.sqrt(va + vb))


def run_convergence(run: str | Path, window: float = WINDOW, tolerance: float = TOLERANCE) -> Convergence:
    """The ``Convergence`` of the finished run directory ``run``.

    Raises ``ValueError`` if the run has no config, no metrics, has not finished (its last
    evaluation is not at its last step: an interrupted run is not judged), or has no evaluation
    at or before half its steps."""
    import numpy as np

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
    half = cfg.steps / 2
    before = [r for r in rows if r["step"] <= half]
    if not before:
        raise ValueError(f"{run}: no {metric} at or before step {half:.0f} (half its steps)")
    middle = before[-1]["step"]

    def around(step: float) -> np.ndarray:  # the evaluations of the window ending at `step`
        return np.array([r[metric] for r in rows if step - window * cfg.steps < r["step"] <= step], dtype=float)

    a, b = around(middle), around(cfg.steps)
    interval = welch_interval(a, b)
    constant = cfg.optim.schedule == "constant" and cfg.optim.warmup_steps <= middle
    return Convergence(metric, _optimum(cfg), int(middle), int(rows[-1]["step"]), float(a.mean()),
                       float(rows[-1][metric]), float(b.mean()), interval, constant, tolerance)
