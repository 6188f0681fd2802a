"""Data-parallel training with ``torchrun`` (PyTorch DDP): who am I, and how to talk to the others.

Launch any training command under ``torchrun``; the loop reads the environment it sets::

    torchrun --nproc_per_node 4 -m icmix train configs/mlr_gpt.yaml --set device=cuda --out runs/mlr

Every rank draws the *global* batch from the same data generator and keeps its slice, so a
run on W processes sees the same data, step for step, as a single-process run with the
same ``batch_size`` (which W must divide), and its loss is the same up to float rounding.
Gradients are averaged by DDP.  Rank 0 alone writes the run directory (config, metrics,
checkpoints, final model); each rank's own RNG state (dropout) goes into the checkpoint, so
a distributed run resumes exactly too.  CUDA ranks use NCCL and ``cuda:LOCAL_RANK``; CPU
ranks use gloo.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place in the job: ``rank`` of ``size`` (1 when not distributed)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one process that writes the run directory."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether the job has more than one process."""
        return self.size > 1

    def barrier(self) -> None:
        """Wait until every rank gets here (nothing when alone)."""
        if self.distributed:
            dist.barrier()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The average of ``value`` over the ranks (``value`` itself when alone)."""
        if not self.distributed:
            return value
        value = value.clone()
        dist.all_reduce(value)
        return value / self.size

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def shard(self, batch: dict, batch_size: int) -> dict:
        """This rank's contiguous slice of a global batch (every tensor's first dimension)."""
        if not self.distributed:
            return batch
        per = batch_size // self.size
        part = slice(self.rank * per, (self.rank + 1) * per)
        return {k: v[part] for k, v in batch.items()}


def current_world(device: str) -> World:
    """The world ``torchrun`` describes (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``), with the process
    group started if needed; a plain process is ``World()``."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if not dist.is_initialized():
        use_cuda = device != "cpu" and torch.cuda.is_available()
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))
