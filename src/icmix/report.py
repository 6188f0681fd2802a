"""``icmix reproduce all``: every figure of both papers, then one report.

1. Each figure's config is its preset (``quick``, ``cpu`` or ``paper``) with the overrides
   (``key=value`` for every figure that has the key, ``FIGURE.key=value`` for one).
2. A figure is *cached* when ``OUT/manifest.json`` holds it with the same key: a hash of its
   config and of the library's source (``src/icmix`` but the report's own modules), and its
   outputs are all on disk.  Those are skipped (``force`` re-runs them).
3. The training runs of the other figures are pooled, de-duplicated (figures share runs, which
   live under ``OUT/runs/<run name>``) and trained ``jobs`` at a time, longest first.  A run
   that fails fails only the figures that need it.
4. Each figure then runs in turn; an exception is caught, its traceback written to
   ``OUT/logs/<figure>.txt`` and shown in the report, and the next figure runs.
5. The claims table (``experiments.claims``) is read off the CSVs, and ``report.md`` and a
   self-contained ``report.html`` (figures embedded) are written next to ``manifest.json``
   (environment, git commit, seeds, wall time per figure).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import html
import inspect
import json
import os
import platform
import re
import subprocess
import time
import traceback
from pathlib import Path

from icmix.experiments.figure import DEMO, PRESET_NAMES, figures_with, get_figure
from icmix.io import atomic_write, output_folder, staged

REPORT_MODULES = ("report.py", "experiments/claims.py", "cli.py")


def configs_for(preset: str, overrides: list[str] | None = None, seeds: int | None = None,
                figures: list[str] | None = None) -> dict:
    """``{figure: config}`` for the preset, with ``--seeds`` and the overrides applied.
    ``key=value`` applies to every figure whose config has ``key`` (an error if none has it);
    ``FIGURE.key=value`` to that figure only."""
    from icmix.overrides import apply_overrides, split

    if preset not in (*PRESET_NAMES, DEMO):
        raise ValueError(f"preset must be one of {(*PRESET_NAMES, DEMO)}, got {preset!r}")
    for name in figures or []:
        get_figure(name)  # an unknown name: the registered ones, and how to register
    names = list(figures) if figures else figures_with(preset)  # a plugin's figure may have only some presets
    if preset == DEMO:
        names = [n for n in names if demo_tier(n)]
        configs = {name: demo_config(name) for name in names}
    else:
        configs = {name: get_figure(name).preset(preset) for name in names}
    if seeds is not None:
        if seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {seeds}")
        configs = {n: dataclasses.replace(c, seeds=tuple(range(seeds))) for n, c in configs.items()}
    per_figure: dict[str, list[str]] = {}
    for item in overrides or []:
        key, value = split(item)
        target, _, field = key.rpartition(".")
        if target and target not in configs:
            raise ValueError(f"override {item!r}: {target!r} is not among the figures run ({', '.join(configs)})")
        targets = [target] if target else list(configs)
        hit = [n for n in targets if field in {f.name for f in dataclasses.fields(configs[n])}]
        if not hit:
            known = (f"; known keys: {', '.join(sorted(f.name for f in dataclasses.fields(configs[targets[0]])))}"
                     if len(targets) == 1 else "")
            raise ValueError(f"override {item!r}: unknown config key {field!r} (no figure's config has it){known}")
        for n in hit:
            per_figure.setdefault(n, []).append(f"{field}={value}")
    # All of a figure's overrides at once: a config is checked whole, not value by value.
    for n, items in per_figure.items():
        configs[n] = apply_overrides(configs[n], items)
    return configs


def demo_tier(name: str) -> str | None:
    """The tier whose training runs the ``demo`` preset evaluates figure ``name`` on: ``long``
    where the figure has a long preset and the model zoo holds every one of its runs (for
    ``claims-scaling``, which trains nothing: where the zoo ships the long tier's measurements),
    else ``cpu``; ``None`` for a figure with neither."""
    from icmix import zoo
    from icmix.experiments.common import run_name

    figure = get_figure(name)
    if "long" in figure.presets:
        if not figure.zoo:  # claims-scaling: its smaller budgets' runs are not shipped, their measurements are
            return "long" if zoo.measurements("long") is not None else None
        names = {run_name(tc) for tc in figure.runs(figure.preset("long")).values()}
        if names <= {n for n, e in zoo.entries().items() if e.preset == "long"}:
            return "long"
    return "cpu" if "cpu" in figure.presets else None


def _tier(name: str, preset: str) -> str | None:
    """The tier of training runs figure ``name`` is evaluated on at ``preset``: the preset itself,
    except at ``demo`` (evaluation sizes only), whose runs are those of its ``demo_tier``."""
    return demo_tier(name) if preset == DEMO else preset


def demo_config(name: str):
    """Figure ``name``'s ``demo`` config: the preset of its ``demo_tier`` with the demo's
    evaluation sizes (``Figure.demo``)."""
    figure = get_figure(name)
    return dataclasses.replace(figure.presets[demo_tier(name)], **figure.demo)


def source_hash() -> str:
    """A hash of the library's source, the report's own modules excluded (so restyling the
    report does not recompute the figures)."""
    root = Path(__file__).resolve().parent  # src/icmix
    digest = hashlib.sha1()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel not in REPORT_MODULES:
            digest.update(rel.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def figure_key(name: str, cfg, source: str) -> str:
    """What a figure's cached outputs depend on: its name, its config, the library's source and,
    for a figure from outside the library (a plugin), its own module's source."""
    blob = {"figure": name, "config": dataclasses.asdict(cfg), "source": source}
    module = Path(inspect.getfile(type(get_figure(name)))).resolve()
    if not module.is_relative_to(Path(__file__).resolve().parent):
        blob["plugin_source"] = hashlib.sha1(module.read_bytes()).hexdigest()
    return hashlib.sha1(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def figure_runs(name: str, cfg) -> list:
    """The ``TrainConfig`` of every training run the figure ``name`` needs under ``cfg`` (none
    for the estimator-only figures and the constructions)."""
    return list(get_figure(name).runs(cfg).values())


def _cost(tc) -> float:
    """A rough relative cost of a run, to start the longest first."""
    model = tc.model_config()
    tokens = getattr(tc.task, "length", None) or 2 * getattr(tc.task, "n_points", 1)
    return tc.steps * tc.batch_size * tokens * getattr(model, "n_layers", 1) ** 2


def environment() -> dict:
    """The basic environment (``experiments.common.environment``: Python, torch, numpy, platform,
    threads) plus the versions of scipy, pandas, matplotlib and safetensors (``None`` if absent),
    the device (the GPU's name or the CPU cores), the git commit and whether tracked files differ
    from it, and the host name."""
    import importlib.metadata as md

    import torch

    from icmix.experiments.common import environment as basic

    env = basic()
    for pkg in ("scipy", "pandas", "matplotlib", "safetensors"):
        try:
            env[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            env[pkg] = None
    env["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    env["git_commit"], env["git_dirty"] = _git()
    env["host"] = platform.node()
    return env


def _git() -> tuple[str | None, bool | None]:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if commit.returncode:
            return None, None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
        return commit.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def reproduce_all(preset: str = "quick", out: str | Path = "results/report", overrides: list[str] | None = None,
                  seeds: int | None = None, jobs: int | None = None, figures: list[str] | None = None,
                  force: bool = False, progress: bool = True, zoo: bool = True, launcher=None,
                  tracking: tuple[str, ...] = ()) -> Path:
    """Run every figure (cached ones skipped), then write the report; returns ``report.html``.

    With ``zoo`` (the default), a training run that ``OUT/runs`` lacks is taken from the model
    zoo (``icmix.zoo``) where it holds a sound run of the same name; the others are trained,
    through ``launcher`` (``icmix.train.launch``) if given, reporting to ``tracking`` (grouped by
    the first figure that needs them).  A launcher that does not wait raises ``Submitted``
    before any figure is drawn; the same call again draws them once the runs are finished.

    Every argument is checked and ``out`` proven writable before any work; ``out`` is held by
    this process alone meanwhile (``icmix.io.exclusive``)."""
    start = time.time()
    out = Path(out)
    configs = configs_for(preset, overrides, seeds, figures)
    jobs = min(os.cpu_count() or 1, 8) if jobs is None else jobs
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    with output_folder(out):
        return _reproduce_all(preset, out, overrides, configs, jobs, force, progress, start, zoo, launcher, tracking)


FIGURE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")


def _contained(out: Path, path: str) -> bool:
    """Whether ``path`` (relative, from a manifest) names a file inside ``out``."""
    try:
        return not Path(path).is_absolute() and (Path(out) / path).resolve().is_relative_to(Path(out).resolve())
    except (OSError, ValueError, TypeError):
        return False


def _sound_entries(figures: dict, out: Path) -> dict:
    """The figure entries of an earlier ``manifest.json`` that can be reused: a figure's name and
    an entry whose outputs all lie inside ``out`` (a manifest is a file; it may have been
    edited, and a report must not read, embed or link what lies outside its folder)."""
    if not isinstance(figures, dict):
        return {}
    return {name: entry for name, entry in figures.items()
            if isinstance(name, str) and FIGURE_NAME.match(name) and isinstance(entry, dict)
            and isinstance(entry.get("outputs", {}), dict)
            and all(isinstance(p, str) and _contained(out, p) for p in entry.get("outputs", {}).values())}


def take_from_zoo(jobs: list[tuple], progress: bool = True) -> dict[str, str]:
    """``icmix.zoo.place`` for ``(TrainConfig, run directory)`` pairs, a stale entry warned
    about (never used); ``{run name: reason}`` of the stale ones."""
    import warnings

    from icmix import zoo as zoo_mod

    placed, stale = zoo_mod.place(jobs, warn=lambda text: warnings.warn(text, stacklevel=2))
    if progress and placed:
        print(f"model zoo: {len(placed)} of {len(jobs)} training runs taken from the zoo (--no-zoo trains them)")
    return {Path(p).name: why for p, why in stale.items()}


def take_measurements(out: Path, preset: str, progress: bool = True) -> Path | None:
    """Copy the zoo's long-tier claims measurements (``icmix.zoo.measurements``) into ``out`` for
    the ``claims-scaling`` figure, with a record of where they came from
    (``icmix.experiments.scaling.SOURCE``: the zoo's file, its SHA-256, whether the package's
    manifest lists it).  ``out``'s own measurements (measured there, or a copy changed since) are
    kept; an earlier copy of the zoo's is replaced when the zoo's differ.  The file used, or ``None``."""
    import shutil

    from icmix import zoo as zoo_mod
    from icmix.experiments.scaling import SOURCE

    dest, record_path = out / zoo_mod.MEASUREMENTS, out / SOURCE
    source = zoo_mod.measurements("long") if preset in ("long", DEMO) else None
    if dest.exists():
        try:
            record = json.loads(record_path.read_text())
        except (OSError, ValueError):
            record = None
        copied = isinstance(record, dict) and record.get("sha256") == zoo_mod.sha256(dest)
        if not (copied and source is not None and zoo_mod.sha256(source) != record["sha256"]):
            return dest  # out's own measurements, or the zoo's as they are now
    if source is None:
        return None
    listed = zoo_mod.measurements_listed(source)
    atomic_write(dest, lambda p: shutil.copyfile(source, p))
    atomic_write(record_path, lambda p: Path(p).write_text(json.dumps(
        {"from": "model zoo", "zoo": str(source), "sha256": zoo_mod.sha256(dest), "listed": listed}, indent=2) + "\n"))
    if progress:
        print(f"model zoo: the long tier's claims measured at every budget ({source.name}) taken from the zoo"
              + ("" if listed else " (unlisted: not the file the package's manifest records)"))
    return dest


def _reproduce_all(preset: str, out: Path, overrides: list[str] | None, configs: dict, jobs: int, force: bool,
                   progress: bool, start: float, zoo: bool = True, launcher=None, tracking: tuple[str, ...] = ()) -> Path:
    from icmix.experiments.common import run_name
    from icmix.train import train_many

    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    previous = _sound_entries({**manifest.get("other_figures", {}), **manifest.get("figures", {})}, out)
    source = source_hash()
    keys = {name: figure_key(name, cfg, source) for name, cfg in configs.items()}

    def cached(name: str) -> bool:
        entry = previous.get(name, {})
        return (not force and entry.get("key") == keys[name] and entry.get("status") in ("ok", "cached")
                and all((out / p).exists() for p in entry.get("outputs", {}).values()))

    todo = [name for name in configs if not cached(name)]
    # The scheduler: every figure's runs pooled, each distinct run (its name is its config's
    # hash) trained once, before any figure computes; the figures then find them finished.
    runs, requested = {}, 0
    for name in todo:
        for tc in figure_runs(name, configs[name]):
            requested += 1
            runs.setdefault(out / "runs" / run_name(tc), (tc, set()))[1].add(name)
    order = sorted(runs, key=lambda p: -_cost(runs[p][0]))
    if zoo and "claims-scaling" in todo:
        take_measurements(out, preset, progress)
    finished = {p for p in order if (p / "model" / "model.safetensors").exists()}
    stale = take_from_zoo([(runs[p][0], p) for p in order if p not in finished], progress) if zoo else {}
    pending = [p for p in order if not (p / "model" / "model.safetensors").exists()]  # finished runs are reused
    zoo_runs = len(order) - len(finished) - len(pending)
    if progress:
        print(f"icmix reproduce all --preset {preset}: {len(configs)} figures, {len(configs) - len(todo)} cached; "
              f"training runs: {requested} requested by the figures, {len(runs)} distinct: {len(finished)} already "
              f"finished, {zoo_runs} from the model zoo, {len(pending)} to train, {jobs} at a time")
    groups = {p: next(name for name in configs if name in runs[p][1]) for p in pending}
    failed_runs = train_many([(runs[p][0], p) for p in pending], jobs, progress, errors="collect", launcher=launcher,
                             groups=groups, tracking=tracking) if pending else {}
    if progress and pending:
        print(f"training runs: {len(pending) - len(failed_runs)} of {len(pending)} trained"
              + (f", {len(failed_runs)} failed" if failed_runs else ""))

    results = {name: dict(previous[name], status="cached") for name in configs if name not in todo}
    entries = {}
    from icmix.zoo import source as run_source

    for name in todo:
        entries[name] = {"key": keys[name], "preset": preset, "seeds": list(getattr(configs[name], "seeds", ())),
                         "tier": _tier(name, preset),
                         "config": dataclasses.asdict(configs[name]),
                         "runs": {p.name: run_source(p) for p in order if name in runs[p][1]}}
        broken = {str(p.relative_to(out)): err for p, err in failed_runs.items() if name in runs[p][1]}
        if broken:
            entries[name].update(status="failed", wall_seconds=0.0,
                                 error="training failed:\n" + "\n".join(f"{p}: {e}" for p, e in broken.items()))
    ready = [name for name in todo if "status" not in entries[name]]
    for name, outcome in _run_figures(ready, configs, out, jobs, progress):
        entries[name].update(outcome)
        # The manifest after each figure, so an interrupted run keeps what it finished.
        done = {n: e for n, e in entries.items() if e.get("status") == "ok"}
        partial = {"preset": preset, "figures": {**previous, **done}}
        atomic_write(manifest_path, lambda p: Path(p).write_text(json.dumps(partial, indent=1, default=str)))
    for name in todo:
        entry = results[name] = entries[name]
        if entry["status"] == "failed":
            log = out / "logs" / f"{name}.txt"
            atomic_write(log, lambda p, text=entry["error"]: Path(p).write_text(text))
            if progress:
                print(f"icmix: {name} failed (see {log})")

    manifest = {"preset": preset, "overrides": overrides or [], "environment": environment(), "source_hash": source,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(start)),
                "wall_seconds": round(time.time() - start, 1),
                "training_runs": {str(p.relative_to(out)): sorted(runs[p][1]) for p in order},
                "training": {"requested": requested, "distinct": len(runs), "finished_before": len(finished),
                             "from_zoo": zoo_runs, "trained": len(pending) - len(failed_runs),
                             "failed": len(failed_runs)},
                "zoo": {"used": zoo, "stale": stale},
                "figures": {name: results[name] for name in configs},
                # Figures of earlier runs that this one did not include (--only): kept for the cache.
                "other_figures": {name: e for name, e in previous.items() if name not in configs}}
    atomic_write(manifest_path, lambda p: Path(p).write_text(json.dumps(manifest, indent=1, default=str)))
    return write_report(out, manifest, configs)


def run_figure(name: str, cfg, out: Path) -> dict:
    """Run one figure (what it prints goes to ``out/logs/<name>.log``); ``status``,
    ``wall_seconds`` and ``outputs`` (paths relative to ``out``), or the traceback as ``error``:
    a figure's failure is reported, never raised."""
    start = time.time()
    log = Path(out) / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(log, "w") as stream, contextlib.redirect_stdout(stream), contextlib.redirect_stderr(stream):
            paths = get_figure(name).run(cfg, out, progress=False)
        result = {"status": "ok", "outputs": {k: str(Path(p).relative_to(out)) for k, p in paths.items()}}
    except Exception:  # noqa: BLE001 - one figure's failure is reported, the others still run
        result = {"status": "failed", "error": traceback.format_exc()}
    return {**result, "wall_seconds": round(time.time() - start, 1)}


def _run_figures(names: list[str], configs: dict, out: Path, jobs: int, progress: bool):
    """Yield ``(name, run_figure(...))`` as figures finish: in this process for ``jobs == 1``,
    otherwise in ``jobs`` worker processes (the cores shared between them)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(names), desc="figures", disable=not progress)
    if jobs == 1 or len(names) <= 1:
        for name in names:
            bar.set_postfix_str(name)
            yield name, run_figure(name, configs[name], out)
            bar.update()
        bar.close()
        return
    from concurrent.futures import as_completed

    from icmix._pool import worker_pool

    with worker_pool(min(jobs, len(names))) as pool:
        futures = {pool.submit(run_figure, name, configs[name], out): name for name in names}
        for future in as_completed(futures):
            bar.set_postfix_str(futures[future])
            bar.update()
            yield futures[future], future.result()
    bar.close()


# --- the report ---------------------------------------------------------------------------------

def write_report(out: Path, manifest: dict, configs: dict, figures: list[str] | None = None) -> Path:
    """``claims.csv``, ``report.md`` and ``report.html`` (self-contained) under ``out``; returns
    the HTML path.  The claims are those of ``figures`` (default: every registered figure that
    has the manifest's preset; those not run read ``not run``)."""
    from icmix.experiments import claims as claims_mod

    out = Path(out)
    figs = manifest["figures"]
    available = {n for n, e in figs.items() if e["status"] in ("ok", "cached")}
    if figures is None:
        figures = figures_with(manifest["preset"])
    # a figure not run states its claims with the config the preset would have run it with
    unrun = [n for n in figures if n not in configs and get_figure(n).has_preset(manifest["preset"])]
    statements = configs_for(manifest["preset"], figures=unrun) if unrun else {}
    claims = claims_mod.evaluate(out, configs, available, [get_figure(name) for name in figures], statements)
    tiers = {n: e.get("tier", manifest["preset"]) for n, e in figs.items()}
    claims_table = claims_mod.table(claims, tiers)
    runs = runs_table(out, configs)
    md = _markdown(out, manifest, claims_table, runs)
    page = _html(out, manifest, claims_table, runs)
    with staged(out) as stage:  # the three files together or not at all
        claims_table.to_csv(stage / "claims.csv", index=False)
        (stage / "report.md").write_text(md)
        (stage / "report.html").write_text(page)
    return out / "report.html"


def write_figure_report(out: Path, name: str, cfg, paths: dict, preset: str, overrides: list[str] | None,
                        wall_seconds: float) -> Path:
    """The report of one figure run by ``icmix reproduce NAME`` (its claims in ``claims.csv``,
    ``report.md``, ``report.html``); ``paths``: the files ``Figure.run`` wrote."""
    out = Path(out)
    entry = {"status": "ok", "preset": preset, "seeds": list(getattr(cfg, "seeds", ())),
             "tier": _tier(name, preset), "config": dataclasses.asdict(cfg), "wall_seconds": round(wall_seconds, 1),
             "outputs": {k: str(Path(p).relative_to(out)) for k, p in paths.items()}}
    manifest = {"preset": preset, "overrides": overrides or [], "environment": environment(),
                "wall_seconds": round(wall_seconds, 1), "figures": {name: entry}}
    return write_report(out, manifest, {name: cfg}, [name])


def runs_table(out: Path, configs: dict):
    """One row per training run of the figures in ``configs`` that ``OUT/runs`` holds: its
    figures, whether it came from the model zoo or was trained, and its convergence."""
    import pandas as pd

    from icmix.experiments.common import run_name
    from icmix.train.convergence import run_convergence
    from icmix.zoo import source, unlisted

    figures_of: dict[str, list[str]] = {}
    for name, cfg in configs.items():
        for tc in figure_runs(name, cfg):
            figures_of.setdefault(run_name(tc), []).append(name)
    rows = []
    for name, figs in figures_of.items():
        run = Path(out) / "runs" / name
        if not (run / "model" / "model.safetensors").exists():
            continue
        row = {"run": name, "figures": ", ".join(figs), "source": source(run), "unlisted": unlisted(run)}
        try:
            c = run_convergence(run)
            row.update(steps=c.steps, metric=c.metric, final=f"{c.final:.4g}", excess=_shown(c.excess, ".3g"),
                       improvement=_shown(c.improvement, ".1%"), converged=c.status)
        except (ValueError, OSError) as err:
            row.update(converged=f"? ({err})")
        rows.append(row)
    return pd.DataFrame(rows)


def _shown(value: float, spec: str) -> str:
    """``value`` formatted, or ``–`` where it is unknown (NaN: no optimum to measure against)."""
    return "–" if value != value else format(value, spec)


def verifications(out: Path) -> list[dict]:
    """The zoo verification records under ``OUT/zoo-verify`` (``icmix zoo verify RUN --out OUT``)."""
    return [json.loads(p.read_text()) for p in sorted((Path(out) / "zoo-verify").glob("*.json"))]


def _verification_lines(out: Path) -> list[str]:
    lines = []
    for r in verifications(out):
        if r.get("integrity") or r.get("step", "retraining") != "retraining":
            lines.append(f"**FAIL** `{r['run']}` at the {r.get('step', 'integrity')} check, not retrained: {r['reason']}.")
            continue
        evaluated = "; ".join(f"{k} {v:.6g}" for k, v in (r.get("evaluation") or {}).get("measured", {}).items())
        lines.append(f"**{r['status'].upper()}** `{r['run']}`: the shipped weights give their recorded final metrics "
                     f"({evaluated or 'not checked'}); "
                     + (f"resumed from its tail checkpoint (step {r['from_step']}) " if r.get("from_step") else
                        "retrained from scratch ") + f"in {r['retrain_seconds']:.0f} s "
                     f"({r['here']['cpu']}, {r['here']['threads']} thread(s), torch {r['here']['torch']}): {r['reason']}. "
                     f"Final {r['metric']}: shipped {r['metric_shipped']:.6g}, retrained {r['metric_retrained']:.6g}; "
                     f"largest weight difference {r['max_weight_difference']:.3g}. Shipped by {r['shipped'].get('cpu')} "
                     f"with {r['shipped'].get('threads')} thread(s), commit {str(r['shipped'].get('git_commit'))[:10]}.")
    return lines


def _runs_lines(manifest: dict, runs) -> list[str]:
    from icmix.train.convergence import DEFINITION

    if runs.empty:
        return []
    n_zoo = int((runs.source == "zoo").sum())
    stale = (manifest.get("zoo") or {}).get("stale") or {}
    lines = [f"{len(runs)} training runs: {n_zoo} taken from the model zoo (`icmix zoo list`), "
             f"{len(runs) - n_zoo} trained here. Convergence: {DEFINITION}."]
    lines += [f"Stale zoo entry not used (trained instead): `{name}`: {why}" for name, why in stale.items()]
    lines += [f"Unlisted zoo entry (not in the package's zoo manifest; its weights were checked against its recorded "
              f"metrics only): `{name}`" for name in runs.run[runs.unlisted]]
    return lines


def _shown_runs(runs):
    """The runs table as shown: the ``unlisted`` column only where a run is."""
    return runs if runs.unlisted.any() else runs.drop(columns="unlisted")


def _summary(out: Path, name: str) -> str:
    path = out / f"{name}.md"
    if not path.exists():
        return ""
    text = path.read_text()
    return text.split("\n", 2)[2] if text.startswith("# ") else text


def _header(manifest: dict) -> list[str]:
    env = manifest.get("environment", {})
    n_ok = sum(e["status"] in ("ok", "cached") for e in manifest["figures"].values())
    commit = env.get("git_commit") or "unknown"
    if env.get("git_dirty"):
        commit += " (with uncommitted changes)"
    return [f"preset **{manifest['preset']}**; {n_ok} of {len(manifest['figures'])} figures; total wall time "
            f"{manifest.get('wall_seconds', 0):.0f} s; started {manifest.get('started', '?')}",
            f"icmix commit {commit}; device {env.get('device', '?')}; torch {env.get('torch')}, numpy {env.get('numpy')}, "
            f"python {env.get('python')}; overrides: {', '.join(manifest.get('overrides', [])) or 'none'}"]


def _status(entry: dict) -> str:
    seeds = entry.get("seeds") or []
    sources = list((entry.get("runs") or {}).values())
    runs = (f"; training runs: {sources.count('zoo')} from the model zoo, {sources.count('trained')} trained here"
            if sources else "")
    return (f"{entry['status']}, {entry.get('wall_seconds', 0):.0f} s" + (" (when computed)" if entry["status"] == "cached" else "")
            + (f", seeds {', '.join(map(str, seeds))}" if seeds else "") + runs)


def _markdown(out: Path, manifest: dict, claims, runs) -> str:
    from icmix.experiments.claims import RULE
    from icmix.experiments.scaling import CONVERGENCE, MODELS
    from icmix.train.convergence import DEFINITION

    parts = ["# icmix: both papers reproduced", "", *(f"- {line}" for line in _header(manifest)), "",
             "## Claims", "", claims.drop(columns=["figures"]).to_markdown(index=False), "",
             f"*verdict*: {RULE}.", "",
             f"*converged*: {DEFINITION}; for a claim the claims-scaling figure measured at every budget, "
             f"{CONVERGENCE}. A claim that fails on runs that had not converged reads *not converged* (unless its "
             "scaling data extrapolate to a failure at the paper's budget). *basis*: the "
             "tier of training runs (cpu: the cpu preset's; long: the long tier's) and the seeds a claim rests on.", "",
             f"*extrapolation* (in the notes): {MODELS}.", ""]
    checks = _verification_lines(out)
    if checks:
        parts += ["## Model zoo verification", "", *(f"- {line}" for line in checks), ""]
    if not runs.empty:
        parts += ["## Training runs", "", *_runs_lines(manifest, runs), "", _shown_runs(runs).to_markdown(index=False), ""]
    for name, entry in manifest["figures"].items():
        parts += [f"## {name}", "", f"*{_status(entry)}*", ""]
        if entry["status"] == "failed":
            parts += ["```", entry.get("error", "").strip(), "```", ""]
            continue
        png = entry.get("outputs", {}).get("png")
        if png:
            parts += [f"![{name}]({png})", ""]
        parts += [_summary(out, name), ""]
    return "\n".join(parts)


CSS = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.8em 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; vertical-align: top; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
table.claims td, table.claims th { text-align: left; }
.holds { background: #e3f4e3; } .doesnt { background: #fbe3e3; } .notrun { background: #eee; }
.notconverged { background: #fdf3dc; } .inconclusive { background: #e8eef8; }
.failed { color: #a00; }
img { max-width: 100%; border: 1px solid #ddd; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.8em; }
nav a { margin-right: 0.8em; }
"""


def _html(out: Path, manifest: dict, claims, runs) -> str:
    import markdown

    from icmix.experiments.claims import RULE
    from icmix.experiments.scaling import CONVERGENCE, MODELS
    from icmix.train.convergence import DEFINITION

    def md(text: str) -> str:  # raw HTML in the text (a stale entry's reason, say) is shown, never run
        converter = markdown.Markdown(extensions=["tables"])
        converter.preprocessors.deregister("html_block")
        converter.inlinePatterns.deregister("html")
        return converter.convert(text)

    css_class = {claims_verdict: cls for claims_verdict, cls in (("holds", "holds"), ("doesn't", "doesnt"),
                                                                   ("not run", "notrun"), ("no data", "notrun"),
                                                                   ("not converged", "notconverged"),
                                                                   ("inconclusive", "inconclusive"))}
    rows = "".join(
        f"<tr class='{css_class.get(r.verdict, '')}'><td>{html.escape(r.paper)}</td><td>{html.escape(r.claim)}</td>"
        f"<td>{html.escape(r.test)}</td><td>{html.escape(r.measured)}</td><td><b>{html.escape(r.verdict)}</b></td>"
        f"<td>{html.escape(r.converged)}</td><td>{html.escape(r.basis)}</td>"
        f"<td>{html.escape(r.note or '')}</td><td>{' '.join(f'<a href=#{f}>{f}</a>' for f in r.figures.split(', ') if f)}</td></tr>"
        for r in claims.itertuples())
    body = ["<h1>icmix: both papers reproduced</h1>", "<ul>" + "".join(f"<li>{md(line)[3:-4]}</li>" for line in _header(manifest)) + "</ul>",
            "<nav>" + "".join(f"<a href='#{html.escape(n)}'>{html.escape(n)}</a>" for n in manifest["figures"]) + "</nav>",
            "<h2>Claims</h2>",
            "<table class='claims'><tr><th>paper</th><th>claim</th><th>test</th><th>measured</th><th>verdict</th>"
            f"<th>converged</th><th>basis</th><th>note</th><th>figures</th></tr>{rows}</table>",
            md(f"*verdict*: {RULE}."),
            md(f"*converged*: {DEFINITION}; for a claim the claims-scaling figure measured at every budget, "
               f"{CONVERGENCE}. A claim that fails on runs that had not converged reads *not converged* (unless "
               "its scaling data extrapolate to a failure at the paper's budget). *basis*: "
               "the tier of training runs (cpu: the cpu preset's; long: the long tier's) and the seeds a claim rests on."),
            md(f"*extrapolation* (in the notes): {MODELS}.")]
    checks = _verification_lines(out)
    if checks:
        body.append("<h2 id='zoo-verify'>Model zoo verification</h2>" + md("\n".join(f"- {line}" for line in checks)))
    if not runs.empty:
        body.append("<h2 id='runs'>Training runs</h2>" + md("\n\n".join(_runs_lines(manifest, runs)))
                    + md(_shown_runs(runs).to_markdown(index=False)))
    for name, entry in manifest["figures"].items():
        body.append(f"<h2 id='{html.escape(name)}'>{html.escape(name)}</h2><p><i>{html.escape(_status(entry))}</i></p>")
        if entry["status"] == "failed":
            body.append(f"<pre class='failed'>{html.escape(entry.get('error', ''))}</pre>")
            continue
        outputs = entry.get("outputs", {})
        png = out / outputs["png"] if "png" in outputs and _contained(out, outputs["png"]) else None
        if png and png.exists():
            data = base64.b64encode(png.read_bytes()).decode()
            body.append(f"<img alt='{name}' src='data:image/png;base64,{data}'>")
        links = [f"<a href='{html.escape(p)}'>{html.escape(Path(p).name)}</a>" for k, p in outputs.items()
                 if k != "png" and _contained(out, p)]
        body.append(f"<p>files: {' · '.join(links)}</p>" + md(_summary(out, name)))
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>icmix report</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>\n")
