"""The ``icmix`` command line: a thin front end over the importable library.

    icmix estimate TOKENS --transition PI --order M [--estimator ...] [--out CSV]
    icmix reproduce mtd-fig3 --preset quick|paper --out DIR [--seeds N] [--set key=value ...]

Bad input ends with ``icmix: error: ...`` on stderr and exit status 2; nothing is written.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np


def _load_array(path: str, what: str) -> np.ndarray:
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{what} file not found: {path}")
    if p.suffix == ".npy":
        return np.load(p, allow_pickle=False)
    if p.suffix in (".csv", ".txt"):
        return np.loadtxt(p, delimiter="," if p.suffix == ".csv" else None, ndmin=2)
    raise ValueError(f"{what} file must be .npy or .csv, got {p.name}")


ESTIMATOR_NAMES = ("md", "em", "bayes-exact", "bayes-gibbs")


def _estimate(args) -> int:
    import pandas as pd
    import torch

    from icmix.estimators import mtd as est

    tokens = _load_array(args.tokens, "tokens")
    if tokens.ndim == 1:
        tokens = tokens[None, :]
    pi = _load_array(args.transition, "transition")
    tokens_t = torch.as_tensor(tokens)
    eta = args.eta if args.eta is not None else 1.0 / (args.order + 1)
    runners = {
        "md": lambda: est.mirror_descent(tokens_t, pi, args.order, eta, args.steps),
        "em": lambda: est.em(tokens_t, pi, args.order, max_iter=args.max_iter),
        "bayes-exact": lambda: est.bayes_exact(tokens_t, pi, args.order, args.alpha),
        "bayes-gibbs": lambda: est.bayes_gibbs(
            tokens_t, pi, args.order, args.alpha, args.gibbs_samples, args.gibbs_burn_in, args.seed
        ),
    }
    rows = []
    for name in args.estimator:
        lam = runners[name]().numpy()
        for b, row in enumerate(lam):
            rows.append({"sequence": b, "estimator": name, **{f"lag{g + 1}": v for g, v in enumerate(row)}})
    table = pd.DataFrame(rows)
    if args.out:
        from icmix.experiments.common import atomic_write

        atomic_write(Path(args.out), lambda p: table.to_csv(p, index=False))
        print(f"wrote {args.out}")
    else:
        with pd.option_context("display.max_rows", 50, "display.precision", 4):
            print(table.to_string(index=False))
    return 0


def _reproduce(args) -> int:
    from icmix.experiments import REGISTRY
    from icmix.experiments.common import apply_overrides

    module = REGISTRY[args.figure]
    cfg = module.PRESETS[args.preset]
    if args.seeds is not None:
        if args.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
        cfg = dataclasses.replace(cfg, seeds=tuple(range(args.seeds)))
    cfg = apply_overrides(cfg, args.set)
    paths = module.run(cfg, Path(args.out), progress=not args.no_progress)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from icmix.experiments import REGISTRY

    parser = argparse.ArgumentParser(prog="icmix", description="In-context learning of latent mixture models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("estimate", help="estimate MTD lag weights of your own token sequences")
    p.add_argument("tokens", help="token file: .npy (B, T) or (T,), or .csv with one sequence per row")
    p.add_argument("--transition", required=True, help="transition matrix (Q, Q): .npy or .csv")
    p.add_argument("--order", type=int, required=True, help="number of lags M")
    p.add_argument("--estimator", nargs="+", choices=ESTIMATOR_NAMES, default=list(ESTIMATOR_NAMES))
    p.add_argument("--eta", type=float, default=None, help="MD step size (default 1/(M+1), Theorem 1)")
    p.add_argument("--steps", type=int, default=1, help="MD steps")
    p.add_argument("--alpha", type=float, default=1.0, help="Dirichlet prior concentration (Bayes)")
    p.add_argument("--max-iter", type=int, default=2000, help="EM iterations")
    p.add_argument("--gibbs-samples", type=int, default=2000)
    p.add_argument("--gibbs-burn-in", type=int, default=500)
    p.add_argument("--seed", type=int, default=0, help="seed of the Gibbs sampler")
    p.add_argument("--out", help="write a CSV here instead of printing")
    p.set_defaults(func=_estimate)

    p = sub.add_parser("reproduce", help="reproduce a paper figure (PNG + CSV + JSON)")
    p.add_argument("figure", choices=sorted(REGISTRY))
    p.add_argument("--preset", choices=("quick", "paper"), default="quick")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (0..N-1)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_reproduce)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError) as err:
        print(f"icmix: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
