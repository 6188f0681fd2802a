"""Worker processes for parallel training runs and figures.

``worker_pool(n)`` is a spawn-started ``ProcessPoolExecutor`` whose workers share the cores
(``torch.set_num_threads``) and exit when their parent dies.  Without the second part, a
``kill`` of ``icmix reproduce`` (SIGTERM to the parent alone; Ctrl-C reaches the whole process
group and is fine) left its workers training on, unseen, holding the cores.  A worker killed
this way loses at most the steps since its last checkpoint: checkpoints are published by
rename, so none is left half-written.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor


def _exit_with_parent() -> None:
    multiprocessing.parent_process().join()  # returns once the parent's sentinel closes
    os._exit(1)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    threading.Thread(target=_exit_with_parent, name="exit-with-parent", daemon=True).start()


def worker_pool(n_workers: int) -> ProcessPoolExecutor:
    """``n_workers`` spawned processes, each with its share of this process's torch threads."""
    import torch

    threads = max(1, torch.get_num_threads() // n_workers)  # share the cores instead of oversubscribing them
    return ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(threads,))
