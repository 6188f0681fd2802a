"""Worker processes for parallel training runs and figures.

``worker_pool(n)`` is a spawn-started ``ProcessPoolExecutor`` whose workers share the cores
(``torch.set_num_threads``) and exit when their parent dies.  Workers ignore Ctrl-C (SIGINT
reaches the whole process group): the parent alone handles it, terminates them and prints
one line, instead of one traceback per process.  Without the second part, a
``kill`` of ``icmix reproduce`` (SIGTERM to the parent alone; Ctrl-C reaches the whole process
group and is fine) left its workers training on, unseen, holding the cores.  A worker killed
this way loses at most the steps since its last checkpoint: checkpoints are published by
rename, so none is left half-written.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager


def _exit_with_parent() -> None:
    multiprocessing.parent_process().join()  # returns once the parent's sentinel closes
    os._exit(1)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, name="exit-with-parent", daemon=True).start()


@contextmanager
def worker_pool(n_workers: int):
    """``with worker_pool(n) as pool``: ``n`` spawned processes, each with its share of this
    process's torch threads.  If the block raises (Ctrl-C included), the workers are
    terminated at once rather than waited for; their work is lost only back to its last
    checkpoint, which is published by rename and so never half-written."""
    import torch

    threads = max(1, torch.get_num_threads() // n_workers)  # share the cores instead of oversubscribing them
    pool = ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(threads,))
    try:
        yield pool
    except BaseException:
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
