"""Hand-set transformer weights, one builder per algorithm."""

from icmix.construct.mirror_descent import mirror_descent_transformer
from icmix.construct.mirror_descent_mtdg import per_lag_mirror_descent_transformer, three_way_interaction
from icmix.construct.posterior_mean import posterior_mean_transformer

__all__ = ["md_transformer", "mirror_descent_transformer", "per_lag_mirror_descent_transformer",
           "posterior_mean_transformer", "three_way_interaction"]


def md_transformer(transition, order: int, beta: float, max_length: int, **kw):
    """The one-step-MD construction for ``transition``: the paper's 3-layer disentangled
    transformer for one shared ``(Q, Q)`` matrix, the MTDg one for ``(M, Q, Q)``."""
    import torch

    pi = torch.as_tensor(transition)
    build = per_lag_mirror_descent_transformer if pi.ndim == 3 else mirror_descent_transformer
    return build(transition, order, beta, max_length, **kw)
