"""Numeric (not visual) agreement between a trained model and the construction / the algorithm.

Shapes: B batch, H heads, T length, Q vocabulary, M lags.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from icmix.metrics import kl_divergence


def attention_agreement(trained: Tensor, reference: Tensor, start: int) -> dict[str, float]:
    """Compare a trained layer's attention ``(B, H, T, T)`` with the construction's ``(B, T, T)``.

    Over query rows ``i >= start``, for the best-matching head: the mean cosine similarity
    of the rows, and the mean attention mass the trained head puts on the construction's
    support (keys where the construction's weight exceeds 1e-9).
    """
    tr = trained[:, :, start:].double()
    ref = reference[:, None, start:].double()
    cos = torch.nn.functional.cosine_similarity(tr, ref, dim=-1).mean(dim=(0, 2))  # (H,)
    support = (ref > 1e-9).to(tr.dtype)
    mass = (tr * support).sum(-1).mean(dim=(0, 2))  # (H,)
    h = int(cos.argmax())
    return {"cosine": cos[h].item(), "support_mass": mass[h].item(), "head": h}


def lag_offset_mass(attention: Tensor, order: int) -> float:
    """Mean attention mass on offsets ``1..M`` (the keys holding the M lagged tokens), over
    query rows ``i >= M`` and the best head.  ``attention``: ``(B, H, T, T)``."""
    t = attention.shape[-1]
    i = torch.arange(order, t)
    mass = sum(attention[:, :, i, i - g] for g in range(1, order + 1))  # (B, H, N)
    return mass.double().mean(dim=(0, 2)).max().item()


def lag_attention_tv(attention: Tensor, reference: Tensor, order: int) -> float:
    """Total variation between the trained layer-1 attention over the lag keys ``i-1..i-M``,
    renormalised to sum to 1, and the construction's (the responsibilities ``gamma_i``).

    This compares *how* attention is split among the lags, whatever mass sits elsewhere.
    Mean over query rows ``i >= M``; the best head.  ``attention (B, H, T, T)``,
    ``reference (B, T, T)``.
    """
    t = attention.shape[-1]
    i = torch.arange(order, t)
    lags = torch.stack([attention[:, :, i, i - g] for g in range(1, order + 1)], -1).double()  # (B, H, N, M)
    ref = torch.stack([reference[:, i, i - g] for g in range(1, order + 1)], -1).double()[:, None]
    lags = lags / lags.sum(-1, keepdim=True).clamp_min(1e-300)
    ref = ref / ref.sum(-1, keepdim=True)
    return (0.5 * (lags - ref).abs().sum(-1)).mean(dim=(0, 2)).min().item()


def transition_agreement(scores: Tensor, transition: Tensor) -> dict[str, float]:
    """Compare layer-1 token scores ``A[query token, key token] (Q, Q)`` with ``pi``.

    The construction has ``A = (log pi)^T``.  ``row_kl`` is the paper's measure: the mean
    over rows a of ``KL(pi[a] || softmax(A^T)[a])``.  Because attention is unchanged when a
    constant is added to a row of A (one per query token), only ``softmax_b A[a, b]`` is
    identified; ``attention_kl`` compares it with the normalised column ``pi[:, a]``, a
    measure that does not depend on that gauge.
    """
    pi = transition.double()
    a = scores.double()
    row_kl = kl_divergence(pi, torch.softmax(a.T, dim=-1)).mean().item()
    col = pi.T / pi.T.sum(-1, keepdim=True)  # row a: pi[:, a] normalised
    attention_kl = kl_divergence(col, torch.softmax(a, dim=-1)).mean().item()
    return {"row_kl": row_kl, "attention_kl": attention_kl}


def readout_agreement(weight: Tensor, transition: Tensor) -> dict[str, float]:
    """Compare a readout block ``(Q, Q)`` with ``pi^T``: cosine of the flattened matrices and
    the relative Frobenius error ``||W - pi^T|| / ||pi^T||``."""
    w, target = weight.double().flatten(), transition.double().T.flatten()
    return {"cosine": torch.nn.functional.cosine_similarity(w, target, dim=0).item(),
            "relative_error": ((w - target).norm() / target.norm()).item()}


def predictive_kl(p: Tensor, q: Tensor) -> float:
    """Mean ``KL(p || q)`` over a batch of next-token distributions."""
    return kl_divergence(p.double(), q.double()).mean().item()


def lag_window(attention: Tensor, order: int, first_offset: int) -> Tensor:
    """Attention ``(B, H, T, T)`` on the M keys at offsets ``first_offset .. first_offset+M-1``
    from each query ``i >= M``: ``(B, H, T-M, M)``, lag g in column g-1.

    ``first_offset=1``: the keys ``y_{i-g}`` whose responsibilities the construction's layer 1
    computes; ``first_offset=0``: the keys ``y_{i+1-g}``, the lagged tokens of the *next*
    token, which its layer 3 weights by the MD estimate of ``lam``.
    """
    t = attention.shape[-1]
    i = torch.arange(order, t)
    return torch.stack([attention[..., i, i - (g - 1 + first_offset)] for g in range(1, order + 1)], -1)


def md_iterates(tokens: Tensor, transition: Tensor, order: int, beta, steps: int | None = None) -> Tensor:
    """MD estimates at every prefix ``L = M+1..T`` with ``eta = beta / (M (L - M))``, the
    construction's scale: ``(K, B, T-M, M)``, iterate k in row k-1.

    ``beta`` is one value for every step (``steps`` of them) or a sequence, one per step
    (a step-size schedule; ``steps`` is then its length)."""
    from icmix.estimators.mtd import lag_evidence

    schedule = [float(beta)] * steps if steps is not None else [float(b) for b in beta]
    return _iterates(lag_evidence(tokens, transition, order, "all"), order, schedule)


def _iterates(evidence, order: int, schedule: list[float]) -> Tensor:
    from icmix.estimators.mtd import MirrorDescent

    n = torch.tensor(evidence.lengths, dtype=torch.float64) - order
    state = MirrorDescent(evidence, 0.0).init()
    out = []
    for b in schedule:
        md = MirrorDescent(evidence, b / (order * n))
        state = md.step(state)
        out.append(md.readout(state))
    return torch.stack(out)


def _mean_kl(lam_hat: Tensor, lam: Tensor) -> Tensor:
    """Mean ``KL(lam_hat || lam)`` over every axis but the leading ones ``(..., B, N, M)``."""
    p = lam_hat.clamp_min(1e-300)
    return (lam_hat * (p.log() - lam.clamp_min(1e-300).log())).sum(-1).mean(dim=(-1, -2))


def fit_md_beta(lam_hat: Tensor, evidence, order: int, steps: int, lo: float, hi: float) -> tuple[float, float]:
    """The tied step size ``beta`` in ``[lo, hi]`` whose ``steps``-step MD estimate best explains
    ``lam_hat (B, N, M)`` (Brent's method on ``log beta``); ``evidence`` is
    ``lag_evidence(tokens, pi, M, "all")``.  Returns ``(beta, mean KL)``."""
    from scipy.optimize import minimize_scalar

    f = lambda lb: _mean_kl(lam_hat, _iterates(evidence, order, [math.exp(lb)] * steps)[-1]).item()
    res = minimize_scalar(f, bounds=(math.log(lo), math.log(hi)), method="bounded", options={"xatol": 1e-4})
    return math.exp(res.x), float(res.fun)


def fit_step_schedule(lam_hat: Tensor, evidence, order: int, start: list[float]) -> tuple[list[float], float]:
    """Per-step step sizes ``beta_1..beta_k`` of k-step MD that best explain ``lam_hat (B, N, M)``
    (Nelder-Mead on ``log beta``, from the schedule ``start``).  Returns the schedule and its mean KL."""
    from scipy.optimize import minimize

    f = lambda lb: _mean_kl(lam_hat, _iterates(evidence, order, [math.exp(v) for v in lb])[-1]).item()
    res = minimize(f, [math.log(b) for b in start], method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-10})
    return [math.exp(v) for v in res.x], float(res.fun)


def md_step_readout(attention: list[Tensor], tokens: Tensor, transition: Tensor, order: int,
                    max_steps: int = 4, betas=None, min_mass: float = 0.5, min_explained: float = 0.5) -> list[dict]:
    """Read mirror descent off each layer's attention (the per-layer step sizes).

    For every layer and head, take the attention on the keys ``y_{i+1-g}`` (offsets 0..M-1,
    where the construction's last layer puts ``lam``), renormalise it over the M lags to an
    estimate ``lam_hat_i`` at each prefix, and fit the k-step MD estimate (``k = 1..max_steps``,
    ``eta = beta / (M N)``, the construction's scale) that explains it best: the ``(k, beta)``
    minimising the mean ``KL(lam_hat || lam_MD^k)`` over sequences and prefixes (a grid over
    ``betas``, then refined between the grid neighbours).  Few steps of a large ``beta`` and
    more steps of a smaller one give similar estimates, so ``k`` is the best of close fits:
    ``fit_kl_by_k`` lists each k's fit.

    A row per layer and head: ``window_mass`` (attention mass on those keys), ``gamma_mass``
    (on offsets 1..M, where responsibilities live), the best ``k`` and tied ``beta``,
    ``fit_kl``, ``kl_uniform = KL(lam_hat || 1/M)`` and ``explained = 1 - fit_kl / kl_uniform``.
    A layer is ``readable`` when ``window_mass >= min_mass`` and ``explained >= min_explained``;
    otherwise its attention does not weight the lags like an MD estimate and no step size is
    read.  For a readable layer with ``k >= 2``, ``schedule`` holds per-step step sizes fitted
    freely (``schedule_kl`` their fit): equal entries mean tied steps.
    """
    from icmix.estimators.mtd import lag_evidence
    from icmix.predictors import DEFAULT_BETAS

    betas = DEFAULT_BETAS if betas is None else betas
    m = order
    evidence = lag_evidence(tokens, transition, m, "all")
    iterates = torch.stack([_iterates(evidence, m, [float(b)] * max_steps) for b in betas])  # (nb, K, B, N, M)
    rows = []
    for layer, a in enumerate(attention, start=1):
        window = lag_window(a.double(), m, 0)  # (B, H, N, M)
        gamma_mass = lag_window(a.double(), m, 1).sum(-1).mean(dim=(0, 2))
        for h in range(a.shape[1]):
            w = window[:, h]
            lam_hat = w / w.sum(-1, keepdim=True).clamp_min(1e-300)
            kl = _mean_kl(lam_hat, iterates)  # (nb, K)
            mass = w.sum(-1).mean().item()
            fits = []  # (kl, beta) per k; refined between the grid neighbours where it can be read
            for k in range(max_steps):
                bi = int(kl[:, k].argmin())
                fits.append((kl[bi, k].item(), float(betas[bi])))
                if mass >= min_mass:
                    lo, hi = betas[max(bi - 1, 0)], betas[min(bi + 1, len(betas) - 1)]
                    beta, fit = fit_md_beta(lam_hat, evidence, m, k + 1, lo, hi)
                    fits[-1] = min(fits[-1], (fit, beta))
            k = min(range(max_steps), key=lambda j: fits[j][0])
            fit, beta = fits[k]
            kl_uniform = _mean_kl(lam_hat, torch.full_like(lam_hat, 1.0 / m)).item()
            explained = 1 - fit / kl_uniform if kl_uniform > 0 else float("nan")
            row = dict(layer=layer, head=h, window_mass=mass, gamma_mass=gamma_mass[h].item(), k=k + 1,
                       beta=beta, fit_kl=fit, fit_kl_by_k=tuple(float(f"{f:.4g}") for f, _ in fits), kl_uniform=kl_uniform, explained=explained,
                       readable=bool(mass >= min_mass and explained >= min_explained), schedule=None,
                       schedule_kl=float("nan"))
            if row["readable"] and k >= 1:
                sched, sched_kl = fit_step_schedule(lam_hat, evidence, m, [beta] * (k + 1))
                row.update(schedule=tuple(round(b, 4) for b in sched), schedule_kl=sched_kl)
            rows.append(row)
    return rows


def md_beta_by_length(attention: Tensor, tokens: Tensor, transition: Tensor, order: int, lengths,
                      head: int = 0, steps: int = 1, lo: float = 0.05, hi: float = 500.0) -> list[dict]:
    """The step size a layer uses at each prefix length: for each ``L`` in ``lengths``, the
    ``beta`` (``eta = beta / (M (L - M))``) whose ``steps``-step MD estimate best explains the
    renormalised attention of query ``L - 1`` on the keys ``y_{L-g}`` (offsets 0..M-1).

    A trained model has one set of weights for every length; this reads the schedule
    ``beta(L)`` those weights implement, to set beside the per-length tuned ``beta`` of MD.
    Rows: ``length, beta, fit_kl``.  ``attention``: one layer's ``(B, H, T, T)``.
    """
    from scipy.optimize import minimize_scalar

    from icmix.estimators.mtd import lag_evidence

    window = lag_window(attention.double(), order, 0)[:, head]  # (B, T-M, M)
    rows = []
    for length in lengths:
        w = window[:, length - 1 - order]
        lam_hat = (w / w.sum(-1, keepdim=True).clamp_min(1e-300))[:, None]  # (B, 1, M)
        evidence = lag_evidence(tokens[:, :length], transition, order, [length])
        f = lambda lb: _mean_kl(lam_hat, _iterates(evidence, order, [math.exp(lb)] * steps)[-1]).item()
        res = minimize_scalar(f, bounds=(math.log(lo), math.log(hi)), method="bounded", options={"xatol": 1e-4})
        rows.append(dict(length=int(length), beta=math.exp(res.x), fit_kl=float(res.fun)))
    return rows
