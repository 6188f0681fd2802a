"""``icmix baselines``: what each of a task family's predictors scores on fresh examples, before
anyone trains a model on it.

    from icmix.families.baselines import baselines
    baselines("linreg", ["dim=10", "points=5"])   # predictor, loss, stderr: one row per predictor

The loss is the family's (``TaskFamily.baseline_losses``): the squared error at the query for a
regression family, the mean next-token cross-entropy in nats over the positions predicted for a
sequence family (with ``true``, the sequences' own next-token distributions, as the floor).  Every
predictor is scored on the same examples, drawn from ``seed``'s ``BASELINES`` stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from icmix._checks import check_positive_int
from icmix.families.base import get_family
from icmix.overrides import apply_overrides
from icmix.random import Stream, stream

if TYPE_CHECKING:
    import pandas as pd

COLUMNS = ["predictor", "loss", "stderr"]


def baselines(kind: str, overrides: Sequence[str] = (), predictors: Sequence[str] | None = None, samples: int = 1000,
              seed: int = 0, progress: bool = False) -> pd.DataFrame:
    """Each predictor's expected loss on ``samples`` fresh examples of the ``kind`` family's task
    (its spec with ``key=value`` ``overrides``), with its standard error: columns ``predictor``
    (the key's id), ``loss``, ``stderr``, in the family's order.  ``predictors``: the key ids to
    score (default: all but the family's ``slow_predictors``); an unknown one is refused with the
    family's list."""
    import pandas as pd
    from tqdm.auto import tqdm

    samples = check_positive_int("samples", samples, minimum=2)
    family = get_family(kind)
    spec = apply_overrides(family.spec(), list(overrides))
    task = family.build(spec)
    preds = family.predictors(task)
    if not preds:
        raise ValueError(f"the {kind!r} family names no predictors to score")
    known = [p.key.id for p in preds] + (["true"] if hasattr(family, "true_predictive") else [])
    wanted = list(dict.fromkeys(predictors)) if predictors else [k for k in known if k not in family.slow_predictors]
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise ValueError(f"unknown predictor{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} of the "
                         f"{kind!r} family; its predictors: {', '.join(known)}")
    chosen = tqdm([p for p in preds if p.key.id in wanted], desc=f"baselines ({kind})", disable=not progress,
                  leave=False)  # (a family scores its predictors in one pass over this)
    losses = family.baseline_losses(task, spec, chosen, samples, stream(seed, Stream.BASELINES))
    rows = []
    for name in wanted:
        v = np.asarray(losses[name], dtype=np.float64)
        rows.append({"predictor": name, "loss": float(v.mean()), "stderr": float(v.std(ddof=1) / np.sqrt(v.size))})
    return pd.DataFrame(rows, columns=COLUMNS)
