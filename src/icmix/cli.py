"""The ``icmix`` command line: a thin front end over the importable library.

    icmix estimate TOKENS --transition PI --order M [--estimator ...] [--out CSV]
    icmix reproduce mtd-fig3 --preset quick|cpu|paper --out DIR [--seeds N] [--set key=value ...]
    icmix reproduce all --preset quick|cpu|paper --out DIR [--set [FIGURE.]key=value ...] [--jobs N] [--force]
    icmix --plugin mypackage.figures reproduce my-figure --preset quick --out DIR   (a module not installed)
    icmix construct mtd --vocab-size Q --order M --beta B [--check] [--save]
    icmix construct mlr --dim D --components M --noise S [--mlp gelu|bilinear] [--check]
    icmix train CONFIG.yaml [--set key=value ...] [--out RUN_DIR] [--compile] | icmix train --resume RUN_DIR
    icmix sweep CONFIG.yaml --grid seed=0,1,2 --grid task.order=3,5 --out DIR [--jobs N]
    torchrun --nproc_per_node N -m icmix train CONFIG.yaml ...   (data-parallel, see icmix.train.distributed)

Bad input ends with ``icmix: error: ...`` on stderr and exit status 2, before any work and
with nothing written; Ctrl-C ends with one line and exit status 130 (rerun to resume).
Output folders are checked for writability first and held by one icmix process at a time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the parser imports neither numpy nor torch: `icmix --help` answers at once
    import numpy as np


def _load_array(path: str, what: str) -> np.ndarray:
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{what} file not found: {path}")
    if p.suffix not in (".npy", ".csv", ".txt"):
        raise ValueError(f"{what} file must be .npy or .csv, got {p.name}")
    try:
        if p.suffix == ".npy":
            return np.load(p, allow_pickle=False)
        return np.loadtxt(p, delimiter="," if p.suffix == ".csv" else None, ndmin=2)
    except (ValueError, OSError, EOFError) as err:  # a damaged .npy, a malformed CSV
        raise ValueError(f"cannot read the {what} file {path}: {err}") from None


def _estimate(args) -> int:
    import pandas as pd

    from icmix._checks import (as_tokens, as_transitions, check_nonnegative, check_order, check_positive,
                               check_positive_int)
    from icmix.estimators import mtd as est
    from icmix.estimators.mtd.bayes import MAX_STATES, MAX_WORK
    from icmix.families.mtd import LAG_ESTIMATORS, LagOptions
    from icmix.io import check_writable

    tokens = _load_array(args.tokens, "tokens")
    if tokens.ndim == 1:
        tokens = tokens[None, :]
    pi = _load_array(args.transition, "transition")
    # Every argument is checked before any estimator runs, so a refusal costs no work.
    pi = as_transitions(pi, check_order(args.order))
    tokens_t = as_tokens(tokens, pi.shape[-1], args.order)
    n_transitions = tokens_t.shape[-1] - args.order
    if args.eta is not None and args.beta is not None:
        raise ValueError("give --eta or --beta, not both")
    if args.beta is not None:  # eta = beta / (M N): the length-aware scale of Theorem 2
        eta = check_positive("--beta", args.beta) / (args.order * n_transitions)
    else:
        eta = check_nonnegative("--eta", args.eta) if args.eta is not None else 1.0 / (args.order + 1)
    check_positive_int("--steps", args.steps)
    check_positive_int("--max-iter", args.max_iter)
    check_positive_int("--gibbs-samples", args.gibbs_samples)
    check_positive_int("--gibbs-burn-in", args.gibbs_burn_in, minimum=0)
    check_positive("--alpha", args.alpha)
    if "bayes-exact" in args.estimator and args.order > 1:
        states, work = est.exact_cost(args.order, n_transitions)
        if states > MAX_STATES or work > MAX_WORK:
            raise ValueError(
                f"--estimator bayes-exact is too large for --order {args.order} and sequences of {tokens_t.shape[-1]} "
                f"tokens ({states:,} states, {work:.1e} operations per sequence; the exact DP's limits are "
                f"{MAX_STATES:,} and {MAX_WORK:.1e}). Use --estimator bayes-gibbs, or shorter sequences.")
    if args.out:
        check_writable(Path(args.out).parent or ".", "--out")
    options = LagOptions(steps=args.steps, eta=eta, max_iter=args.max_iter, alpha=args.alpha,
                         gibbs_samples=args.gibbs_samples, gibbs_burn_in=args.gibbs_burn_in, seed=args.seed)
    rows = []
    for name in args.estimator:
        lam = LAG_ESTIMATORS[name][1](tokens_t, pi, args.order, options).numpy()
        for b, row in enumerate(lam):
            rows.append({"sequence": b, "estimator": name, **{f"lag{g + 1}": v for g, v in enumerate(row)}})
    table = pd.DataFrame(rows)
    if args.out:
        from icmix.io import atomic_write

        atomic_write(Path(args.out), lambda p: table.to_csv(p, index=False))
        print(f"wrote {args.out}")
    else:
        with pd.option_context("display.max_rows", 50, "display.precision", 4):
            print(table.to_string(index=False))
    return 0


def _launcher(args, jobs: int | None):
    """The ``Launcher`` of ``--launcher/--slurm/--no-wait`` (``None``: the local pool), checked
    before any work."""
    if args.launcher == "local" and not args.slurm and not args.no_wait:
        return None
    from icmix.train.launch import make_launcher

    if jobs is not None and jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    return make_launcher(args.launcher, Path(args.out) / "logs", args.slurm or [], wait=not args.no_wait,
                         max_parallel=jobs or 1, threads=getattr(args, "run_threads", None))


def _tracking(args) -> tuple[str, ...]:
    from icmix.overrides import typed
    from icmix.train.tracking import check_tracking, require

    if not args.tracking:
        return ()
    return require(check_tracking(typed("--tracking", args.tracking, tuple[str, ...])))


def _launched(call) -> int:
    """Run ``call``; with ``--no-wait``, say what was submitted and exit 0."""
    from icmix.train.launch import Submitted

    try:
        call()
    except Submitted as sent:
        print(f"submitted: {sent}")
    return 0


def _reproduce(args) -> int:
    from icmix.experiments import get_figure
    from icmix.report import configs_for, reproduce_all
    from icmix.io import output_folder

    tracking = _tracking(args)
    if args.figure == "all":
        launcher = _launcher(args, args.jobs or min(os.cpu_count() or 1, 8))

        def reproduce_every_figure():
            path = reproduce_all(args.preset, args.out, args.set, args.seeds, args.jobs, args.only, args.force,
                                 progress=not args.no_progress, zoo=not args.no_zoo, launcher=launcher,
                                 tracking=tracking)
            print(f"report: {path}")

        return _launched(reproduce_every_figure)
    if args.only or args.force or args.jobs:
        raise ValueError("--only, --force and --jobs are options of 'icmix reproduce all'")
    cfg = configs_for(args.preset, args.set, args.seeds, [args.figure])[args.figure]
    launcher = _launcher(args, getattr(cfg, "jobs", 1))
    figure = get_figure(args.figure)
    paths = {}

    def reproduce():
        from icmix.experiments.common import run_name, train_runs
        from icmix.report import write_figure_report

        configs = list(figure.runs(cfg).values())
        start = time.time()
        with output_folder(args.out):
            if not args.no_zoo:
                from icmix.report import take_from_zoo

                take_from_zoo([(tc, Path(args.out) / "runs" / run_name(tc)) for tc in configs], not args.no_progress)
                if args.figure == "claims-scaling":  # the long tier's measurements, as `reproduce all` takes them
                    from icmix.report import take_measurements

                    take_measurements(Path(args.out), args.preset, not args.no_progress)
            if launcher is not None or tracking:  # train through the launcher, tracked; the figure reuses them
                train_runs(Path(args.out), configs, getattr(cfg, "jobs", 1), not args.no_progress, launcher=launcher,
                           group=args.figure, tracking=tracking)
            paths.update(figure.run(cfg, Path(args.out), progress=not args.no_progress))
            if (Path(args.out) / "manifest.json").exists():  # a `reproduce all` folder: its report stays whole
                print(f"the report of `icmix reproduce all` in {args.out} is left as it was; run it again to "
                      f"update it with {args.figure}")
            else:
                paths["report"] = write_figure_report(Path(args.out), args.figure, cfg, dict(paths), args.preset,
                                                      args.set, time.time() - start)

    _launched(reproduce)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def _construct_mtd(args) -> int:
    import torch

    from icmix import MTDTask
    from icmix._checks import check_memory, check_positive_int
    from icmix.construct import md_transformer
    from icmix.construct.check import mtd_differential_check
    from icmix.experiments.constructions import attention_panel
    from icmix.io import atomic_write, check_writable

    if args.transition:
        task = MTDTask(args.vocab_size, args.order, transition=_load_array(args.transition, "transition"),
                       per_lag=args.per_lag)
    else:
        task = MTDTask(args.vocab_size, args.order, seed=args.seed, per_lag=args.per_lag)
    if task.per_lag and args.save:
        raise ValueError("--save keeps the 3-layer disentangled model; the MTDg construction (--per-lag or an "
                         "(M, Q, Q) --transition) is rebuilt from its matrices in no time: "
                         "icmix.construct.per_lag_mirror_descent_transformer")
    dtype = {"float64": torch.float64, "float32": torch.float32}[args.dtype]
    check_positive_int("--n-sequences", args.n_sequences)
    if args.check:  # attention scores, weights and outputs of 3 layers over (B, T, T), in float64
        check_memory(f"--check on {args.n_sequences} sequences of length {args.max_length:,}",
                     9 * 8 * args.n_sequences * args.max_length**2, "use fewer --n-sequences or a smaller --max-length")
    if args.check or args.save:
        check_writable(args.out)
    model = md_transformer(task.transition, args.order, args.beta, args.max_length, dtype=dtype)
    widths = [layout.width for layout in model.layouts]
    n_params = sum(p.numel() for p in model.parameters())
    what = ("MTDg construction (ReLU MLP, 3 attention layers, gating ReLU MLP)" if task.per_lag
            else "3-layer disentangled transformer")
    print(f"{what}: stream widths {widths}, {n_params:,} parameters, {args.dtype}")
    out = Path(args.out)
    if args.check:
        report = mtd_differential_check(model, task, args.beta, args.n_sequences, args.max_length,
                                        generator=torch.Generator().manual_seed(args.seed + 1))
        tol = 1e-10 if dtype == torch.float64 else 1e-5
        print(f"differential check vs one-step MD on {args.n_sequences} fresh sequences of length {args.max_length}: "
              f"max |error| = {report['max_error']:.3e} (tolerance {tol:g}); "
              f"layer-1 attention vs responsibilities {report['max_error_gamma']:.3e}; "
              f"layer-2 block vs running mean {report['max_error_mean']:.3e}")
        length = min(64, args.max_length)
        fig = attention_panel(model, task, length, torch.Generator().manual_seed(args.seed + 2),
                              f"Constructed transformer (q={args.vocab_size}, m={args.order}, β={args.beta}), "
                              f"one sequence of length {length}")
        path = out / "construction_attention.png"
        atomic_write(path, lambda p: fig.savefig(p, dpi=130, format="png"))
        print(f"attention maps: {path}")
        if report["max_error"] > tol:
            print("icmix: error: the construction does not match one-step MD", file=sys.stderr)
            return 1
    if args.save:
        print(f"model saved to {model.save_pretrained(out / 'model')}")
    return 0


def _construct_mlr(args) -> int:
    import torch

    from icmix import MixLinRegTask
    from icmix._checks import check_memory
    from icmix.construct import posterior_mean_transformer
    from icmix.construct.check import knob_curve
    from icmix.estimators.regression import posterior_mean
    from icmix.experiments.constructions import circuit_and_knob, shifted_checks
    from icmix.io import atomic_write, check_writable

    task = MixLinRegTask(args.dim, args.components, args.noise, seed=args.seed)
    if args.points < 1 or args.prompts < 1:
        raise ValueError(f"--points and --prompts must be >= 1, got {args.points} and {args.prompts}")
    if args.check:  # 3 blocks of attention over (B, 2N, 2N) interleaved tokens, in float64
        check_memory(f"--check on {args.prompts} prompts of {args.points:,} points",
                     9 * 8 * args.prompts * (2 * args.points) ** 2, "use fewer --prompts or --points")
        check_writable(args.out)
    model = posterior_mean_transformer(task.components, args.noise, args.points, mlp=args.mlp, eps=args.eps)
    size = model.size()
    knob = f", eps = {args.eps:g}" if args.mlp == "gelu" else ""
    print(f"posterior-mean transformer (d = {args.dim}, m = {args.components}, σ = {args.noise}, {args.mlp} MLPs{knob}): "
          f"{size['layers']} layers (attention + MLP each), width {size['width']}, {size['parameters']:,} parameters")
    out = Path(args.out)
    if not args.check:
        return 0
    tol = 1e-4 if args.mlp == "gelu" else 1e-9
    worst = 0.0
    checks = shifted_checks(model, task, args.noise, args.prompts, args.points,
                            lambda: torch.Generator().manual_seed(args.seed + 1))
    for label, xs, ys, r in checks:
        with torch.no_grad():
            err = (model(xs, ys) - posterior_mean(xs, ys, task.components, args.noise)).abs()
        worst = max(worst, r["relative_error"])
        print(f"  {label:14s} {args.prompts} fresh prompts of {args.points} points: max |error| {r['max_error']:.2e}, "
              f"mean |error| {err.mean().item():.2e}, max relative error {r['relative_error']:.2e} (bound {tol:g}); "
              f"layers: copy {r['copy']:.1e}, squares {r['squares']:.1e}, sums {r['sums']:.1e}, "
              f"softmax {r['softmax']:.1e}, w_hat {r['w_hat']:.1e}")
    fig = circuit_and_knob(model, f"Posterior-mean transformer: d = {args.dim}, m = {args.components}, {args.mlp} MLPs")
    path = out / "construction_circuit.png"
    atomic_write(path, lambda p: fig.savefig(p, dpi=130, format="png"))
    print(f"circuit: {path}")
    if args.mlp == "gelu":
        xs, ys = task.sample(min(args.prompts, 128), args.points, generator=torch.Generator().manual_seed(args.seed + 2))
        curve = knob_curve(task.components, args.noise, xs, ys)
        path = out / "construction_knob.csv"
        atomic_write(path, lambda p: curve.to_csv(p, index=False))
        print("error vs knob (relative error by eps): "
              + ", ".join(f"{e:.0e}: {r:.1e}" for e, r in zip(curve.eps, curve.relative_error)) + f"  ({path})")
    if worst > tol:
        print("icmix: error: the construction does not match the posterior mean within its bound", file=sys.stderr)
        return 1
    return 0


def _train(args) -> int:
    import errno

    from icmix.io import is_full_disk
    from icmix.train import TrainConfig, train

    if args.steps is not None and not args.resume:
        raise ValueError("--steps extends a run: icmix train --resume RUN_DIR --steps N (set steps in a new config with --set steps=N)")
    if args.resume:
        if args.config or args.set:
            raise ValueError("--resume takes the run directory only; its config.yaml is the config")
        cfg, out = None, args.resume
    else:
        if not args.config:
            raise ValueError("give a CONFIG.yaml, or --resume RUN_DIR")
        cfg = TrainConfig.from_yaml(args.config, args.set)
        out = args.out or f"runs/{Path(args.config).stem}-seed{cfg.seed}"
    try:
        run = train(cfg, out, resume=bool(args.resume), progress=not args.no_progress, compile=args.compile,
                    extend_to=args.steps)
    except OSError as err:
        if is_full_disk(err) and (Path(out) / "config.yaml").exists():
            raise OSError(errno.ENOSPC, f"{err.strerror}; free some space, then continue from the last "
                          f"checkpoint with: icmix train --resume {out}") from err
        raise
    except KeyboardInterrupt:
        if not (Path(out) / "config.yaml").exists():
            raise
        raise KeyboardInterrupt(f"continue from the last checkpoint with: icmix train --resume {out}") from None
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the run
        print(f"run: {run}  (final model: {run / 'model'}, metrics: {run / 'metrics.jsonl'})")
    return 0


def _sweep(args) -> int:
    import itertools
    import json

    from icmix.experiments.common import train_runs
    from icmix.io import output_folder
    from icmix.train import TrainConfig

    from icmix.overrides import grid_axis

    axes = [grid_axis(item) for item in args.grid or []]
    combos = list(itertools.product(*axes)) or [()]
    configs = [TrainConfig.from_yaml(args.config, list(args.set or []) + list(combo)) for combo in combos]
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    launcher = _launcher(args, args.jobs)
    paths = []

    def sweep():
        with output_folder(args.out):
            print(f"sweep: {len(configs)} runs under {Path(args.out) / 'runs'} ({args.jobs} at a time; "
                  "finished runs are skipped)")
            paths.extend(train_runs(Path(args.out), configs, args.jobs, progress=not args.no_progress,
                                    launcher=launcher, group=Path(args.out).resolve().name))

    _launched(sweep)
    for combo, path in zip(combos, paths):
        rows = (path / "metrics.jsonl").read_text().splitlines()
        last = json.loads(rows[-1]) if rows else {}
        shown = {k: round(v, 5) for k, v in last.items() if k.startswith("eval_")}
        print(f"  {' '.join(combo) or '(base)'}: {path.name}  {shown}")
    return 0


def _zoo_build(args) -> int:
    from icmix import zoo

    if args.threads < 1 or args.jobs < 1:
        raise ValueError(f"--threads and --jobs must be >= 1, got {args.threads} and {args.jobs}")
    new = zoo.build(args.preset, Path(args.work), Path(args.root) if args.root else None, args.only, args.runs,
                    args.threads, progress=not args.no_progress, jobs=args.jobs)
    print(f"zoo {args.preset}: {len(new)} new entr{'y' if len(new) == 1 else 'ies'}")
    return 0


def _zoo_list(args) -> int:
    from icmix import zoo
    from icmix.train.convergence import DEFINITION

    root = Path(args.root) if args.root else None
    found = zoo.entries(root)
    if args.sizes:
        if args.format != "table" or args.wide:
            raise ValueError("--sizes lists files; --wide and --format are for the runs' table")
        total, files = zoo.sizes(root)
        for rel, size in files:
            flag = "  OVER THE 2 MB CAP" if size > zoo.FILE_CAP else ""
            print(f"{size / 2**20:8.3f} MB  {rel}{flag}")
        largest = max((s for _, s in files), default=0)
        ok = total <= zoo.SIZE_CAP and largest <= zoo.FILE_CAP
        print(f"zoo: {len(found)} runs, {len(files)} files, {total / 2**20:.2f} MB in all (cap "
              f"{zoo.SIZE_CAP / 2**20:.0f} MB), largest file {largest / 2**20:.3f} MB (cap {zoo.FILE_CAP / 2**20:.0f} MB): "
              + ("within the caps" if ok else "OVER A CAP"))
        return 0 if ok else 1
    table = zoo.table(root)
    if args.format != "table":  # for other tools: numbers where there are numbers
        table = table.replace("–", None)
    if args.format == "csv":
        sys.stdout.write(table.to_csv(index=False))
        return 0
    if args.format == "json":
        sys.stdout.write(table.to_json(orient="records", indent=1) + "\n")
        return 0
    if table.empty:
        print("the zoo is empty")
        return 0
    import textwrap

    if args.wide:
        print(_aligned(table))
    else:  # within 100 columns: per tier, the run names, their numbers and their state
        stale = table.status.str.startswith("stale")
        unknown = table.converged.astype(str).str.startswith("?")
        short = table.reindex(columns=["run", "steps", "final", "excess", "converged", "status"]).fillna("?").assign(
            converged=table.converged.where(~unknown, "?"),
            status=table.status.map(lambda s: "stale" if s.startswith("stale") else "unlisted" if "unlisted" in s
                                    else s))
        lines = _aligned(short).splitlines()
        for i, tier in enumerate(dict.fromkeys(table.tier)):
            rows = [lines[1 + j] for j in range(len(table)) if table.tier.iloc[j] == tier]
            print(("\n" if i else "") + f"{tier} tier: {len(rows)} run{'s' if len(rows) != 1 else ''}")
            print("\n".join([lines[0], *rows]))
        for run, status in zip(table.run[stale], table.status[stale]):  # why, in full
            print("\n" + textwrap.fill(f"{run}: {status}", 100, subsequent_indent="  "))
        for run, why in zip(table.run[unknown], table.converged[unknown]):
            print("\n" + textwrap.fill(f"{run}: convergence {why}", 100, subsequent_indent="  "))
        if (table.status == "ok, unlisted").any():
            print("\nunlisted: not in the package's zoo manifest (a zoo of ICMIX_ZOO or --root), checked and used")
    print(f"\n{len(table)} run{'s' if len(table) != 1 else ''}" + ("" if args.wide else
          " (--wide: figures, metric, commit, CPU, threads, wall time; --format csv|json: all)"))
    print(textwrap.fill(f"converged: {DEFINITION}", 100))
    return 0


def _aligned(table) -> str:
    """``table`` as text columns: words left-aligned, numbers right-aligned."""
    cells = [[str(v) for v in table[c]] for c in table.columns]
    numeric = [all(_is_number(v) for v in col) for col in cells]
    widths = [max(len(str(c)), *(len(v) for v in col)) for c, col in zip(table.columns, cells)]
    rows = [list(map(str, table.columns))] + [list(r) for r in zip(*cells)]
    return "\n".join("  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(row, widths, numeric)).rstrip()
                     for row in rows)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text in ("–", "nan", "None")
    return True


def _inspect(args) -> int:
    import pandas as pd

    from icmix.inspection import inspect, load_model
    from icmix.io import output_folder

    if args.batch < 1:
        raise ValueError(f"--batch must be >= 1, got {args.batch}")
    loaded = load_model(args.run)  # an unknown run is refused before anything is created
    out = Path(args.out or f"inspect-{Path(args.run).name.replace('/', '-')}")
    with output_folder(out):
        written = inspect(args.run, out, batch=args.batch, seed=args.seed, loaded=loaded)
    scores = pd.read_csv(written["head-scores.csv"])
    print(_aligned(scores.round(3)))
    if "construction.csv" in written:
        print("\nagainst the mirror-descent construction (best head per layer):")
        print(_aligned(pd.read_csv(written["construction.csv"]).round(3)))
    print(f"\nwrote {', '.join(sorted(written))} to {out}")
    return 0


def _baselines(args) -> int:
    from icmix.families import RegressionFamily, SequenceFamily, get_family
    from icmix.families.baselines import baselines

    names = [n.strip() for n in (args.predictors or "").split(",") if n.strip()] or None
    table = baselines(args.family, args.set or [], names, args.samples, args.seed, progress=not args.no_progress)
    if args.format == "csv":
        print(table.to_csv(index=False, float_format="%.6g"), end="")
        return 0
    print(_aligned(table.assign(loss=table["loss"].map("{:.5g}".format), stderr=table["stderr"].map("{:.2g}".format))))
    family = get_family(args.family)
    loss = ("squared error at the query" if isinstance(family, RegressionFamily) else
            "mean next-token cross-entropy (nats) over the positions predicted" if isinstance(family, SequenceFamily)
            else "the family's loss")
    skipped = list(family.slow_predictors) if names is None else []
    print(f"\nloss: {loss}, on {args.samples} fresh examples (seed {args.seed}); stderr: its standard error"
          + (f"\nnot scored (slow; name them with --predictors): {', '.join(skipped)}" if skipped else ""))
    return 0


def _zoo_verify(args) -> int:
    import json

    from icmix import zoo
    from icmix.io import atomic_write, output_folder

    root = Path(args.root) if args.root else None
    entry = zoo.lookup(args.run, root)  # an unknown run is refused before any work
    work = Path(args.work) if args.work else None
    if work is not None and (work / entry.name).exists():
        raise ValueError(f"{work / entry.name} exists: verify retrains from scratch into a new folder")
    if args.tail and "tail_step" not in entry.provenance:
        zoo.prepare_tail(entry, Path("."))  # refused: says which runs ship a tail
    import contextlib
    import tempfile

    with (output_folder(args.out) if args.out else contextlib.nullcontext()), \
            tempfile.TemporaryDirectory(prefix="icmix-zoo-verify-") as tmp:
        record = zoo.verify(entry.name, work or Path(tmp), root, progress=not args.no_progress, tail=args.tail)
        if args.out:
            path = Path(args.out) / "zoo-verify" / f"{record['run']}.json"
            atomic_write(path, lambda p: Path(p).write_text(json.dumps(record, indent=2) + "\n"))
    if record["step"] != "retraining":
        print(f"{record['run']}: FAIL at the {record['step']} check, not retrained: {record['reason']}")
    else:
        shown = "; ".join(f"{k} {record['evaluation']['recorded'][k]:.6g} recorded, {v:.6g} measured"
                          for k, v in record["evaluation"]["measured"].items())
        print(f"{record['run']}: evaluation check passed: the shipped weights give the recorded final metrics ({shown})")
        how = f"resumed from its tail (step {record['from_step']})" if record.get("from_step") else "retrained"
        print(f"{record['run']}: {record['status'].upper()} ({record['reason']}); {how} in "
              f"{record['retrain_seconds']:.0f} s with {record['here']['threads']} thread(s); final {record['metric']} "
              f"shipped {record['metric_shipped']:.6g}, retrained {record['metric_retrained']:.6g}; "
              f"max weight difference {record['max_weight_difference']:.3g}")
    if args.out:
        print(f"record: {path}")
    return 0 if record["status"] == "pass" else 1


def _zoo_manifest(args) -> int:
    from icmix import zoo
    from icmix.zoo.shipped import SHIPPED

    now = zoo.manifest()
    if args.write:
        print(f"wrote {zoo.write_manifest()} ({len(now)} entries)")
        return 0
    added, removed = sorted(set(now) - set(SHIPPED)), sorted(set(SHIPPED) - set(now))
    changed = sorted(k for k in set(now) & set(SHIPPED) if now[k] != SHIPPED[k])
    for what, keys in (("not in the manifest", added), ("in the manifest, not in the zoo", removed),
                       ("changed since the manifest was written", changed)):
        for key in keys:
            print(f"{what}: {key}")
    if added or removed or changed:
        print("the shipped zoo and its manifest differ (icmix zoo manifest --write seals the zoo as it is)")
        return 1
    print(f"the shipped zoo matches its manifest ({len(now)} entries)")
    return 0


def _launch_arguments(p) -> None:
    from icmix.train.launch import LAUNCHERS, SLURM_OPTIONS

    p.add_argument("--launcher", choices=LAUNCHERS, default="local",
                   help="where the training runs execute: this machine's process pool (local), submitit's local "
                        "executor, or one SLURM job array (pip install 'icmix[slurm]')")
    p.add_argument("--slurm", action="append", metavar="KEY=VALUE",
                   help=f"a SLURM option of --launcher slurm: {', '.join(SLURM_OPTIONS)} "
                        "(time=4h or D-HH:MM, gpus and cpus per task, mem=32G)")
    p.add_argument("--no-wait", action="store_true",
                   help="return once the runs are submitted; the same command again picks up the finished runs")


def build_parser() -> argparse.ArgumentParser:
    """The ``icmix`` argument parser: the subcommands ``estimate``, ``reproduce``, ``construct``,
    ``train``, ``sweep`` and ``zoo``, each bound to its handler (``func``).  Built once the plugins
    are loaded, so that their figures are among the registered ones ``reproduce`` lists."""
    from icmix.experiments import figure_names
    from icmix.families.lags import LAG_ESTIMATOR_HELP  # not their code: the parser imports no torch

    parser = argparse.ArgumentParser(prog="icmix", description="In-context learning of latent mixture models.")
    parser.add_argument("--plugin", action="append", metavar="PACKAGE.MODULE",
                        help="load a module that registers task families, figures or claims, for this command only "
                             "(from the current folder if it is not installed; like pytest -p)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("estimate", help="estimate MTD lag weights of your own token sequences")
    p.add_argument("tokens", help="token file: .npy (B, T) or (T,), or .csv with one sequence per row")
    p.add_argument("--transition", required=True,
                   help="transition matrix (Q, Q) shared by every lag (.npy or .csv), or one per lag, "
                        "(M, Q, Q) in an .npy (MTDg; lag g is transition[g-1])")
    p.add_argument("--order", type=int, required=True, help="number of lags M")
    p.add_argument("--estimator", nargs="+", choices=list(LAG_ESTIMATOR_HELP), default=list(LAG_ESTIMATOR_HELP),
                   help="; ".join(f"{name}: {what}" for name, what in LAG_ESTIMATOR_HELP.items()) + " (default: all)")
    p.add_argument("--eta", type=float, default=None,
                   help="MD step size (default 1/(M+1), Theorem 1's choice, good only for short sequences)")
    p.add_argument("--beta", type=float, default=None,
                   help="MD step size as eta = beta / (M N), N = T - M transitions (scales with length; ~5-15 is typical)")
    p.add_argument("--steps", type=int, default=1, help="iterations of the k-step methods (MD, k-step EM)")
    p.add_argument("--alpha", type=float, default=1.0, help="Dirichlet prior concentration (Bayes)")
    p.add_argument("--max-iter", type=int, default=2000, help="EM iterations")
    p.add_argument("--gibbs-samples", type=int, default=2000)
    p.add_argument("--gibbs-burn-in", type=int, default=500)
    p.add_argument("--seed", type=int, default=0, help="seed of the Gibbs sampler")
    p.add_argument("--out", help="write a CSV here instead of printing")
    _threads_argument(p)
    p.set_defaults(func=_estimate)

    p = sub.add_parser("reproduce", help="reproduce a paper figure (PNG + CSV + JSON)")
    p.add_argument("figure", metavar="FIGURE",
                   help="one figure, or all of them with a report (report.html, report.md, claims.csv); registered: "
                        + ", ".join(["all", *figure_names()]))
    p.add_argument("--preset", choices=("quick", "cpu", "long", "paper", "demo"), default="quick",
                   help="quick: all figures in < 30 min on 2 CPU cores; cpu: up to 2 hours a figure (its runs ship "
                        "in the model zoo); long: the trained-model figures at twice the cpu budget, 4 seeds (the zoo's "
                        "long tier), and claims-scaling; paper: GPU; demo: the long runs where the zoo holds them, "
                        "else the cpu runs, evaluated smaller (make demo-zoo)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (0..N-1)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--jobs", type=int, help="all: training runs at once (default: the number of cores, at most 8)")
    p.add_argument("--only", nargs="+", metavar="FIGURE", help="all: just these figures")
    p.add_argument("--force", action="store_true", help="all: re-run figures even if cached")
    p.add_argument("--no-zoo", action="store_true",
                   help="train every run OUT/runs lacks instead of taking it from the shipped model zoo")
    p.add_argument("--tracking", metavar="T1,T2",
                   help="send the training runs' metrics to these trackers too: tensorboard, wandb")
    _launch_arguments(p)
    _threads_argument(p)
    p.set_defaults(func=_reproduce)

    p = sub.add_parser("construct", help="build a hand-set transformer and check it against its algorithm")
    csub = p.add_subparsers(dest="algorithm", required=True)
    c = csub.add_parser("mtd", help="the 3-layer disentangled transformer equal to one mirror-descent step")
    c.add_argument("--vocab-size", type=int, required=True)
    c.add_argument("--order", type=int, required=True)
    c.add_argument("--beta", type=float, required=True, help="layer-3 inverse temperature (eta = beta / (m N))")
    c.add_argument("--max-length", type=int, default=256)
    c.add_argument("--transition", help="use this (Q, Q) matrix (.npy/.csv), or (M, Q, Q) one per lag (.npy), "
                   "instead of a seeded random one")
    c.add_argument("--per-lag", action="store_true",
                   help="MTDg: one transition matrix per lag (SPEC §3), and its construction (ReLU MLPs around "
                        "the 3 attention layers)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    c.add_argument("--check", action="store_true", help="differential check on fresh sequences + attention figure")
    c.add_argument("--n-sequences", type=int, default=64)
    c.add_argument("--save", action="store_true", help="save the model (safetensors + config) under OUT/model")
    c.add_argument("--out", default="results/construct-mtd")
    c.set_defaults(func=_construct_mtd)
    c = csub.add_parser("mlr", help="the transformer computing the regression-mixture posterior mean")
    c.add_argument("--dim", type=int, required=True)
    c.add_argument("--components", type=int, required=True, help="number of components m (drawn from --seed)")
    c.add_argument("--noise", type=float, required=True, help="sigma > 0")
    c.add_argument("--mlp", choices=("gelu", "bilinear"), default="gelu",
                   help="GELU MLPs (approximate squares, knob --eps) or gated bilinear MLPs (exact)")
    c.add_argument("--eps", type=float, default=1e-5, help="GELU squaring scale: relative error ~ (eps r)^2 / 6")
    c.add_argument("--points", type=int, default=40, help="prompt length (pairs + query) the model accepts")
    c.add_argument("--prompts", type=int, default=256, help="fresh prompts for --check")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--check", action="store_true", help="check against the posterior mean; draw the circuit")
    c.add_argument("--out", default="results/construct-mlr")
    c.set_defaults(func=_construct_mlr)

    p = sub.add_parser("train", help="train a model from a YAML config (or resume a run)")
    p.add_argument("config", nargs="?", help="CONFIG.yaml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config value (dotted keys)")
    p.add_argument("--out", help="run directory (default runs/<config>-seed<seed>)")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="resume an interrupted run from its newest valid checkpoint (its config.yaml must be unchanged)")
    p.add_argument("--steps", type=int, metavar="N",
                   help="with --resume: extend the run (finished or not) to N steps; recorded in RUN_DIR/history.jsonl")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (falls back to eager if unavailable)")
    p.add_argument("--no-progress", action="store_true")
    _threads_argument(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("sweep", help="train a grid of configs as separate runs, in parallel, resumably")
    p.add_argument("config", help="base CONFIG.yaml")
    p.add_argument("--grid", action="append", metavar="KEY=V1,V2,...",
                   help="a grid axis (dotted key); the sweep is the product of the axes")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override the base config")
    p.add_argument("--out", required=True, help="runs go to OUT/runs/<name>-<config hash>")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once (worker processes)")
    p.add_argument("--no-progress", action="store_true")
    _launch_arguments(p)
    _threads_argument(p)
    p.set_defaults(func=_sweep)

    p = sub.add_parser("inspect", help="look inside a trained model: attention maps, per-head scores, and for MTD "
                                       "models the comparison with the mirror-descent construction")
    p.add_argument("run", help="a finished run folder, or a zoo run (name, unique prefix, or PRESET/NAME)")
    p.add_argument("--out", help="where to write (default: inspect-<run name>)")
    p.add_argument("--batch", type=int, default=64, help="sequences of the model's task the maps and scores average")
    p.add_argument("--seed", type=int, default=0, help="draws the batch (and the induction probe)")
    p.set_defaults(func=_inspect)

    p = sub.add_parser("baselines", help="each predictor's expected loss on a task family's fresh examples, "
                                         "before you train")
    p.add_argument("family", help="a task family (linreg, mixlinreg, mtd, mtdg, ... or a plugin's)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="a field of the family's task spec")
    p.add_argument("--predictors", metavar="A,B", help="the predictors to score (key ids; default: all but the slow)")
    p.add_argument("--samples", type=int, default=1000, help="fresh examples every predictor is scored on")
    p.add_argument("--seed", type=int, default=0, help="draws the examples")
    p.add_argument("--format", choices=("table", "csv"), default="table",
                   help="csv: the header predictor,loss,stderr and one row per predictor")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_baselines)

    p = sub.add_parser("zoo", help="the shipped model zoo: list, verify or build its runs")
    zsub = p.add_subparsers(dest="zoo_command", required=True)
    z = zsub.add_parser("build", help="train the preset's runs the zoo lacks and add them to it")
    z.add_argument("--preset", choices=("quick", "cpu", "long", "paper"), default="cpu")
    z.add_argument("--only", nargs="+", metavar="FIGURE", help="just these figures' runs")
    z.add_argument("--runs", nargs="+", metavar="RUN", help="just these runs (by name)")
    z.add_argument("--work", default="zoo-work", help="where the full run directories (checkpoints) are trained")
    z.add_argument("--root", help="zoo folder (default: the package's)")
    z.add_argument("--threads", type=int, default=1, help="torch threads per run (recorded; verify uses the same)")
    z.add_argument("--jobs", type=int, default=1, help="runs trained at once, each in its own process")
    z.add_argument("--no-progress", action="store_true")
    z.set_defaults(func=_zoo_build)
    z = zsub.add_parser("list", help="the zoo's runs: figures, final metrics, convergence, provenance")
    z.add_argument("--sizes", action="store_true", help="every file's size and the total, against the caps")
    z.add_argument("--wide", action="store_true", help="every column (figures, metric, commit, CPU, threads, time)")
    z.add_argument("--format", choices=("table", "csv", "json"), default="table",
                   help="csv or json: every column, for other tools")
    z.add_argument("--root", help="zoo folder (default: the package's)")
    z.set_defaults(func=_zoo_list)
    z = zsub.add_parser("verify", help="check a zoo run: its files, its weights' own metrics (seconds), then a "
                                       "retraining from scratch compared with the shipped weights")
    z.add_argument("run", help="the run's name (or a unique prefix of it)")
    z.add_argument("--out", help="also write the record to OUT/zoo-verify/RUN.json (the report shows it)")
    z.add_argument("--work", help="train here (default: a temporary folder, removed afterwards)")
    z.add_argument("--root", help="zoo folder (default: the package's)")
    z.add_argument("--tail", action="store_true",
                   help="resume from the checkpoint the run ships 1,000 steps before its end, instead of retraining "
                        "from scratch (long-tier runs of the first seed whose tail is at most 2 MiB; seconds)")
    z.add_argument("--no-progress", action="store_true")
    z.set_defaults(func=_zoo_verify)
    z = zsub.add_parser("manifest", help="compare the shipped zoo with the package's manifest of it (or rewrite it)")
    z.add_argument("--write", action="store_true",
                   help="rewrite icmix/zoo/shipped.py from the shipped zoo as it is (after icmix zoo build)")
    z.set_defaults(func=_zoo_manifest)
    return parser


def _error_text(err: Exception) -> str:
    if isinstance(err, OSError) and err.strerror:  # "no space left on PATH", "PATH: Permission denied"
        return f"{err.filename}: {err.strerror}" if err.filename else err.strerror
    return str(err)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"icmix: warning: {message}", file=file or sys.stderr)


def _stdout_is_broken() -> bool:
    """Whether our standard output is a pipe whose reader has gone (so a ``BrokenPipeError``
    came from it, not from a pipe of our own, to a worker or a tracker's service)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # not a file descriptor (a test's capture), or no poll
        return False


def _quiet_after_broken_pipe() -> int:
    """The reader of our output has gone (``icmix ... | head``): end as a shell pipeline's
    writer does, with no error line and status 141 (128 + SIGPIPE).  Python's own flush of
    stdout at exit would fail again, so stdout is pointed at /dev/null first."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a file descriptor (a test's capture)
        pass
    return 141


def _threads_argument(p) -> None:
    p.add_argument("--threads", dest="run_threads", type=int, metavar="N",
                   help="torch threads for each run (and this process): default, the cores shared among the "
                        "runs at once, one each when they fill the machine; 1 on a machine others use too")


def _use_threads(n: int) -> None:
    """``--threads N``: this process's torch threads, and every worker's (``ICMIX_THREADS``)."""
    import torch

    from icmix._pool import THREADS

    if n < 1:
        raise ValueError(f"--threads must be >= 1, got {n}")
    os.environ[THREADS] = str(n)
    torch.set_num_threads(n)


def _load_plugins(argv: list[str]) -> list[str]:
    """Load every ``--plugin MODULE`` of ``argv`` (wherever it stands) before the parser is
    built, so the plugins' figures and families are known to it; ``argv`` without them."""
    from icmix import plugins

    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--plugin", action="append", default=[])
    known, rest = pre.parse_known_args(argv)
    for module in known.plugin:
        plugins.load(module)
    return rest


def main(argv: list[str] | None = None) -> int:
    """Run the ``icmix`` command line on ``argv`` (default ``sys.argv[1:]``) and return its exit
    status: the command's own, 2 after an error (printed as one ``icmix: error:`` line), 130 when
    interrupted, 141 when the reader of standard output has gone."""
    try:
        argv = _load_plugins(list(sys.argv[1:] if argv is None else argv))
        parser = build_parser()
        args = parser.parse_args(argv)
        warnings.showwarning = _show_warning  # one line each, without Python's source excerpt
        if getattr(args, "run_threads", None) is not None:
            _use_threads(args.run_threads)
        code = args.func(args)
        sys.stdout.flush()  # a reader that has gone is noticed here, not in Python's exit
        return code
    except BrokenPipeError as err:
        if _stdout_is_broken():
            return _quiet_after_broken_pipe()
        print(f"icmix: error: {_error_text(err)}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError) as err:
        print(f"icmix: error: {_error_text(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # its text, if any, says how to resume
        print(f"\nicmix: interrupted; {str(err) or 'rerun the same command to resume'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
