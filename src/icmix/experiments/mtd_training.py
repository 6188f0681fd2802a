"""Training runs shared by the MTD figures with trained models (fig5-fig8).

A figure's ``Config`` extends ``Recipe``, the training recipe as flat fields (so
``--set steps=...`` works; ``gpt_*`` fields where a figure trains the standard transformer).
``train_config`` turns it into a ``TrainConfig`` for one model, order, length, loss and
seed; ``experiments.common.train_runs`` trains (or reuses) each.
"""

from __future__ import annotations

from dataclasses import dataclass

from icmix._checks import check_positive_int
from icmix.experiments.common import cadence
from icmix.train import TrainConfig


@dataclass(frozen=True)
class Recipe:
    """The ``cpu`` presets' recipe (CPU in about an hour a figure): loss on every position with a full lag
    history, the warm-up marker, value offsets 0..m, cosine schedule at lr 6e-3, 10k steps.
    ``schedule``: the learning rate's (``cosine``, ``constant``, ``linear``); ``tail`` keeps the
    checkpoint 1000 steps before the end (``common.cadence``; the long tier).  ``jobs``: training
    runs at once, in separate processes."""

    vocab_size: int = 10  # Q, the token values of every run's MTD task
    steps: int = 10_000  # training steps of every run (a figure's GPT trains gpt_steps where it has that field)
    batch_size: int = 128  # sequences per training batch
    lr: float = 6e-3  # Adam's peak learning rate (gradients clipped at norm 1)
    warmup_steps: int = 300  # steps of linear learning-rate warm-up
    schedule: str = "cosine"  # the learning rate's after warm-up: cosine or linear decay to 0, or constant
    tail: bool = False  # keep each run's checkpoint 1000 steps before its end (the long tier; steps: k * 1000)
    loss: str = "mse"  # every run's training loss: mse (Brier score of the outputs) or ce (cross-entropy)
    loss_positions: str = "all"  # all: every position with a full lag history (cpu recipe); last: the final one
    # the disentangled model's absolute positions: warmup (a marker on the first M tokens, with value offsets
    # 0..M, as in the construction) or onehot (the paper's)
    positions: str = "warmup"
    seeds: tuple[int, ...] = (0, 1)  # one run per seed and setting; seed s draws its task's matrix and seeds training
    device: str = "auto"  # where runs train: auto (CUDA where available, else the CPU), cpu, cuda or cuda:N
    precision: str = "fp32"  # fp32, or bf16 / fp16 autocast on CUDA
    data_device: str = "cpu"  # cpu, or device: sample training batches on the training device (another random stream)
    jobs: int = 1  # training runs at once, each in its own process

    def check_recipe(self, *positive: str) -> None:
        """``ValueError`` unless ``steps``, ``batch_size``, ``jobs`` and the fields named in ``positive`` are
        positive integers and ``seeds`` is non-empty."""
        for name in ("steps", "batch_size", "jobs", *positive):
            check_positive_int(name, getattr(self, name))
        if not self.seeds:
            raise ValueError("seeds must be non-empty")


# The quick recipe (every figure of both papers in under 30 minutes on 2 CPU cores, with
# ``icmix reproduce all``): the ``cpu`` recipe (the defaults above) for half the steps.
QUICK = dict(steps=5000, warmup_steps=200)

# The paper's recipe: one-hot positions, MSE on the last token, lr 1e-3, 5e5 steps (a GPU job).
# The long tier (``--preset long``): the cpu recipe for twice its steps, four seeds, each run keeping
# its checkpoint 1000 steps before the end (``icmix zoo verify --tail``).  The claims-scaling figure
# trains the same recipe at 1/8, 1/4 and 1/2 of these steps too (the 10k budget: the cpu tier's runs).
LONG = dict(steps=20_000, seeds=(0, 1, 2, 3), tail=True)

PAPER = dict(steps=500_000, lr=1e-3, warmup_steps=100, loss_positions="last", positions="onehot", seeds=(0, 1, 2))


def disentangled(n_layers: int, order: int, positions: str) -> dict:
    """The disentangled model of the figures: one head a layer; with the warm-up marker,
    value offsets ``0..M`` as in the construction."""
    spec = {"kind": "disentangled", "n_layers": n_layers, "n_heads": 1, "positions": positions}
    if positions == "warmup":
        spec["value_offsets"] = order + 1
    return spec


def gpt(cfg) -> dict:
    """The standard GPT model spec of a figure's config: its ``gpt_layers``, ``gpt_width`` and ``gpt_heads``."""
    return {"kind": "gpt", "n_layers": cfg.gpt_layers, "d_model": cfg.gpt_width, "n_heads": cfg.gpt_heads}


def train_config(cfg, seed: int, model: dict, order: int, length: int, loss: str, steps: int | None = None,
                 kind: str = "mtd") -> TrainConfig:
    """One run of the recipe ``cfg``; ``kind``: the task family (``mtd``, or ``mtdg`` with one matrix per lag)."""
    steps = steps or cfg.steps
    return TrainConfig.from_dict({
        "task": {"kind": kind, "vocab_size": cfg.vocab_size, "order": order, "seed": seed, "length": length},
        "model": model,
        "optim": {"lr": cfg.lr, "schedule": cfg.schedule, "warmup_steps": cfg.warmup_steps, "grad_clip": 1.0},
        "steps": steps, "batch_size": cfg.batch_size, "loss": loss, "loss_positions": cfg.loss_positions,
        "seed": seed, **cadence(steps, cfg.tail),
        "device": cfg.device, "precision": cfg.precision, "data_device": cfg.data_device,
    })
