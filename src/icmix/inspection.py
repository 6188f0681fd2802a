"""``icmix inspect``: look inside a trained model (a run folder or a zoo run) in one command.

It writes, for the model's own task data (the run's evaluation batch, drawn again from a seed):

- ``attention-layer{l}.png``: each head's attention map, averaged over the batch;
- ``head-scores.csv``: one row per layer and head: ``previous_token`` (mass on offset 1),
  ``self`` (offset 0), ``entropy`` (nats, mean over rows), for an MTD task ``lag_mass``
  (offsets ``1..m``: the tokens before each position, where the construction's layer 1 reads
  the evidence; ``agreement.lag_offset_mass``) and ``next_lag_mass`` (offsets ``0..m-1``: the
  tokens the next prediction mixes, where a GPT's layer-1 heads often look) and, for token
  models, ``induction`` on repeated random sequences;
- for an MTD model, ``construction.csv`` and ``construction.png``: each layer's best head
  against the layer of the hand-built mirror-descent transformer (``β`` tuned on the same
  batch), the row cosine and the mass on the construction's support (``agreement``).

``layer`` counts from 1, as the papers do; ``block`` is the index in the hook names
(``blocks.{block}.attn.hook_pattern``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from icmix import interp


def load_model(run: str):
    """``(TrainConfig, model, label)`` of a finished run folder or a zoo run (name, unique prefix,
    or ``preset/name``); ``ValueError`` when it is neither."""
    from icmix import zoo
    from icmix.train.loop import load_run

    path = Path(run)
    if path.is_dir():
        if not (path / "config.yaml").exists():
            raise ValueError(f"{path} is not a training run (no config.yaml) and not a zoo run")
        cfg, model = load_run(path)
        return cfg, model.eval(), str(path)
    tiers = {e.preset for e in zoo.entries().values()}
    if "/" in run and run.split("/", 1)[0] not in tiers:
        raise ValueError(f"{run} is not a run folder, and {run.split('/', 1)[0]!r} is not a zoo tier "
                         f"({', '.join(sorted(tiers))})")
    model, cfg, _ = zoo.load(run)
    return cfg, model, f"zoo {zoo.lookup(run).key}"


def model_inputs(batch: dict) -> tuple:
    """The model's positional inputs in a family's batch: ``(tokens,)`` or ``(xs, ys)``."""
    return (batch["inputs"],) if "inputs" in batch else (batch["xs"], batch["ys"])


def _entropy(pattern: torch.Tensor) -> torch.Tensor:
    """``(H,)``: the mean entropy (nats) of the attention rows."""
    p = pattern.double()
    return -(p * p.clamp_min(1e-300).log()).sum(-1).mean(dim=(0, 2))


def head_table(model, task, patterns: list[torch.Tensor], tokens: bool, seed: int) -> pd.DataFrame:
    """The ``head-scores.csv`` rows (module docstring); ``tokens``: a token model (induction is
    measured on repeated random sequences of half its length)."""
    from icmix.tasks.mtd import MTDTask

    order = task.order if isinstance(task, MTDTask) else None
    rows = []
    for layer, p in enumerate(patterns):
        prev, own, ent = interp.previous_token_score(p), interp.offset_mass(p, [0], 0), _entropy(p)
        lag = interp.offset_mass(p, range(1, order + 1)) if order else None
        next_lag = interp.offset_mass(p, range(order), start=order) if order else None
        for h in range(p.shape[1]):
            row = {"layer": layer + 1, "block": layer, "head": h, "previous_token": prev[h].item(),
                   "self": own[h].item(), "entropy": ent[h].item()}
            if order:
                row["lag_mass"], row["next_lag_mass"] = lag[h].item(), next_lag[h].item()
            rows.append(row)
    table = pd.DataFrame(rows)
    if tokens:
        period = model.config.max_length // 2
        table["induction"] = interp.head_scores(model, model.config.vocab_size, period=period, batch=64,
                                                seed=seed)["induction"].to_numpy()
    return table


def construction_comparison(task, tokens: torch.Tensor, latent: torch.Tensor, patterns: list[torch.Tensor]):
    """``(table, construction patterns, β)`` for an MTD model: the construction's β tuned on
    ``tokens`` (lowest KL to the truth at the full length), its patterns, and the layer-by-layer
    agreement of ``patterns`` with them."""
    from icmix.construct import md_transformer
    from icmix.predictors import ConstructedMirrorDescent

    t = tokens.shape[1]
    tuner = ConstructedMirrorDescent()
    tuner.tune(tokens, latent, task, [t])
    beta = tuner.chosen_beta[t]
    cons = md_transformer(task.transition, task.order, beta, max_length=t)
    with torch.no_grad():
        reference = interp.attention_patterns(cons, tokens)
    layers = min(len(patterns), len(reference))
    table = interp.construction_agreement(patterns[:layers], reference[:layers], start=task.order)
    table.insert(1, "block", table["layer"])
    table["layer"] += 1
    table.insert(1, "beta", beta)
    return table, reference, beta


def inspect(run: str, out: Path, batch: int = 64, seed: int = 0, log=print, loaded=None) -> dict[str, Path]:
    """Write ``icmix inspect``'s files for ``run`` into ``out`` (all of them, or none: they are
    staged and moved in together; maps of layers an earlier, deeper model left there are
    removed) and return them by name.  ``loaded``: ``load_model(run)``'s result, if at hand."""
    import matplotlib.pyplot as plt

    from icmix.figures.attention import draw_head_maps, draw_pattern_comparison
    from icmix.io import staged
    from icmix.tasks.mtd import MTDTask
    from icmix.train.loop import build_objective, build_task

    cfg, model, label = loaded or load_model(run)
    task = build_task(cfg)
    data = build_objective(task, cfg).eval_batch(batch, torch.Generator().manual_seed(seed))
    inputs = model_inputs(data)
    with torch.no_grad():
        patterns = [p.float() for p in interp.attention_patterns(model, *inputs)]
    scores = head_table(model, task, patterns, "inputs" in data, seed)
    written: dict[str, Path] = {}
    name = Path(run).name
    with staged(out) as stage:
        for layer, p in enumerate(patterns, start=1):
            fig = draw_head_maps(p.mean(0), title=f"{name}: layer {layer}, attention averaged over {batch} "
                                                  f"sequences of its task")
            fig.savefig(stage / f"attention-layer{layer}.png", dpi=110, format="png")
            plt.close(fig)
            written[f"attention-layer{layer}.png"] = out / f"attention-layer{layer}.png"
        scores.to_csv(stage / "head-scores.csv", index=False, float_format="%.6g")
        written["head-scores.csv"] = out / "head-scores.csv"
        if isinstance(task, MTDTask) and "latent" in data:
            table, reference, beta = construction_comparison(task, data["inputs"], data["latent"], patterns)
            table.to_csv(stage / "construction.csv", index=False, float_format="%.6g")
            best = [p[:, int(h)].mean(0) for p, h in zip(patterns, table["head"])]
            fig = draw_pattern_comparison(best, [r[:, 0].mean(0) for r in reference[:len(best)]],
                                          ("trained (best head)", f"construction (β = {beta:.3g})"))
            fig.savefig(stage / "construction.png", dpi=110, format="png")
            plt.close(fig)
            written["construction.csv"] = out / "construction.csv"
            written["construction.png"] = out / "construction.png"
    for stale in out.glob("attention-layer*.png"):
        if stale.name not in written:
            stale.unlink()
    if "construction.csv" not in written:
        for name in ("construction.csv", "construction.png"):
            (out / name).unlink(missing_ok=True)
    log(f"{label}: {type(model).__name__}, {len(patterns)} layers, {cfg.task.kind} task; {batch} sequences, seed {seed}")
    return written
