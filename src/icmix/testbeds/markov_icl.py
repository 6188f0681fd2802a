"""``markov``: a 2-layer attention-only transformer learning random Markov chains in context, the
testbed of statistical induction heads (Edelman et al. 2024).

Per seed one model is trained on next-token cross-entropy over every position of ``markov``
sequences (``k`` states, ``T`` tokens), evaluated (the loss and every head's scores) every
``eval_every`` steps.  The figure shows:

- its evaluation loss against the training step, with the ``uniform``, ``unigram`` and ``bigram``
  levels (``icmix baselines`` on the same task) drawn as lines, so the plateaus show;
- each head's previous-token score and induction score (``icmix.interp``: the attention mass on
  the previous position, and on the positions that followed earlier occurrences of the current
  state) at every evaluation of training (``MarkovObjective`` logs them on the evaluation batch's
  chains), beside the mass uniform attention would put there (on the same chains).

Tables: the loss curve (``markov.csv``), the heads over training (``markov-heads.csv``) and the
final model's cross-entropy beside the predictors', on the same fresh sequences
(``markov-final.csv``).  A figure of the ``markov`` testbed registered through the
``icmix.figures`` entry point.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from icmix._checks import check_positive_int
from icmix.experiments.claims import Claim, measured
from icmix.experiments.common import trained_runs
from icmix.experiments.figure import Result, TrainedFigure
from icmix.families import get_family
from icmix.predictors import Key
from icmix.random import Stream, stream
from icmix.train import TrainConfig

NAME = "markov"
LEVELS = ("uniform", "unigram", "bigram")


@dataclass(frozen=True)
class Config:
    """Settings of ``markov``: the task (``vocab_size`` k, ``length`` T, ``alpha``), the model
    (``n_layers`` attention-only blocks of ``n_heads`` heads, width ``d_model``), the recipe
    (``steps``, ``batch_size``, ``lr`` after ``warmup_steps``, constant), an evaluation (the loss
    and the heads' scores) every ``eval_every`` steps, one run per seed, and ``n_sequences`` fresh
    sequences for the final comparison."""

    vocab_size: int = 3
    length: int = 100
    alpha: float = 1.0
    n_layers: int = 2
    n_heads: int = 1
    d_model: int = 32
    steps: int = 3000
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 100
    eval_every: int = 100
    seeds: tuple[int, ...] = (0, 1)
    n_sequences: int = 2000
    jobs: int = 1

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_every", "n_sequences", "jobs"):
            check_positive_int(name, getattr(self, name))
        if not self.seeds:
            raise ValueError("seeds must be non-empty")
        self.runs()

    def task(self) -> dict:
        """The ``markov`` task spec of every run."""
        return {"kind": "markov", "vocab_size": self.vocab_size, "length": self.length, "alpha": self.alpha}

    def runs(self) -> dict[int, TrainConfig]:
        """``seed -> TrainConfig``: the attention-only GPT, evaluated (with its heads' scores) every ``eval_every`` steps."""
        return {s: TrainConfig.from_dict({
            "task": self.task(),
            "model": {"kind": "gpt", "n_layers": self.n_layers, "n_heads": self.n_heads, "d_model": self.d_model,
                      "attn_only": True},
            "optim": {"lr": self.lr, "schedule": "constant", "warmup_steps": self.warmup_steps, "grad_clip": 1.0},
            "loss": "ce", "loss_positions": "all", "steps": self.steps, "batch_size": self.batch_size,
            "eval_every": self.eval_every, "eval_size": 512, "seed": s}) for s in self.seeds}


PRESETS = {
    # minutes on 2 cores
    "quick": Config(),
    # 4 seeds of 8000 steps (about 7 minutes each on one core of an AMD EPYC); shipped in the zoo
    "cpu": Config(steps=8000, seeds=(0, 1, 2, 3), n_sequences=4000),
}
DEMO = {"n_sequences": 2000}


def head_scores_over_training(metrics: list[dict], n_layers: int, n_heads: int) -> pd.DataFrame:
    """Each evaluation's previous-token and induction score per layer and head, as training logged
    them (``icmix.testbeds.markov.MarkovObjective``) in the rows of ``metrics.jsonl``."""
    from icmix.testbeds.markov import head_metric

    rows = []
    for r in metrics:
        if head_metric(0, 0, "induction") not in r:
            continue
        for layer in range(n_layers):
            for h in range(n_heads):
                rows.append({"step": r["step"], "layer": layer, "head": h,
                             **{s: r[head_metric(layer, h, s)] for s in ("previous_token", "induction")}})
    if not rows:
        raise ValueError("the run's metrics.jsonl holds no head scores: it was trained before training logged them "
                         "(or on chains too short to score); train it again")
    return pd.DataFrame(rows)


def uniform_attention_levels(tokens) -> dict[str, float]:
    """The previous-token and induction scores of a head attending uniformly to ``j <= i``."""
    import torch

    t = tokens.shape[1]
    uniform = torch.ones(t, t, dtype=torch.float64).tril() / torch.arange(1, t + 1, dtype=torch.float64)[:, None]
    pattern = uniform.expand(tokens.shape[0], 1, t, t)
    from icmix.interp.scores import induction_score, previous_token_score

    return {"previous_token": previous_token_score(pattern)[0].item(), "induction": induction_score(pattern, tokens)[0].item()}


class MarkovICL(TrainedFigure):
    """``markov``: the loss plateaus and the heads of attention-only transformers on random Markov chains."""

    name, Config, presets, demo = NAME, Config, PRESETS, DEMO

    def compute(self, cfg: Config, out: Path, progress: bool = True) -> Result:
        """The loss curve per seed, the heads over training, and the final comparison with the predictors."""
        from icmix.testbeds.markov import HEAD_SEQUENCES
        from icmix.train import TrainedPredictor, build_objective, build_task, evaluation_batch

        paths = trained_runs(out, cfg.runs(), cfg.jobs, progress)
        family = get_family("markov")
        spec = family.spec(**{k: v for k, v in cfg.task().items() if k != "kind"})
        task = family.build(spec)
        curves, heads, final = [], [], []
        runs = cfg.runs()
        for seed in cfg.seeds:
            metrics = [json.loads(line) for line in (paths[seed] / "metrics.jsonl").read_text().splitlines()]
            curves += [{"seed": seed, "step": r["step"], "eval_loss": r["eval_loss"], "eval_kl": r["eval_kl"]}
                       for r in metrics if "eval_loss" in r]
            scores = head_scores_over_training(metrics, cfg.n_layers, cfg.n_heads)
            # uniform attention scored on the chains training scored the heads on (the run's evaluation batch's first)
            tc = runs[seed]
            chains = evaluation_batch(build_objective(build_task(tc), tc), tc)["inputs"][:HEAD_SEQUENCES]
            levels = uniform_attention_levels(chains)
            heads.append(scores.assign(seed=seed, uniform_previous_token=levels["previous_token"],
                                       uniform_induction=levels["induction"]))
            gen = stream(seed, Stream.TESTBEDS)
            preds = family.predictors(task) + [TrainedPredictor.from_run(paths[seed], "trained", key=Key("trained"))]
            losses = family.baseline_losses(task, spec, preds, cfg.n_sequences, gen)
            for name, v in losses.items():
                final.append({"seed": seed, "predictor": name, "loss": float(np.mean(v)),
                              "stderr": float(np.std(v, ddof=1) / np.sqrt(len(v))),
                              "excess_over_bigram": float(np.mean(v - losses["bigram"]))})
        return Result(pd.DataFrame(curves), extra={"heads": pd.concat(heads, ignore_index=True),
                                                   "final": pd.DataFrame(final)})

    def draw(self, result: Result, cfg: Config):
        """The loss against the step with the predictors' levels, and each head's scores over training."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        curves, heads, final = result.table, result.extra["heads"], result.extra["final"]
        levels = final.groupby("predictor").loss.mean()
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        ax = axes[0]
        for seed, t in curves.groupby("seed"):
            ax.plot(t.step, t.eval_loss, label=f"trained (seed {seed}; its evaluation batch)")
        for name, style in zip(LEVELS, (":", "--", "-.")):
            ax.axhline(levels[name], color="black", ls=style, lw=1, label=f"{name} {levels[name]:.3f} (fresh chains)")
        ax.axhline(levels["true"], color="tab:green", lw=1, label=f"true row {levels['true']:.3f} (fresh chains)")
        ax.set(xlabel="training step", ylabel="cross-entropy (nats)",
               title=f"k={cfg.vocab_size}, T={cfg.length}: {cfg.n_layers}-layer attention-only")
        ax.legend(fontsize=7)
        for ax, score in zip(axes[1:], ("previous_token", "induction")):
            for (seed, layer, head), t in heads.groupby(["seed", "layer", "head"]):
                ax.plot(t.step, t[score], lw=1, label=f"seed {seed}, layer {layer}, head {head}")
            uniform = heads.groupby("seed")[f"uniform_{score}"].first()  # per seed, on the chains its heads were scored on
            ax.axhline(uniform.mean(), color="black", ls=":", lw=1, label=f"uniform attention {uniform.mean():.3f} "
                       f"(the runs' scored chains{', mean of the seeds' if len(uniform) > 1 else ''})")
            ax.set(xlabel="training step", ylabel=f"{score.replace('_', '-')} score", ylim=(0, 1),
                   title=f"{score.replace('_', '-')} score of each head")
            ax.legend(fontsize=6)
        fig.tight_layout()
        return fig

    def report(self, result: Result, cfg: Config) -> str:
        """The final losses and, per seed, the steps where the loss leaves each plateau."""
        final = result.extra["final"].groupby("predictor", sort=False)[["loss", "excess_over_bigram"]].mean()
        levels = final.loss
        lines = [f"- {name}: cross-entropy {row.loss:.4f} nats (trained model minus bigram: "
                 f"{row.excess_over_bigram:+.4f})" if name == "trained" else f"- {name}: {row.loss:.4f} nats"
                 for name, row in final.iterrows()]
        for seed, t in result.table.groupby("seed"):
            below = {name: t[t.eval_loss < (levels[a] + levels[b]) / 2].step.min()
                     for name, (a, b) in {"left the uniform plateau": ("uniform", "unigram"),
                                          "passed halfway from unigram to bigram": ("unigram", "bigram")}.items()}
            lines.append(f"- seed {seed}: " + "; ".join(f"{k} at step {v}" if np.isfinite(v) else f"never {k}"
                                                        for k, v in below.items()))
        return "\n".join(lines)


FIGURE = MarkovICL()


@FIGURE.claim("Testbed (Edelman et al.)",
              "A 2-layer attention-only transformer learns random Markov chains in context as well as the bigram "
              "posterior",
              "CE(trained) − CE(bigram posterior) on the same fresh sequences, k={cfg.vocab_size}, T={cfg.length}, "
              "nats per token; holds if ≤ 0.01",
              trained=lambda tc, cfg: True)
def learns_the_bigram(c: Claim, out: Path, cfg: Config) -> Claim:
    """The trained model's excess cross-entropy over the bigram's, per seed."""
    final = pd.read_csv(Path(out) / f"{NAME}-final.csv")
    return measured(c, final[final.predictor == "trained"].excess_over_bigram, 0.01, "<=")
