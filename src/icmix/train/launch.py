"""Where training runs execute: this machine's process pool, submitit's local executor, or SLURM.

``icmix sweep`` and ``icmix reproduce [all]`` take ``--launcher``::

    local           the process pool of ``train_many`` (the default)
    submitit-local  submitit's local executor: each run a job of its own, as on a cluster
    slurm           one SLURM job array through submitit (``pip install 'icmix[slurm]'``),
                    options with ``--slurm KEY=VALUE`` (``SLURM_OPTIONS``)

A job trains one run directory with ``train(..., resume=True)`` semantics, so whatever stops
it (preemption, the time limit, a crash, ``scancel``) costs at most the steps since its last
checkpoint: submitit's checkpointing hook (``TrainJob`` is ``Checkpointable``) requeues a
preempted or timed-out job, which resumes from the run's newest checkpoint, and the run's
exact resume makes the result bit-identical to an uninterrupted run.  Set ``checkpoint_every``
so that a checkpoint falls well within a job's time.

``OUT/logs/<run>.log`` records each run's submissions and starts; submitit's own logs (the
job's stdout and stderr) are under ``OUT/logs/submitit``.  ``OUT/logs/jobs.json`` maps each run
to its last job, so that a second call (``--no-wait``, or after this process was stopped)
waits for jobs still queued or running, resubmits only runs whose job is gone, and skips
finished runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from icmix.overrides import split

MAX_TIMEOUTS = 50  # a SLURM job that hits its time limit is requeued this many times at most
INSTALL = "pip install 'icmix[slurm]'"


def _minutes(text: str) -> int:
    """A SLURM time limit in minutes: ``90``, ``90m``, ``4h``, ``2d``, ``MM:SS``, ``HH:MM:SS``,
    ``D-HH``, ``D-HH:MM`` or ``D-HH:MM:SS`` (seconds round up)."""
    text = str(text).strip()
    unit = re.fullmatch(r"(\d+)\s*([mhd])", text)
    if unit:
        return int(unit.group(1)) * {"m": 1, "h": 60, "d": 1440}[unit.group(2)]
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not match:
        raise ValueError(f"--slurm time={text!r} is not a time: use minutes (90, 90m), hours (4h), days (2d), "
                         "HH:MM:SS or D-HH:MM")
    days, a, b, c = match.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    elif b is None:  # plain minutes
        seconds = int(a) * 60
    elif c is None:  # MM:SS
        seconds = int(a) * 60 + int(b)
    else:  # HH:MM:SS
        seconds = int(a) * 3600 + int(b) * 60 + int(c)
    if seconds <= 0:
        raise ValueError(f"--slurm time={text!r} must be positive")
    return -(-seconds // 60)


def _memory(text: str) -> str:
    """A SLURM memory request (``16G``, ``64000M``, ``16GB``; a plain number is MB)."""
    text = str(text).strip().upper()
    match = re.fullmatch(r"(\d+)\s*([KMGT]?)B?", text)
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"--slurm mem={text!r} is not a memory size: use 16G, 64000M, ...")
    return match.group(1) + (match.group(2) or "M")


def _positive(text: str) -> int:
    if not str(text).strip().isdigit() or int(text) < 1:
        raise ValueError(f"must be a positive integer, got {text!r}")
    return int(text)


# ``--slurm KEY=VALUE`` -> (submitit SlurmExecutor parameter, parser).  One task per job; GPUs and
# CPUs are per task.
SLURM_OPTIONS = {
    "partition": ("partition", str),
    "time": ("time", _minutes),
    "gpus": ("gpus_per_node", _positive),
    "cpus": ("cpus_per_task", _positive),
    "mem": ("mem", _memory),
    "array_parallelism": ("array_parallelism", _positive),
    "account": ("account", str),
    "qos": ("qos", str),
    "constraint": ("constraint", str),
}


def slurm_parameters(options: list[str] | dict | None) -> dict:
    """submitit ``SlurmExecutor`` parameters of ``--slurm KEY=VALUE`` options; ``ValueError``
    naming the known keys for an unknown one, and the key for a bad value."""
    items = list(options.items()) if isinstance(options, dict) else []
    for item in options if not isinstance(options, dict) else []:
        key, value = split(item, "--slurm", "KEY=VALUE")
        items.append((key, value.strip()))
    parameters = {}
    for key, value in items:
        if key not in SLURM_OPTIONS:
            raise ValueError(f"unknown --slurm option {key!r}; known: {', '.join(SLURM_OPTIONS)}")
        name, parse = SLURM_OPTIONS[key]
        try:
            parameters[name] = parse(value)
        except ValueError as err:
            raise ValueError(f"--slurm {key}: {err}") from None
    return parameters


def _submitit():
    try:
        import submitit
    except ImportError:
        raise ValueError(f"this launcher needs submitit: {INSTALL}") from None
    return submitit


class Submitted(Exception):
    """Raised by ``Launcher.train`` with ``wait=False`` once the runs are submitted: its text
    says which, and how to pick them up."""


def _note(log: Path, text: str) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh:
        fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}\n")


def _checkpointable():
    try:
        from submitit.helpers import Checkpointable
    except ImportError:
        return object
    return Checkpointable


class TrainJob(_checkpointable()):
    """One training run as a submitit job.  Preempted or timed out, submitit calls
    ``checkpoint`` (inherited: the same call again) and requeues it; the new start resumes
    from the run directory's newest checkpoint."""

    def __call__(self, config_yaml: str, run_dir: str, log: str, group: str | None = None,
                 threads: int | None = None) -> str:
        """Train the run ``run_dir`` of the YAML config with ``threads`` torch threads, resuming it if it
        already has a ``config.yaml``; notes the job's start and end in ``log`` and returns ``run_dir``."""
        import torch
        import yaml

        from icmix.train.config import TrainConfig
        from icmix.train.loop import train

        if threads:
            torch.set_num_threads(threads)
        run, log = Path(run_dir), Path(log)
        cfg = TrainConfig.from_dict(yaml.safe_load(config_yaml))
        resume = (run / "config.yaml").exists()
        job = os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID", "?")
        _note(log, f"job {job}: {'resuming' if resume else 'starting'} {run.name}")
        train(cfg, run, resume=resume, progress=False, group=group)
        _note(log, f"job {job}: finished {run.name}")
        return str(run)


def _finished(run: Path) -> bool:
    return (Path(run) / "model" / "model.safetensors").exists()


def _last_error(stderr: str) -> str | None:
    """The exception line a failed job's stderr ends with (its last line otherwise)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b", line)]
    return (errors or lines)[-1][:300] if lines else None


@dataclass
class Launcher(ABC):
    """Where ``train_many`` runs its jobs: one interface, one class per place (see the module
    docstring; ``make_launcher`` builds one by its ``--launcher`` name).

    ``logs``: the folder of per-run logs and submitit's files (``OUT/logs``); ``options``:
    ``--slurm KEY=VALUE`` items; ``wait``: wait for the jobs (else raise ``Submitted`` once they
    are queued); ``max_parallel``: runs at once; ``threads``: torch threads in each job."""

    name: ClassVar[str]
    runs_here: ClassVar[bool] = False  # whether the jobs run in this machine's process pool

    logs: Path | None = None
    options: list[str] | dict = field(default_factory=list)
    wait: bool = True
    max_parallel: int = 1
    poll_seconds: float | None = None
    threads: int | None = None

    def __post_init__(self):
        if self.options:
            raise ValueError("--slurm options need --launcher slurm")

    @abstractmethod
    def train(self, jobs: list[tuple], progress: bool = True, errors: str = "raise") -> dict[Path, str]:
        """Train ``(cfg, run directory, group)`` jobs, skipping finished runs; ``{run directory:
        error}`` of the runs that failed (``errors="collect"``; ``"raise"`` raises the first)."""


class LocalLauncher(Launcher):
    """This machine's process pool (``train_many``), ``max_parallel`` runs at a time."""

    name = "local"
    runs_here = True

    def __post_init__(self):
        super().__post_init__()
        if not self.wait:
            raise ValueError("--no-wait needs --launcher submitit-local or slurm (the local pool runs in this process)")

    def train(self, jobs: list[tuple], progress: bool = True, errors: str = "raise") -> dict[Path, str]:
        """Train the jobs in this machine's process pool (``train_many``), ``max_parallel`` at a
        time, each in its tracker group; ``{run directory: error}`` of the runs that failed."""
        from icmix.train.loop import train_many

        return train_many([(cfg, run) for cfg, run, _ in jobs], self.max_parallel, progress, errors,
                          groups={Path(run): group for _, run, group in jobs if group})


@dataclass
class SubmititLauncher(Launcher):
    """A submitit executor: each run a job, its state kept in ``OUT/logs/jobs.json`` so that a
    second call attaches to jobs still queued or running and resubmits only those that are gone.
    Subclasses say how to build the executor, how many jobs run at once, how to tell whether an
    earlier job is alive, and how many threads a job gets."""

    default_poll_seconds: ClassVar[float] = 0.5
    on_interrupt: ClassVar[str] = "jobs started from this terminal stop with it"

    def __post_init__(self):
        self.check_options()
        _submitit()
        self.check_environment()
        if self.logs is None:
            raise ValueError("a submitit launcher needs a logs folder")
        self.logs = Path(self.logs).resolve()
        if self.poll_seconds is None:
            self.poll_seconds = self.default_poll_seconds

    def check_options(self) -> None:
        """Refuse options this launcher does not take (``--slurm`` ones, but for SLURM)."""
        super().__post_init__()

    def check_environment(self) -> None:
        """Refuse a machine this launcher cannot submit from (``ValueError``)."""

    @abstractmethod
    def executor(self):
        """The submitit executor of this launcher (nothing is submitted)."""

    @abstractmethod
    def _active(self, job_id: str) -> bool:
        """Whether an earlier call's job is still queued or running."""

    @abstractmethod
    def _threads(self) -> int | None:
        """Torch threads in each job (``None``: torch's default)."""

    def _slots(self, queued: int) -> int:
        """How many jobs may run at once while ``queued`` wait to be submitted."""
        return self.max_parallel

    def _submit_now(self, to_submit: list, attached: dict) -> tuple[list, list]:
        """Of the jobs to submit without waiting, those submitted now and those left for later."""
        free = max(0, self.max_parallel - len(attached))
        return to_submit[:free], to_submit[free:]

    def _submit_all(self, executor, calls: list) -> list:
        return [executor.submit(TrainJob(), *call) for call in calls]

    def _records(self) -> dict:
        path = self.logs / "jobs.json"
        try:
            return json.loads(path.read_text()) if path.exists() else {}
        except ValueError:
            return {}

    def _record(self, entries: dict) -> None:
        from icmix.io import atomic_write

        records = {**self._records(), **entries}
        atomic_write(self.logs / "jobs.json", lambda p: Path(p).write_text(json.dumps(records, indent=1)))

    def _submit(self, executor, jobs: list[tuple]) -> list:
        """Submit ``(cfg, run, group)`` jobs; their submitit jobs."""
        calls = [(cfg.to_yaml(), str(run), str(self.logs / f"{run.name}.log"), group, self._threads())
                 for cfg, run, group in jobs]
        from submitit.core.utils import FailedJobError, FailedSubmissionError

        try:
            handles = self._submit_all(executor, calls)
        except (FailedJobError, FailedSubmissionError) as err:
            raise ValueError(f"the {self.name} submission was refused: {str(err).strip()}") from None
        now = time.strftime("%Y-%m-%dT%H:%M:%S")
        self._record({run.name: {"launcher": self.name, "job_id": str(h.job_id), "submitted": now}
                      for (_, run, _), h in zip(jobs, handles)})
        for (_, run, _), h in zip(jobs, handles):
            _note(self.logs / f"{run.name}.log", f"submitted as {self.name} job {h.job_id} "
                  f"(submitit logs: {self.logs / 'submitit' / str(h.job_id)})")
        return handles

    def train(self, jobs: list[tuple], progress: bool = True, errors: str = "raise") -> dict[Path, str]:
        """Skip finished runs, wait for an earlier call's jobs still queued or running, submit the
        rest; then wait for all (or raise ``Submitted``)."""
        pending = [(cfg, Path(run), group) for cfg, run, group in jobs if not _finished(run)]
        if not pending:
            return {}
        self.logs.mkdir(parents=True, exist_ok=True)
        records = self._records()
        attached, to_submit = {}, []
        for job in pending:
            record = records.get(job[1].name, {})
            if record.get("launcher") == self.name and self._active(record["job_id"]):
                attached[job[1]] = record["job_id"]
            else:
                to_submit.append(job)
        executor = self.executor()
        if progress:
            print(f"{self.name}: {len(jobs) - len(pending)} runs finished, {len(attached)} still queued or running "
                  f"from an earlier call, {len(to_submit)} to submit (logs: {self.logs})")
        handles = {}
        try:
            if not self.wait:
                to_submit, later = self._submit_now(to_submit, attached)
                if to_submit:
                    handles.update(zip([run for _, run, _ in to_submit], self._submit(executor, to_submit)))
                ids = sorted({str(h.job_id).split("_")[0] for h in handles.values()} | set(attached.values()))
                waiting = f", {len(later)} waiting for a free slot" if later else ""
                raise Submitted(f"{len(handles)} runs submitted and {len(attached)} already queued or running"
                                f"{waiting} ({self.name} jobs {', '.join(ids) or 'none'}; logs in {self.logs}); run "
                                "the same command again to pick up the finished runs")
            self._run(executor, to_submit, attached, handles, progress)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(f"stopped waiting ({self.on_interrupt}); rerun the same command to resume the "
                                    "runs from their checkpoints") from None
        failed = {}
        for _, run, _ in pending:
            if _finished(run):
                continue
            handle = handles.get(run)
            # What went wrong, from the job's stderr (text): never from its pickled result, which
            # would be unpickled from the log folder
            error = _last_error(handle.stderr() or "") if handle is not None else None
            failed[run] = (f"{error or 'the job ended without finishing the run'} "
                           f"(see {self.logs / (run.name + '.log')} and {self.logs / 'submitit'})")
        if failed and errors == "raise":
            run, why = next(iter(failed.items()))
            raise ValueError(f"training run {run} failed: {why}")
        return failed

    def _run(self, executor, to_submit: list, attached: dict, handles: dict, progress: bool) -> None:
        """Submit ``to_submit`` (a new job as soon as fewer than ``_slots`` run) into ``handles``
        and wait until every job and every ``attached`` earlier job is done, with one progress
        bar over all of them."""
        from tqdm.auto import tqdm

        queue = list(to_submit)
        slots = self._slots(len(queue))
        with tqdm(total=len(queue) + len(attached), desc=f"{self.name} jobs", unit="run", disable=not progress) as bar:
            while True:
                running = sum(not h.done() for h in handles.values()) + sum(self._active(j) for j in attached.values())
                if queue and running < slots:
                    batch, queue = queue[:slots - running], queue[slots - running:]
                    handles.update(zip([run for _, run, _ in batch], self._submit(executor, batch)))
                    continue
                done = sum(h.done() for h in handles.values()) + sum(not self._active(j) for j in attached.values())
                bar.update(done - bar.n)
                if not queue and done == bar.total:
                    return
                time.sleep(self.poll_seconds)


class SubmititLocalLauncher(SubmititLauncher):
    """submitit's local executor: each run a job of its own on this machine, as on a cluster,
    ``max_parallel`` at once, the cores shared between them."""

    name = "submitit-local"

    def executor(self):
        """submitit's ``LocalExecutor``, its files under ``logs/submitit/<job id>``, with a 7-day time-out."""
        executor = _submitit().LocalExecutor(folder=self.logs / "submitit" / "%j")
        executor.update_parameters(timeout_min=7 * 24 * 60)
        return executor

    def _threads(self) -> int | None:
        return self.threads or max(1, (os.cpu_count() or 1) // self.max_parallel)

    def _active(self, job_id: str) -> bool:
        try:  # the controller process (a zombie is a finished one; a reused pid another's)
            proc = Path(f"/proc/{int(job_id)}")
            alive = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
            return alive and b"submitit" in (proc / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            try:
                os.kill(int(job_id), 0)
            except (OSError, ValueError):
                return False
            return not Path("/proc").is_dir()  # no /proc to tell a zombie: alive


class SlurmLauncher(SubmititLauncher):
    """One SLURM job array through submitit, with the ``--slurm`` options; requeued after up to
    ``MAX_TIMEOUTS`` time-outs (preemptions do not count)."""

    name = "slurm"
    default_poll_seconds = 30.0
    on_interrupt = "they keep running: scancel them to stop them"

    def check_options(self) -> None:
        """Parse the ``--slurm`` options into ``self.parameters`` (``ValueError`` for an unknown key or a bad value)."""
        self.parameters = slurm_parameters(self.options)

    def check_environment(self) -> None:
        """Refuse a machine without SLURM's ``sbatch`` and ``srun`` on ``PATH``."""
        if not (shutil.which("sbatch") and shutil.which("srun")):
            raise ValueError("--launcher slurm needs SLURM's sbatch and srun on PATH: run it on the cluster "
                             "(a login node), or try --launcher submitit-local here")

    def executor(self):
        """submitit's ``SlurmExecutor``, its files under ``logs/submitit/<job id>``, a job requeued
        after up to ``MAX_TIMEOUTS`` time-outs: job name ``icmix`` and 60 minutes unless the
        ``--slurm`` parameters say otherwise."""
        executor = _submitit().SlurmExecutor(folder=self.logs / "submitit" / "%j", max_num_timeout=MAX_TIMEOUTS)
        executor.update_parameters(**{"job_name": "icmix", "time": 60, **self.parameters})
        return executor

    def _threads(self) -> int | None:
        return self.threads or self.parameters.get("cpus_per_task")

    def _active(self, job_id: str) -> bool:
        # gone only on a definite end state (or its result written): a job that sacct cannot
        # report yet (UNKNOWN) or that is being requeued (PREEMPTED) is still alive
        return not _submitit().SlurmJob(self.logs / "submitit" / "%j", job_id).done()

    def _slots(self, queued: int) -> int:
        return queued  # the whole array at once; SLURM's array_parallelism limits it

    def _submit_now(self, to_submit: list, attached: dict) -> tuple[list, list]:
        return to_submit, []

    def _submit_all(self, executor, calls: list) -> list:
        with executor.batch():  # one job array
            return [executor.submit(TrainJob(), *call) for call in calls]


LAUNCHERS: dict[str, type[Launcher]] = {cls.name: cls for cls in (LocalLauncher, SubmititLocalLauncher, SlurmLauncher)}


def make_launcher(name: str, logs: Path | None = None, options: list[str] | dict | None = None, wait: bool = True,
                  max_parallel: int = 1, threads: int | None = None, poll_seconds: float | None = None) -> Launcher:
    """The launcher called ``name`` (``LAUNCHERS``: ``local``, ``submitit-local``, ``slurm``),
    checked before any work; ``ValueError`` naming the known ones otherwise."""
    if name not in LAUNCHERS:
        raise ValueError(f"--launcher must be one of {tuple(LAUNCHERS)}, got {name!r}")
    return LAUNCHERS[name](logs=logs, options=options or [], wait=wait, max_parallel=max_parallel,
                           poll_seconds=poll_seconds, threads=threads)
