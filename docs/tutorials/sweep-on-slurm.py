# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Run a sweep on SLURM through submitit
#
# `icmix sweep` trains the product of its `--grid` axes as separate runs, each named by its config's
# hash, so a second call skips the finished runs and resumes the others.  Where they run is the
# launcher's business:
#
# - `--launcher local` (the default): a process pool on this machine, `--jobs` at a time;
# - `--launcher submitit-local`: each run a job of [submitit](https://github.com/facebookincubator/submitit)'s
#   local executor, a rehearsal of the cluster on a laptop;
# - `--launcher slurm`: one SLURM job array, submitted from the cluster's login node.
#
# This page rehearses a sweep with submitit's local executor (it runs here, in seconds), then shows
# the same command for SLURM.  Install the extra first: `pip install 'icmix[slurm]'`.
#
# ## A base config
#
# A training config is YAML; the [config reference](../reference/config.md) lists every field.
# Here: the paper's 3-layer disentangled transformer on MTD, kept tiny so that the page builds fast.

# %%
from pathlib import Path

Path("tiny.yaml").write_text("""\
task: {kind: mtd, vocab_size: 6, order: 2, seed: 0, length: 16}
model: {kind: disentangled, n_layers: 3}
optim: {lr: 3.0e-3, schedule: cosine, warmup_steps: 10}
steps: 60
batch_size: 32
loss: mse
loss_positions: all
eval_every: 20
checkpoint_every: 30
""")

# %% [markdown]
# ## The sweep, rehearsed with submitit's local executor
#
# Two seeds × two orders: four runs, two at a time, one torch thread each (`--threads 1`).

# %%
import subprocess
import sys

command = ["sweep", "tiny.yaml", "--grid", "seed=0,1", "--grid", "task.order=2,3", "--out", "sweep",
           "--launcher", "submitit-local", "--jobs", "2", "--threads", "1", "--no-progress"]
print("icmix " + " ".join(command))
done = subprocess.run([sys.executable, "-m", "icmix", *command], capture_output=True, text=True)
print(done.stdout[-3000:], done.stderr[-3000:])
assert done.returncode == 0

# %% [markdown]
# Each run is a folder under `sweep/runs/`, named by its config; the logs say which job ran it.

# %%
runs = sorted(p.name for p in Path("sweep/runs").iterdir())
print("\n".join(runs))
print(sorted(p.name for p in Path("sweep/logs").iterdir()))
assert len(runs) == 4 and all((Path("sweep/runs") / r / "model").is_dir() for r in runs)

# %% [markdown]
# A second call finds every run finished and trains nothing:

# %%
again = subprocess.run([sys.executable, "-m", "icmix", *command], capture_output=True, text=True, check=True)
print(again.stdout[-1500:])

# %% [markdown]
# ## The same sweep on SLURM
#
# On the login node, with the CUDA build of torch installed first, the same command with
# `--launcher slurm` submits one job array.  `--slurm KEY=VALUE` maps to submitit's `SlurmExecutor`:
# `partition`, `time` (minutes, `4h`, `2d`, `HH:MM:SS`, `D-HH:MM`), `gpus` and `cpus` (per task; one
# task per run), `mem` (`32G`), `array_parallelism`, `account`, `qos`, `constraint`.
#
# ```text
# icmix sweep tiny.yaml --grid seed=0,1 --grid task.order=2,3 --out sweep \
#     --launcher slurm --slurm partition=gpu --slurm gpus=1 --slurm time=2:00:00 --no-wait
# ```
#
# With `--no-wait` the command returns once the array is queued; the same command again waits for
# the jobs still queued or running, resubmits only the runs whose job ended without finishing them
# (a crashed node, `scancel`), and skips the finished ones.  A preempted or timed-out job is requeued
# and resumes from its run's newest checkpoint, bit-identical to an uninterrupted run.  Every figure
# of both papers goes the same way: `icmix reproduce all --preset paper --launcher slurm …`
# ([run on a SLURM cluster](../how-to/cluster.md) has the details and the logs).
#
# Here is what the options parse to, checked without a cluster:

# %%
from icmix.train.launch import slurm_parameters

print(slurm_parameters(["partition=gpu", "gpus=1", "time=2:00:00", "mem=32G"]))
