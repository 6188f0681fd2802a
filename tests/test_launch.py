"""Launchers (``icmix.train.launch``): submitit's local executor for real, SLURM without a cluster.

The submitit-local tests run real jobs in their own processes: a sweep and a figure through
them, a preempted job requeued by submitit's checkpointing hook, and a killed job resubmitted
by a second call; each compares its weights bit for bit with an uninterrupted run trained here
with the same number of threads.  SLURM is checked against submitit's own ``SlurmExecutor``:
a fake ``sbatch`` on ``PATH`` captures the job-array script it would submit.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from icmix.cli import main
from icmix.experiments.common import run_name
from icmix.train import Launcher, TrainConfig, make_launcher, train
from icmix.train.launch import Submitted, _minutes, slurm_parameters

pytest.importorskip("submitit")

CONFIG = Path(__file__).parents[1] / "configs" / "mtd_disentangled.yaml"
TINY = ["--set", "steps=60", "--set", "eval_every=20", "--set", "checkpoint_every=20", "--set", "task.length=8"]


def tiny(steps: int = 60, every: int = 20, seed: int = 0) -> TrainConfig:
    return TrainConfig.from_yaml(CONFIG, [f"steps={steps}", f"eval_every={every}", f"checkpoint_every={every}",
                                          "task.length=8", f"seed={seed}"])


def reference(cfg: TrainConfig, path: Path, threads: int = 1) -> Path:
    """``cfg`` trained here, uninterrupted, with the jobs' number of torch threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return train(cfg, path, progress=False)
    finally:
        torch.set_num_threads(before)


def same_run(a: Path, b: Path) -> bool:
    return ((a / "model" / "model.safetensors").read_bytes() == (b / "model" / "model.safetensors").read_bytes()
            and (a / "metrics.jsonl").read_text() == (b / "metrics.jsonl").read_text())


def wait_for(condition, what: str, timeout: float = 120.0) -> None:
    end = time.time() + timeout
    while not condition():
        if time.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def task_process(controller: int) -> int:
    """The pid of the training task a submitit-local controller started."""
    def children():
        path = Path(f"/proc/{controller}/task/{controller}/children")
        return path.read_text().split() if path.exists() else []

    wait_for(children, "the job's task process")
    return int(children()[0])


def test_sweep_through_submitit_local_and_again(tmp_path):
    out = tmp_path / "sweep"
    args = ["sweep", str(CONFIG), *TINY, "--grid", "seed=0,1", "--launcher", "submitit-local", "--jobs", "2",
            "--out", str(out), "--no-progress"]
    assert main(args) == 0
    runs = sorted((out / "runs").iterdir())
    assert len(runs) == 2 and all((r / "model" / "model.safetensors").exists() for r in runs)
    jobs = json.loads((out / "logs" / "jobs.json").read_text())
    assert sorted(jobs) == [r.name for r in runs] and {j["launcher"] for j in jobs.values()} == {"submitit-local"}
    for r in runs:
        log = (out / "logs" / f"{r.name}.log").read_text()
        assert "submitted as submitit-local job" in log and f"finished {r.name}" in log
    # The job trained exactly what this process trains with the jobs' threads (2 cores over 2 jobs: 1 each).
    threads = max(1, (os.cpu_count() or 1) // 2)
    seed0 = next(r for r in runs if "-seed0-" in r.name)
    assert same_run(seed0, reference(tiny(), tmp_path / "ref", threads))
    # A second call skips both finished runs: no new job, nothing retrained.
    stamps = {r: (r / "model" / "model.safetensors").stat().st_mtime_ns for r in runs}
    assert main(args) == 0
    assert json.loads((out / "logs" / "jobs.json").read_text()) == jobs
    assert {r: (r / "model" / "model.safetensors").stat().st_mtime_ns for r in runs} == stamps


def _submit_one(tmp_path: Path, cfg: TrainConfig) -> tuple[Launcher, Path, str]:
    """Submit ``cfg`` without waiting; the launcher, the run directory and the job id."""
    out = tmp_path / "out"
    run = out / "runs" / run_name(cfg)
    launcher = make_launcher("submitit-local", out / "logs", wait=False, threads=1)
    with pytest.raises(Submitted, match="1 runs submitted"):
        launcher.train([(cfg, run, "test")], progress=False)
    job = json.loads((out / "logs" / "jobs.json").read_text())[run.name]["job_id"]
    return launcher, run, job


def test_preempted_job_is_requeued_and_resumes_bit_identically(tmp_path):
    cfg = tiny(steps=1000, every=25)  # signalled right after its first checkpoint: 97 % of the run still to go
    launcher, run, job = _submit_one(tmp_path, cfg)
    wait_for(lambda: any((run / "checkpoints").glob("step_*")), "the job's first checkpoint")
    os.kill(task_process(int(job)), signal.SIGUSR2)  # what SLURM sends before preempting or timing out a job
    launcher.wait = True
    assert launcher.train([(cfg, run, "test")], progress=False) == {}  # attaches to the requeued job
    log = (launcher.logs / f"{run.name}.log").read_text()
    assert log.count("starting") == 1 and log.count("resuming") == 1, log  # requeued once, same job
    assert log.count("submitted as") == 1
    assert same_run(run, reference(cfg, tmp_path / "ref"))


def test_killed_job_is_resubmitted_and_resumes_bit_identically(tmp_path):
    cfg = tiny(steps=1000, every=25)
    launcher, run, job = _submit_one(tmp_path, cfg)
    wait_for(lambda: any((run / "checkpoints").glob("step_*")), "the job's first checkpoint")
    task = task_process(int(job))
    for pid in (int(job), task):  # the node died: controller and task gone, no requeue
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not launcher._active(job), "the killed job to be gone")
    assert not (run / "model").exists()
    launcher.wait = True
    assert launcher.train([(cfg, run, "test")], progress=False) == {}  # a second call resubmits it
    log = (launcher.logs / f"{run.name}.log").read_text()
    assert log.count("submitted as") == 2 and log.count("resuming") == 1, log
    assert same_run(run, reference(cfg, tmp_path / "ref"))


def test_figure_through_submitit_local_no_wait_then_again(tmp_path, capsys):
    out = tmp_path / "f4"
    args = ["reproduce", "mtd-fig4", "--out", str(out), "--no-progress", "--no-zoo", "--seeds", "1",
            "--set", "steps=6", "--set", "gpt_steps=6", "--set", "length=10", "--set", "eval_lengths=(5,10)",
            "--set", "n_sequences=20", "--set", "n_tune=10", "--set", "gpt_width=8", "--set", "gpt_heads=2",
            "--set", "gpt_layers=2", "--launcher", "submitit-local"]
    assert main(args + ["--no-wait"]) == 0  # the figure's jobs=1: one run at a time
    assert "submitted: 1 runs submitted and 0 already queued or running, 1 waiting for a free slot" in capsys.readouterr().out
    assert not (out / "mtd-fig4.png").exists()  # nothing drawn before the runs are finished
    assert main(args) == 0  # waits for the same jobs (no resubmission), then draws
    jobs = json.loads((out / "logs" / "jobs.json").read_text())
    assert len(jobs) == 2 and all((out / "runs" / name / "model").exists() for name in jobs)
    assert all((out / "logs" / f"{name}.log").read_text().count("submitted as") == 1 for name in jobs)
    table = pd.read_csv(out / "mtd-fig4.csv")
    assert {"trained disentangled (3-layer)", "trained standard (GPT)"} <= set(table.estimator)
    assert (out / "mtd-fig4.png").exists()


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """A fake ``sbatch`` (it keeps the script it is given in the returned folder and answers with
    job 4242) and ``srun`` on ``PATH``."""
    bin_dir, captured = tmp_path / "bin", tmp_path / "captured"
    bin_dir.mkdir()
    captured.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\nfor a; do last="$a"; done\ncp "$last" {captured}/\n'
                                    'echo "Submitted batch job 4242"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return captured


def test_slurm_array_script_through_a_fake_sbatch(tmp_path, fake_slurm, capsys):
    """``--launcher slurm`` submits one job array whose script carries every ``--slurm`` option,
    and the requeue signal submitit's checkpointing hook listens for."""
    captured = fake_slurm
    out = tmp_path / "sweep"
    args = ["sweep", str(CONFIG), *TINY, "--grid", "seed=0,1,2", "--out", str(out), "--no-progress",
            "--launcher", "slurm", "--no-wait", "--slurm", "partition=gpu", "--slurm", "time=1-02:30",
            "--slurm", "gpus=1", "--slurm", "cpus=8", "--slurm", "mem=32G", "--slurm", "array_parallelism=2",
            "--slurm", "account=lab", "--slurm", "qos=high", "--slurm", "constraint=h100"]
    assert main(args) == 0
    assert "submitted: 3 runs submitted" in capsys.readouterr().out
    (script,) = captured.iterdir()
    lines = {ln for ln in script.read_text().splitlines() if ln.startswith("#SBATCH")}
    expected = {"--partition=gpu", "--time=1590", "--gpus-per-node=1", "--cpus-per-task=8", "--mem=32G",
                "--array=0-2%2", "--account=lab", "--qos=high", "--constraint=h100", "--job-name=icmix",
                "--signal=USR2@90", "--open-mode=append"}
    assert {f"#SBATCH {e}" for e in expected} <= lines, sorted(lines)
    jobs = json.loads((out / "logs" / "jobs.json").read_text())
    assert sorted(j["job_id"] for j in jobs.values()) == ["4242_0", "4242_1", "4242_2"]
    assert not (out / "runs").exists() or not any((out / "runs").iterdir())  # nothing ran here


def test_a_refused_slurm_submission_is_a_clear_error(tmp_path, fake_slurm, capsys):
    (fake_slurm.parent / "bin" / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: invalid partition specified: nope' >&2\n"
                                                     "exit 1\n")
    out = tmp_path / "sweep"
    assert main(["sweep", str(CONFIG), *TINY, "--out", str(out), "--no-progress", "--launcher", "slurm",
                 "--slurm", "partition=nope", "--no-wait"]) == 2
    err = capsys.readouterr().err
    assert "icmix: error: the slurm submission was refused" in err and "invalid partition specified" in err


def test_slurm_job_states_an_earlier_call_waits_for(tmp_path, fake_slurm):
    """A job is gone only on a definite end state: one that sacct cannot report yet (UNKNOWN)
    or that is being requeued (PREEMPTED) is waited for, never submitted a second time."""
    states = {"5000_0": "RUNNING", "5001_0": "PENDING", "5002_0": "PREEMPTED", "5003_0": "REQUEUED",
              "5004_0": "COMPLETED", "5005_0": "FAILED", "5006_0": "CANCELLED by 1000", "5007_0": "TIMEOUT",
              "5008_0": "NODE_FAIL"}
    table = "\n".join(f"{job}|{state}|node1" for job, state in states.items())
    (fake_slurm.parent / "bin" / "sacct").write_text(f"#!/bin/sh\necho 'JobID|State|NodeList'\necho '{table}'\n")
    (fake_slurm.parent / "bin" / "sacct").chmod(0o755)
    launcher = make_launcher("slurm", tmp_path / "logs")
    active = {job: launcher._active(job) for job in [*states, "5009_0"]}  # 5009_0: not in sacct (yet)
    assert active == {"5000_0": True, "5001_0": True, "5002_0": True, "5003_0": True, "5004_0": False,
                      "5005_0": False, "5006_0": False, "5007_0": False, "5008_0": False, "5009_0": True}


@pytest.mark.parametrize("text, minutes", [("90", 90), ("90m", 90), ("4h", 240), ("2d", 2880), ("30:00", 30),
                                           ("30:01", 31), ("02:00:00", 120), ("1-02", 1560), ("1-02:30", 1590),
                                           ("1-00:00:30", 1441)])
def test_slurm_time_formats(text, minutes):
    assert _minutes(text) == minutes


def test_slurm_parameters_map_to_submitits_executor(tmp_path, fake_slurm):
    import submitit

    params = slurm_parameters(["partition=p", "time=4h", "gpus=2", "cpus=16", "mem=64000", "array_parallelism=8",
                               "account=a", "qos=q", "constraint=c"])
    assert params == {"partition": "p", "time": 240, "gpus_per_node": 2, "cpus_per_task": 16, "mem": "64000M",
                      "array_parallelism": 8, "account": "a", "qos": "q", "constraint": "c"}
    assert set(params) <= submitit.SlurmExecutor._valid_parameters()  # every key is submitit's own
    executor = make_launcher("slurm", tmp_path / "logs", [f"{k}={v}" for k, v in (("time", "4h"), ("gpus", 2))]).executor()
    assert executor.parameters["time"] == 240 and executor.parameters["gpus_per_node"] == 2


@pytest.mark.parametrize("args, message", [
    (["--slurm", "partition=gpu"], "--slurm options need --launcher slurm"),
    (["--launcher", "slurm", "--slurm", "nodes=2"], "unknown --slurm option 'nodes'; known: partition"),
    (["--launcher", "slurm", "--slurm", "time=soon"], "--slurm time: --slurm time='soon' is not a time"),
    (["--launcher", "slurm", "--slurm", "gpus=0"], "--slurm gpus: must be a positive integer"),
    (["--launcher", "slurm", "--slurm", "mem=lots"], "is not a memory size"),
    (["--launcher", "slurm", "--slurm", "partition"], "is not of the form KEY=VALUE"),
    (["--no-wait"], "--no-wait needs --launcher submitit-local or slurm"),
])
def test_launcher_errors_before_any_work(tmp_path, capsys, args, message):
    out = tmp_path / "x"
    assert main(["sweep", str(CONFIG), *TINY, "--out", str(out), "--no-progress", *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_without_submitit_the_launcher_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)
    out = tmp_path / "x"
    assert main(["sweep", str(CONFIG), *TINY, "--out", str(out), "--launcher", "slurm"]) == 2
    assert "pip install 'icmix[slurm]'" in capsys.readouterr().err and not out.exists()


def test_slurm_off_a_cluster_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch, no srun
    out = tmp_path / "x"
    assert main(["sweep", str(CONFIG), *TINY, "--out", str(out), "--launcher", "slurm"]) == 2
    assert "needs SLURM's sbatch and srun on PATH" in capsys.readouterr().err and not out.exists()
