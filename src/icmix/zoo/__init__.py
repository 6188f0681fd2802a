"""The model zoo: every training run of a preset, trained once and shipped with the package.

``icmix reproduce … --preset cpu`` takes a run from the zoo wherever it needs a run of the same
name (config hash) that ``OUT/runs`` lacks, so a newcomer sees the converged ``cpu`` results
in minutes; ``--no-zoo`` trains instead.  A zoo entry ``zoo/<preset>/<run name>/`` holds what
a finished run directory needs to be a predictor, and nothing to resume from:

- ``config.yaml``, ``metrics.jsonl`` (the deterministic record) and ``model/`` (safetensors +
  the model's config); no optimiser state, no checkpoints;
- ``provenance.json``: the command, git commit, torch and Python versions, CPU model, threads,
  wall time, the figures that use the run, its convergence data (the optimum on its evaluation
  batch and the windows of its metric that ``zoo list`` reads, ``convergence_record``), the
  SHA-256 of every file above, and a ``digest`` of all these fields.

A zoo may come from anyone (``ICMIX_ZOO=DIR``), so nothing in it is trusted unchecked:

- an entry is *stale* (reported, never used) when a file's SHA-256 differs from its
  provenance, the provenance's digest does not match its fields, the current code no longer
  gives its config the same run name, or, in the zoo shipped with the package, its
  ``provenance.json`` is not the one the package's manifest (``icmix.zoo.shipped``) records;
- an entry outside the shipped zoo that the manifest does not list is *unlisted*: used, and
  labelled as such in ``zoo list`` and in a report;
- ``check_evaluation`` evaluates an entry's weights on its run's evaluation batch (seconds) and
  compares them with its recorded final metrics: ``place`` does it before it uses an entry,
  and ``verify`` before it retrains one;
- ``verify`` then retrains the run from scratch (with the recorded number of threads) and
  compares the weights: identical bits where the CPU and torch build match, otherwise the
  final eval metric against a stated tolerance.

Build the zoo with ``icmix zoo build --preset cpu --jobs 2`` (``jobs`` runs at once, each in its
own process with ``--threads`` threads; a finished entry is skipped and an unfinished run
resumes from its checkpoint, so an interrupted build loses at most the steps since the last
one), then seal the shipped zoo with ``icmix zoo manifest --write``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

ZOO_ROOT = Path(__file__).resolve().parent  # the shipped zoo; ICMIX_ZOO=DIR points icmix at another
FILES = ("config.yaml", "metrics.jsonl", "model/model.safetensors", "model/config.json")
PROVENANCE = "provenance.json"
# A long-tier entry's *tail*: its checkpoint TAIL_STEPS before the end (weights, optimiser and
# generators), from which ``verify --tail`` resumes and must end on the shipped weights.  Shipped
# for the first seed of each long config whose tail is at most TAIL_MAX_BYTES: every seed's would
# not fit the zoo's size cap, nor would the regression GPT's (2.4 MB each); those are verified by
# retraining them from the start (``verify`` without ``--tail``).
TAIL = "tail"
TAIL_MAX_BYTES = 2 * 2**20
from icmix.experiments.common import TAIL_STEPS  # noqa: E402 - one number for the figures' cadence and the zoo
TAIL_FILES = tuple(f"{TAIL}/{f}" for f in ("model.safetensors", "trainer.safetensors", "trainer.json", "config.yaml",
                                            "checksums.json"))


def entry_files(provenance: dict) -> tuple[str, ...]:
    """The files an entry with this provenance holds (``FILES``, and ``TAIL_FILES`` if it ships a tail)."""
    return FILES + (TAIL_FILES if "tail_step" in provenance else ())


def ships_tail(preset: str, tc) -> bool:
    """Whether the zoo entry of run ``tc`` in tier ``preset`` ships its tail: the long tier's
    runs of the first seed whose tail (``tail_bytes``) is at most ``TAIL_MAX_BYTES``."""
    return preset == "long" and tc.seed == 0 and tc.steps > TAIL_STEPS and tail_bytes(tc) <= TAIL_MAX_BYTES


def tail_bytes(tc) -> int:
    """The size of run ``tc``'s tail checkpoint, to within its JSON files, generator states and
    per-tensor step counts: float32 weights and the optimiser's two moments (Adam), 12 bytes a
    parameter.  The model is built on the meta device: nothing is allocated."""
    import torch

    from icmix.train import build_model

    with torch.device("meta"):
        model = build_model(tc)
    return 12 * sum(p.numel() for p in model.parameters())


def default_root() -> Path:
    """The zoo icmix reads: ``$ICMIX_ZOO`` if set (your own, e.g. a cluster-trained ``paper``
    zoo), else the one shipped with the package."""
    return Path(os.environ.get("ICMIX_ZOO") or ZOO_ROOT)


def zoo_dir(preset: str, root: Path | None = None) -> Path:
    """The folder of ``preset``'s entries in the zoo at ``root`` (``default_root()`` when ``None``)."""
    return Path(root or default_root()) / preset


def preset_runs(preset: str, only: list[str] | None = None) -> dict[str, tuple]:
    """``{run name: (TrainConfig, [figure names])}``: every training run of ``preset`` over the
    registered figures that have it (or those in ``only``), each once, in report order."""
    from icmix.experiments.common import run_name
    from icmix.experiments.figure import figures_with, get_figure

    runs: dict[str, tuple] = {}
    for name in only or figures_with(preset):
        fig = get_figure(name)
        if not fig.zoo:
            continue
        for tc in fig.runs(fig.preset(preset)).values():
            runs.setdefault(run_name(tc), (tc, []))[1].append(name)
    return runs


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# Instruction-set extensions that choose math kernels (x86 and Arm ``/proc/cpuinfo`` names).
ISA_FLAGS = (r"(avx|amx|sse|ssse|fma|f16c|bmi|adx|aes|vaes|pclmul|vpclmul|gfni|sha|popcnt|movbe|abm|"
             r"asimd|sve|fp|fphp|i8mm|bf16)")


def cpu_features() -> str:
    """What decides the CPU kernels torch runs, beyond the model name (a cloud's "AMD EPYC" is
    several generations): torch's CPU capability and a hash of the instruction-set extensions
    among the CPU flags (``/proc/cpuinfo``; not the flags a kernel, hypervisor or microcode
    update changes), e.g. ``AVX512 flags:1a2b3c4d``.  Bit-identical retraining is expected only
    where this and the torch build match."""
    import hashlib
    import re

    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    try:
        flags = next(line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith(("flags", "Features")))
    except (OSError, StopIteration):
        return capability
    flags = [f for f in flags if re.match(ISA_FLAGS, f)]
    return f"{capability} flags:{hashlib.sha1(' '.join(sorted(flags)).encode()).hexdigest()[:8]}"


def git_commit(path: Path = ZOO_ROOT) -> str:
    """The git commit of the source tree holding ``path`` (``unknown`` outside a checkout);
    ``+dirty`` when tracked files under ``src/`` differ from it."""
    try:
        head = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        top = subprocess.run(["git", "-C", str(path), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", top, "diff", "--quiet", "HEAD", "--", "src"]).returncode != 0
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def sha256(path: Path) -> str:
    """The hex SHA-256 of the file at ``path``, read in blocks of 1 MiB."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def digest(provenance: dict) -> str:
    """The SHA-256 of every field of a provenance record but ``digest`` itself (canonical JSON):
    an edited field no longer matches it."""
    fields = {k: v for k, v in provenance.items() if k != "digest"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def export(run: Path, dest: Path, provenance: dict, tail: int | None = None) -> Path:
    """Copy a finished run's ``FILES`` into the zoo entry ``dest`` with ``provenance.json``
    (plus the files' SHA-256 and the record's digest); with ``tail``, also its checkpoint of that
    step as ``tail/`` (``TAIL_FILES``).  The entry appears whole or not at all."""
    from icmix.io import staged_directory

    run, dest = Path(run), Path(dest)
    if not (run / "model" / "model.safetensors").exists():
        raise ValueError(f"{run} has not finished (no final model)")
    sources = {rel: run / rel for rel in FILES}
    if tail is not None:
        ckpt = run / "checkpoints" / f"step_{tail:07d}"
        if not ckpt.is_dir():
            raise ValueError(f"{run} has no checkpoint at step {tail} to ship as its tail (keep it: "
                             "keep_checkpoints, checkpoint_every)")
        sources.update({rel: ckpt / Path(rel).name for rel in TAIL_FILES})
        provenance = {**provenance, "tail_step": tail}
    provenance = {**provenance, CONVERGENCE: convergence_record(run)}
    dest.parent.mkdir(parents=True, exist_ok=True)
    with staged_directory(dest, replaces=(*FILES, PROVENANCE, "model", TAIL)) as stage:
        for rel, source in sources.items():
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, stage / rel)
        record = {**provenance, "sha256": {rel: sha256(stage / rel) for rel in sources}}
        record["digest"] = digest(record)
        (stage / PROVENANCE).write_text(json.dumps(record, indent=2) + "\n")
    return dest


CONVERGENCE = "convergence"  # in a provenance: the run's convergence data, computed when it is shipped


def convergence_record(run: Path) -> dict | None:
    """What ``zoo list`` shows of a run's convergence, computed once, when it is shipped: the
    fields of its ``icmix.train.convergence.Convergence`` but the rule's tolerance (the verdict is
    taken under the current rule when read).  ``None`` where the run cannot be judged."""
    from dataclasses import asdict

    from icmix.train.convergence import run_convergence

    try:
        record = asdict(run_convergence(run))
    except ValueError:
        return None
    record.pop("tolerance")
    return record


def stored_convergence(provenance: dict):
    """The ``Convergence`` recorded in a provenance (``convergence_record``), or ``None``."""
    from icmix.train.convergence import Convergence

    record = provenance.get(CONVERGENCE)
    if not isinstance(record, dict):
        return None
    try:
        return Convergence(**record)
    except TypeError:  # another icmix's fields
        return None


def rewrite_provenance(entry: "Entry", provenance: dict) -> None:
    """Write ``provenance`` (its old digest, if any, dropped) as the entry's, digested again (then
    ``icmix zoo manifest --write`` seals it)."""
    from icmix.io import atomic_write

    record = {k: v for k, v in provenance.items() if k != "digest"}
    record["digest"] = digest(record)
    atomic_write(entry.path / PROVENANCE, lambda p: Path(p).write_text(json.dumps(record, indent=2) + "\n"))


def add_convergence(entry: "Entry", record: dict | None = None) -> None:
    """Record an entry's convergence data (``convergence_record``, or ``record``) in its provenance."""
    rewrite_provenance(entry, {**entry.provenance,
                               CONVERGENCE: record if record is not None else convergence_record(entry.path)})


def drop_tail(entry: "Entry") -> None:
    """Stop shipping an entry's tail (after ``ships_tail`` changed): its provenance loses the tail's
    step and hashes and is digested again, then ``tail/`` goes (then ``icmix zoo manifest --write``
    seals it)."""
    provenance = {k: v for k, v in entry.provenance.items() if k != "tail_step"}
    provenance["sha256"] = {rel: h for rel, h in provenance["sha256"].items() if rel not in TAIL_FILES}
    rewrite_provenance(entry, provenance)
    shutil.rmtree(entry.path / TAIL)


def train_entry(name: str, tc, figures: list[str], work: Path, dest: Path, threads: int = 1,
                command: str | None = None, tail: int | None = None) -> Path:
    """Train the run ``name`` from scratch (or resume it) under ``work/name`` with ``threads``
    torch threads, then export it to ``dest``."""
    import torch

    from icmix.train import train

    torch.set_num_threads(threads)
    run = Path(work) / name
    resumed = (run / "config.yaml").exists()
    start = time.time()
    train(tc, run, resume=resumed, progress=False)
    wall = time.time() - start
    prov = {
        "run": name, "figures": figures, "steps": tc.steps,
        "command": command or shlex.join(["icmix", *sys.argv[1:]]),
        "git_commit": git_commit(), "torch": torch.__version__, "python": platform.python_version(),
        "cpu": cpu_model(), "cpu_features": cpu_features(), "threads": torch.get_num_threads(),
        "wall_seconds": round(wall, 1),
        "trained": time.strftime("%Y-%m-%dT%H:%M:%S"),
        # wall time of this call only: a resumed run's earlier part is in its progress.jsonl
        "resumed": resumed,
    }
    return export(run, dest, prov, tail)


def build(preset: str, work: Path, root: Path | None = None, only: list[str] | None = None,
          names: list[str] | None = None, threads: int = 1, progress: bool = True, jobs: int = 1) -> list[Path]:
    """Train and export every run of ``preset`` (of the figures ``only``, or the runs ``names``)
    that the zoo lacks, ``jobs`` at a time in worker processes; the new entries."""
    from tqdm.auto import tqdm

    runs = preset_runs(preset, only)
    if names:
        unknown = sorted(set(names) - set(runs))
        if unknown:
            raise ValueError(f"not a run of the {preset} preset: {', '.join(unknown)}")
        runs = {n: runs[n] for n in names}
    found = entries(root)
    todo = {}
    for n, v in runs.items():
        problems = found[n].problems(manifest=False) if n in found else []
        if problems:
            warnings.warn(f"zoo run {n} is stale ({'; '.join(problems)}): training it again")
        elif n in found:
            continue
        todo[n] = v
    command = shlex.join(["icmix", *sys.argv[1:]])
    args = [(name, tc, figures, Path(work), zoo_dir(preset, root) / name, threads, command,
             tc.steps - TAIL_STEPS if ships_tail(preset, tc) else None)
            for name, (tc, figures) in todo.items()]
    bar = tqdm(total=len(args), desc=f"zoo {preset}", disable=not progress)
    done = []
    if jobs <= 1 or len(args) <= 1:
        for a in args:
            done.append(train_entry(*a))
            bar.update()
    else:
        from concurrent.futures import as_completed

        from icmix._pool import worker_pool

        with worker_pool(min(jobs, len(args))) as pool:
            for future in as_completed([pool.submit(train_entry, *a) for a in args]):
                done.append(future.result())
                bar.update()
    bar.close()
    return done


# --- reading the zoo -----------------------------------------------------------------------------

SIZE_CAP, FILE_CAP = 40 * 2**20, 2 * 2**20  # the whole zoo (every tier), one file (bytes)


@dataclass
class Entry:
    """One zoo run: its folder, preset and ``provenance.json``."""

    name: str
    path: Path
    preset: str
    provenance: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        """``preset/run name``: the entry's key in the package's manifest."""
        return f"{self.preset}/{self.name}"

    def shipped_here(self) -> bool:
        """Whether the entry lies in the zoo shipped with the package."""
        return self.path.resolve().is_relative_to(ZOO_ROOT)

    def listed(self) -> bool:
        """Whether the package's manifest lists this very entry (its ``provenance.json``, and so
        every file it hashes, is the one shipped)."""
        from icmix.zoo.shipped import SHIPPED

        prov = self.path / PROVENANCE
        return self.key in SHIPPED and prov.is_file() and sha256(prov) == SHIPPED[self.key]

    def problems(self, manifest: bool = True, evaluate: bool = False, names: bool = True) -> list[str]:
        """Why the entry must not be used (empty when it is sound): a missing or altered file
        (SHA-256 against its provenance), a provenance whose fields no longer match its digest,
        an entry of the shipped zoo that is not the one the package's manifest records, or a
        config the current code names differently (the run-name scheme or a config default
        changed since it was trained).  ``manifest=False`` leaves the manifest out (``build``,
        adding entries to the shipped zoo before the manifest is written again).  ``evaluate``
        adds, for an entry sound on paper, ``check_evaluation``: weights that do not give the
        run's recorded final metrics (about a second).  ``names=False`` leaves out the run-name
        check (it needs torch: ``zoo list`` of the sealed shipped zoo skips it; its tests check it)."""
        from icmix.zoo.shipped import SHIPPED

        if "unreadable" in self.provenance:
            return [self.provenance["unreadable"]]
        out = []
        if manifest and self.shipped_here() and not self.listed():
            out.append(f"{PROVENANCE} is not the one the package's zoo manifest records (edited after shipping)"
                       if self.key in SHIPPED else "it is not in the package's zoo manifest (added after shipping)")
        if "digest" in self.provenance and self.provenance["digest"] != digest(self.provenance):
            out.append(f"{PROVENANCE} was edited: its fields no longer match its digest")
        recorded = self.provenance.get("sha256", {})
        files = entry_files(self.provenance)
        links = [rel for rel in ("model", TAIL, PROVENANCE, *files) if (self.path / rel).is_symlink()]
        out += [f"{rel} is a link, not a file" for rel in links]  # a link would copy what it points at
        for rel in files:
            f = self.path / rel
            if rel in links or any(d in links and rel.startswith(d + "/") for d in ("model", TAIL)):
                continue
            if not f.exists():
                out.append(f"{rel} is missing")
            elif rel not in recorded:
                out.append(f"{rel} has no recorded SHA-256")
            elif sha256(f) != recorded[rel]:
                out.append(f"{rel} differs from the file shipped (SHA-256 mismatch)")
        if names and (self.path / "config.yaml").exists():
            from icmix.experiments.common import run_name
            from icmix.train import TrainConfig

            try:
                now = run_name(TrainConfig.from_yaml(self.path / "config.yaml"))
            except (ValueError, TypeError, KeyError) as err:
                out.append(f"its config.yaml is no longer a valid config: {err}")
            else:
                if now != self.name:
                    out.append(f"its config is now named {now} (the config or naming changed since it was trained)")
        if evaluate and not out:
            evaluation = check_evaluation(self)
            if not evaluation["ok"]:
                out.append(evaluation["reason"])
        return out


def entries(root: Path | None = None) -> dict[str, Entry]:
    """Every zoo entry under ``root`` (default: ``default_root()``), by run name."""
    found = {}
    for prov in sorted(Path(root or default_root()).glob(f"*/*/{PROVENANCE}")):
        entry = prov.parent
        if entry.name.startswith("."):  # an entry being written (staged_directory)
            continue
        try:
            record = json.loads(prov.read_text())
        except (ValueError, OSError) as err:  # reported by problems(), never fatal to the others
            record = {"unreadable": f"{prov} cannot be read: {err}"}
        found[entry.name] = Entry(entry.name, entry, entry.parent.name, record)
    return found


def lookup(name: str, root: Path | None = None) -> Entry:
    """The entry named ``name``, or the one whose name starts with it; ``ValueError`` otherwise.
    ``preset/name`` (``long/gpt3-m3-T32-mse-seed0``) looks in that preset's tier only."""
    found = entries(root)
    if "/" in name:
        preset, name = name.split("/", 1)
        found = {n: e for n, e in found.items() if e.preset == preset}
    if name in found:
        return found[name]
    hits = [n for n in found if n.startswith(name.rstrip(".…"))]
    if len(hits) == 1:
        return found[hits[0]]
    if hits:
        raise ValueError(f"{name!r} matches {len(hits)} zoo runs: {', '.join(hits[:6])}{' …' if len(hits) > 6 else ''}")
    raise ValueError(f"no zoo run named {name!r} ({len(found)} runs; see icmix zoo list)")


class Loaded(NamedTuple):
    """What ``load`` returns: the trained ``model`` (in eval mode), its run's ``config``
    (``TrainConfig``) and the ``task`` it was trained on."""

    model: object
    config: object
    task: object


def load(name: str, root: Path | None = None) -> Loaded:
    """A zoo run in one line: ``model, cfg, task = icmix.zoo.load("gpt3-m3-T32-mse-seed0")``.

    ``name`` is a run name or a unique prefix of one, optionally after its tier
    (``long/gpt3-m3-T32-mse-seed0``; see ``lookup``).  The entry is checked first,
    as ``place`` checks one before using it: every file against its SHA-256, its provenance
    against its digest and, in the shipped zoo, the package's manifest; a stale entry is a
    ``ValueError`` saying why.  The weights are read from safetensors, never unpickled."""
    from icmix.train.loop import build_task, load_run

    entry = lookup(name, root)
    problems = entry.problems(names=False)
    if problems:
        raise ValueError(f"zoo run {entry.name} cannot be used: {'; '.join(problems)}")
    cfg, model = load_run(entry.path)
    return Loaded(model.eval(), cfg, build_task(cfg))


MARKER = "zoo.json"  # in a run directory taken from the zoo: the entry's provenance


def check_evaluation(entry: Entry) -> dict:
    """Evaluate the entry's weights on its run's evaluation batch and compare them with its
    recorded final metrics (``icmix.train.loop.reevaluate``; about a second on 2 cores):
    ``{"ok", "recorded", "measured", "reason"}``.  Weights altered in any way that matters
    (zeroed, another run's, retrained elsewhere) do not give the recorded numbers."""
    from icmix.train.loop import REEVALUATION_RTOL, reevaluate, reevaluation_mismatches

    try:
        recorded, measured = reevaluate(entry.path)
    except Exception as err:  # noqa: BLE001 - a stranger's files may fail in any way; each failure makes the entry unusable
        return {"ok": False, "recorded": {}, "measured": {},
                "reason": f"its weights cannot be evaluated ({type(err).__name__}: {str(err)[:300]})"}
    wrong = reevaluation_mismatches(recorded, measured)
    reason = ("its weights do not give its recorded final metrics: " + "; ".join(wrong)
              + f" (tolerance {REEVALUATION_RTOL:g} relative)") if wrong else ""
    return {"ok": not wrong, "recorded": recorded, "measured": measured, "reason": reason}


def place(jobs: list[tuple], root: Path | None = None, warn=None) -> tuple[list[Path], dict[Path, str]]:
    """Put the zoo's copy of each ``(TrainConfig, run directory)`` whose directory does not
    exist yet (a run started or finished in ``OUT`` is never replaced), once the entry is sound,
    is the config asked for, and its weights give its recorded final metrics (``check_evaluation``).  Returns
    the run directories filled from the zoo and ``{run directory: reason}`` for zoo entries of
    the same name that are stale and were not used (each also passed to ``warn``)."""
    from icmix.experiments.common import run_name
    from icmix.io import staged_directory

    found = entries(root)
    placed, stale = [], {}
    for tc, path in jobs:
        path = Path(path)
        entry = found.get(path.name)
        if entry is None or path.exists() or run_name(tc) != path.name:
            continue
        problems = entry.problems()
        if not problems and (entry.path / "config.yaml").read_text() != tc.identity().to_yaml():
            problems = ["its config differs from the one asked for (same name, different config)"]
        if not problems:  # the config asked for, sound on paper: its weights must also give its numbers
            evaluation = check_evaluation(entry)
            problems = [] if evaluation["ok"] else [evaluation["reason"]]
        if problems:
            stale[path] = "; ".join(problems)
            if warn:
                warn(f"zoo run {entry.name} is stale and was not used: {stale[path]}")
            continue
        with staged_directory(path) as stage:
            for rel in FILES:
                (stage / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(entry.path / rel, stage / rel)
            (stage / MARKER).write_text(json.dumps({**entry.provenance, "preset": entry.preset, "listed": entry.listed(),
                                                    "zoo": str(entry.path)}, indent=2) + "\n")
        placed.append(path)
    return placed, stale


def source(run: Path) -> str:
    """``zoo`` if the run directory was taken from the zoo, ``trained`` otherwise."""
    return "zoo" if (Path(run) / MARKER).exists() else "trained"


def unlisted(run: Path) -> bool:
    """Whether a run directory was taken from a zoo entry the package's manifest does not list
    (a zoo of ``ICMIX_ZOO``: checked by evaluation only).  Runs placed by an icmix older than
    the manifest say nothing either way, and are not labelled."""
    marker = Path(run) / MARKER
    if not marker.exists():
        return False
    try:
        record = json.loads(marker.read_text())
    except (ValueError, OSError):
        return True
    return not isinstance(record, dict) or record.get("listed", True) is not True


def sizes(root: Path | None = None) -> tuple[int, list[tuple[str, int]]]:
    """The zoo's total size in bytes and every file's ``(path relative to the zoo, bytes)``."""
    base = Path(root or default_root())
    files = [(p.relative_to(base).as_posix(), p.stat().st_size) for e in entries(root).values()
             for p in sorted(e.path.rglob("*")) if p.is_file()]
    return sum(s for _, s in files), files


# --- the package's manifest ------------------------------------------------------------------------

MANIFEST_MODULE = Path(__file__).resolve().parent / "shipped.py"


def manifest(root: Path | None = None) -> dict[str, str]:
    """``{preset/run name: SHA-256 of its provenance.json}`` of every entry under ``root`` (default
    the shipped zoo), and ``{preset/MEASUREMENTS: its SHA-256}`` for a tier that ships its claims'
    measurements: what ``icmix.zoo.shipped.SHIPPED`` must hold for the shipped zoo."""
    base = Path(root or ZOO_ROOT)
    found = {e.key: sha256(e.path / PROVENANCE) for e in entries(base).values()}
    found.update({f"{f.parent.name}/{f.name}": sha256(f) for f in sorted(base.glob(f"*/{MEASUREMENTS}"))})
    return found


# A tier's claims measured at every budget of its runs (``icmix.experiments.scaling``, from the
# runs' checkpoints, which the zoo does not ship), beside the runs; sealed by the manifest.
MEASUREMENTS = "claims-scaling-measured.csv"


def measurements(preset: str, root: Path | None = None) -> Path | None:
    """The tier's claims measurements (``MEASUREMENTS``), or ``None`` if it has none, the file or
    its tier folder is a link (it would stand for a file elsewhere), or, in the zoo shipped with the
    package, the file is not the one the package's manifest records."""
    from icmix.zoo.shipped import SHIPPED

    base = Path(root or default_root())
    tier = zoo_dir(preset, base)
    path = tier / MEASUREMENTS
    if tier.is_symlink() or path.is_symlink() or not path.is_file():
        return None
    if base.resolve() == ZOO_ROOT and SHIPPED.get(f"{preset}/{MEASUREMENTS}") != sha256(path):
        return None
    return path


def measurements_listed(path: Path) -> bool:
    """Whether a tier's measurements file (``measurements``) is the one the package's manifest
    records: measurements from another zoo (``ICMIX_ZOO``) are used, labelled *unlisted*."""
    from icmix.zoo.shipped import SHIPPED

    return SHIPPED.get(f"{Path(path).parent.name}/{MEASUREMENTS}") == sha256(path)


def write_manifest() -> Path:
    """Write ``icmix/zoo/shipped.py`` from the shipped zoo as it is now (``icmix zoo manifest
    --write``, after ``icmix zoo build`` changed it).  Refused while an entry is damaged (its
    files against its provenance, its digest, its run name, its weights against its recorded
    metrics): only sound entries are sealed, so a listed entry needs no evaluation to be listed.
    An entry without its convergence data, or whose data this code computes otherwise (a changed
    rule or optimum), gets them first (``add_convergence``)."""
    from icmix.io import atomic_write

    damaged = {n: p for n, e in entries(ZOO_ROOT).items() if (p := e.problems(manifest=False, evaluate=True))}
    if damaged:
        raise ValueError("the shipped zoo has damaged entries, not sealed: "
                         + "; ".join(f"{n}: {', '.join(p)}" for n, p in damaged.items()))
    stale = [e for e in entries(ZOO_ROOT).values()  # what `zoo list` reads: recorded, and as this code computes it
             if not isinstance(e.provenance.get(CONVERGENCE), dict) or convergence_mismatches(e)]
    records = {e.name: convergence_record(e.path) for e in stale}  # every one computed before any is written
    for entry in stale:
        add_convergence(entry, records[entry.name])
    lines = "".join(f'    "{key}": "{digest_}",\n' for key, digest_ in sorted(manifest().items()))
    text = ('"""The manifest of the zoo shipped with the package: the SHA-256 of each entry\'s provenance.json,\n'
            "which itself holds the SHA-256 of the entry's other files and a digest of its own fields.  An entry\n"
            "of the shipped zoo that is not the one recorded here is stale (never used).  Written by\n"
            "``icmix zoo manifest --write``; ``tests/test_zoo.py`` checks it against the zoo.\n"
            '"""\n\nSHIPPED: dict[str, str] = {\n' + lines + "}\n")
    atomic_write(MANIFEST_MODULE, lambda p: Path(p).write_text(text))
    return MANIFEST_MODULE


# --- verification --------------------------------------------------------------------------------

METRIC_TOLERANCE = 0.02  # relative difference of the final eval metric, where bits cannot match
# A tail resumed on another CPU must also end this close to the shipped weights, relative to how far
# the tail's own weights are from them (a resume that did nothing would be at 1).
TAIL_CLOSER = 0.1  # resumed with 2 threads instead of 1 (another reduction order): 6e-5 (dis3), 2e-4 (gpt3)


def weight_distance(a: dict, b: dict) -> float:
    """The L2 distance between two state dicts of the same keys and shapes (``inf`` otherwise)."""
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        return float("inf")
    return math.sqrt(sum(float(((a[k].double() - b[k].double()) ** 2).sum()) for k in a))


def prepare_tail(entry: Entry, run: Path) -> int:
    """Lay out the run directory ``run`` as the entry's run was at its tail checkpoint (config,
    metrics up to that step, the checkpoint), ready to resume; the tail's step.  ``ValueError``
    if the entry ships no tail."""
    step = entry.provenance.get("tail_step")
    if step is None:
        shipped = sorted(n for n, e in entries(entry.path.parent.parent).items() if "tail_step" in e.provenance)
        raise ValueError(f"zoo run {entry.name} ships no tail checkpoint (the long tier's first-seed runs of small models do"
                         + (f": {', '.join(shipped)}" if shipped else "") + ")")
    ckpt = Path(run) / "checkpoints" / f"step_{int(step):07d}"
    ckpt.mkdir(parents=True)
    for rel in TAIL_FILES:
        shutil.copyfile(entry.path / rel, ckpt / Path(rel).name)
    shutil.copyfile(entry.path / "config.yaml", Path(run) / "config.yaml")
    rows = [line for line in (entry.path / "metrics.jsonl").read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= int(step)]
    (Path(run) / "metrics.jsonl").write_text("".join(r + "\n" for r in rows))
    return int(step)


def verify(name: str, work: Path, root: Path | None = None, progress: bool = True, tail: bool = False) -> dict:
    """Check the zoo run ``name`` in three steps, each failing at once:

    1. integrity: every file's SHA-256, the provenance's digest, the package's manifest and
       the run name (``Entry.problems``);
    2. evaluation: the shipped weights, evaluated on the run's evaluation batch, give the
       recorded final metrics (``check_evaluation``; seconds), and the recorded convergence data
       (what ``zoo list`` shows) are what this code computes from the run (``convergence_mismatches``);
    3. retraining from scratch under ``work`` (with the recorded number of threads): the
       weights are bit-identical, or, where the CPU or torch build differ from the provenance
       (so bits may not match), the retrained final eval metric is within
       ``METRIC_TOLERANCE`` (relative) of the shipped one.  With ``tail``, step 3 resumes
       instead from the checkpoint the entry ships ``TAIL_STEPS`` before its end (``prepare_tail``;
       seconds): the same comparison, on the last steps only; where the bits cannot match, the
       resumed weights must also end closer to the shipped ones than ``TAIL_CLOSER`` of the
       tail's own distance from them (a resume that redid nothing would not).

    ``status`` is ``pass`` or ``fail``; ``step`` says which step decided it; the record also
    holds both evaluations, the largest weight difference and both metrics.  ``work/NAME``
    must not exist."""
    import torch
    from safetensors.torch import load_file

    from icmix.train import TrainConfig, train

    entry = lookup(name, root)
    prov = entry.provenance
    record = {"run": entry.name, "status": "fail", "step": "integrity", "reason": "", "identical": False,
              "max_weight_difference": float("nan"), "metric": "", "metric_shipped": float("nan"),
              "metric_retrained": float("nan"), "metric_relative_difference": float("nan"), "tail_closer": float("nan"),
              "integrity": entry.problems(), "evaluation": {}, "listed": entry.listed(), "retrain_seconds": 0.0,
              "steps": prov.get("steps"),
              "here": {"cpu": cpu_model(), "cpu_features": cpu_features(), "torch": torch.__version__,
                       "threads": prov.get("threads")},
              "shipped": {k: prov.get(k) for k in SHOWN}}
    if record["integrity"]:  # no retraining can make a damaged or stale entry sound
        return {**record, "reason": "; ".join(record["integrity"])}
    evaluation = check_evaluation(entry)
    record["evaluation"] = {"recorded": evaluation["recorded"], "measured": evaluation["measured"]}
    if not evaluation["ok"]:  # weights that do not give their own numbers: no retraining needed to say so
        return {**record, "step": "evaluation", "reason": evaluation["reason"]}
    wrong = convergence_mismatches(entry)  # what `zoo list` shows of it, computed when it was shipped
    if wrong:
        return {**record, "step": "evaluation", "reason": "its recorded convergence data differ from a "
                                                          "recomputation: " + "; ".join(wrong)}
    cfg = TrainConfig.from_yaml(entry.path / "config.yaml")
    run = Path(work) / entry.name
    if run.exists():
        raise ValueError(f"{run} exists: verify retrains from scratch into a new folder (choose another --work)")
    threads = int(prov.get("threads", 1))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    start = time.time()
    try:
        if tail:
            record["from_step"] = prepare_tail(entry, run)
            train(None, run, resume=True, progress=progress)
        else:
            record["from_step"] = 0
            train(cfg, run, progress=progress)
    finally:
        torch.set_num_threads(before)
    wall = time.time() - start
    shipped = load_file(entry.path / "model" / "model.safetensors")
    fresh = load_file(run / "model" / "model.safetensors")
    same_keys = shipped.keys() == fresh.keys() and all(shipped[k].shape == fresh[k].shape for k in shipped)
    identical = same_keys and all(torch.equal(shipped[k], fresh[k]) for k in shipped)
    max_diff = (max(float((shipped[k].double() - fresh[k].double()).abs().max()) for k in shipped)
                if same_keys else float("inf"))
    from icmix.train.convergence import progress_metric

    metric = _final_metric(run, progress_metric(cfg))
    metric_shipped = _final_metric(entry.path, metric[0])  # recorded, and reproduced by the shipped weights (step 2)
    rel = abs(metric[1] - metric_shipped[1]) / max(abs(metric_shipped[1]), 1e-12)
    here = {"cpu": cpu_model(), "cpu_features": cpu_features(), "torch": torch.__version__, "threads": threads}
    # Entries trained before cpu_features was recorded cannot claim the same CPU.
    same_env = all(prov.get(k) == here[k] for k in ("cpu", "cpu_features", "torch"))
    # resumed from the tail: how far from the shipped weights it ended, against the tail's own distance
    closer = _tail_ratio(entry, shipped, fresh) if tail else float("nan")
    if identical:
        status, why = "pass", "bit-identical weights"
    elif same_env:
        status, why = "fail", ("same CPU, torch build and threads, but the weights differ: the training code now "
                               "gives other numbers, or the shipped weights were altered")
    elif rel > METRIC_TOLERANCE:
        status, why = "fail", f"final {metric[0]} differs by {rel:.2%} (tolerance {METRIC_TOLERANCE:.0%})"
    elif tail and not closer < TAIL_CLOSER:
        status, why = "fail", (f"resumed from the tail on another CPU or torch build, the weights ended "
                               f"{closer:.2f} of the tail's distance from the shipped ones (they must end closer "
                               f"than {TAIL_CLOSER:g} of it: the resume did not redo the last steps)")
    else:
        status, why = "pass", (f"another CPU or torch build ({_environment_difference(prov, here)}): weights "
                               f"differ by up to {max_diff:.2g}"
                               + (f" ({closer:.2g} of the tail's distance from them)" if tail else "")
                               + f", final {metric[0]} within {rel:.2%} (tolerance {METRIC_TOLERANCE:.0%})")
    return {**record, "status": status, "step": "retraining", "reason": why, "identical": identical,
            "tail_closer": closer,
            "max_weight_difference": max_diff, "metric": metric[0], "metric_shipped": metric_shipped[1],
            "metric_retrained": metric[1], "metric_relative_difference": rel, "retrain_seconds": round(wall, 1),
            "steps": cfg.steps, "here": here}


def convergence_mismatches(entry: "Entry") -> list[str]:
    """The recorded convergence data (``convergence_record``) that a recomputation from the
    entry's metrics and its evaluation batch's optimum does not give (empty if none recorded).
    The fields read off ``metrics.jsonl`` (whose SHA-256 the provenance holds) must match to
    rounding; the optimum, recomputed on this machine (exact Bayes, Gibbs draws, a float32
    batch), within the re-evaluation's tolerance."""
    from icmix.train.loop import REEVALUATION_RTOL

    stored = entry.provenance.get(CONVERGENCE)
    if not isinstance(stored, dict):
        return []
    now = convergence_record(entry.path) or {}
    wrong = []
    for key in sorted(set(stored) | set(now)):
        value, fresh = stored.get(key), now.get(key)
        if not _same(value, fresh, REEVALUATION_RTOL if key == "optimum" else 1e-9):
            wrong.append(f"{key} {value!r} recorded, {fresh!r} now")
    return wrong


def _same(a, b, rtol: float) -> bool:
    """Equal, numbers within ``rtol`` (NaN equal to NaN), booleans and the rest exactly."""
    import math

    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
    if not numbers:
        return a == b
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=rtol, abs_tol=1e-12)


def _tail_ratio(entry: Entry, shipped: dict, fresh: dict) -> float:
    """How far the weights resumed from the tail ended from the shipped ones, relative to the
    tail's own distance from them (``TAIL_CLOSER``)."""
    from safetensors.torch import load_file

    tail = load_file(entry.path / TAIL / "model.safetensors")
    moved, ended = weight_distance(tail, shipped), weight_distance(fresh, shipped)
    if not (math.isfinite(moved) and moved > 0 and math.isfinite(ended)):
        return float("nan")  # a tail of other weights, or none to redo: no evidence (fails the check)
    return ended / moved


SHOWN = ("cpu", "cpu_features", "torch", "threads", "git_commit", "wall_seconds")  # of a provenance, in a record


def _environment_difference(prov: dict, here: dict) -> str:
    return "; ".join(f"{k}: {prov[k]!r} shipped, {here[k]!r} here" if k in prov else f"{k} not recorded"
                     for k in ("cpu", "cpu_features", "torch") if prov.get(k) != here[k])


def _final_metric(run: Path, metric: str) -> tuple[str, float]:
    rows = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return metric, float(rows[-1][metric])


def table(root: Path | None = None):
    """One row per zoo run: tier, figures, steps, final progress metric and its excess over the
    optimum, convergence, status (``ok``; ``ok, unlisted`` for a sound entry the package's
    manifest does not list; ``stale: why``) and provenance (commit, CPU, threads, wall time).

    It reads, never computes, for the entries the package's manifest lists: their convergence
    data were recorded when they were shipped (``convergence_record``; ``zoo verify`` checks
    them), and they were evaluated and named when sealed, so only their files' SHA-256 are
    checked here (no torch).  An unlisted entry gets every check, and its convergence computed."""
    import pandas as pd

    from icmix.train.convergence import run_convergence

    rows = []
    for name, e in entries(root).items():
        p = e.provenance
        listed = e.listed()
        row = {"run": name, "tier": e.preset, "figures": ",".join(p.get("figures", [])), "steps": p.get("steps")}
        c = stored_convergence(p) if listed else None
        try:
            c = c or run_convergence(e.path)
            known = c.optimum is not None
            row.update(metric=c.metric, final=round(c.final, 5), excess=round(c.excess, 5) if known else "–",
                       second_half_gain=f"{c.improvement:.1%}" if known else "–", converged=c.status)
        except (ValueError, OSError) as err:
            row.update(metric="?", converged=f"? ({err})")
        problems = e.problems(evaluate=not listed, names=not listed)  # a listed entry was checked when sealed
        row.update(status="stale: " + "; ".join(problems) if problems else "ok" if listed else "ok, unlisted",
                   commit=str(p.get("git_commit", "?"))[:10], cpu=p.get("cpu"), threads=p.get("threads"),
                   wall_min=round(p.get("wall_seconds", float("nan")) / 60, 1), torch=p.get("torch"))
        rows.append(row)
    return pd.DataFrame(rows)
