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


def _ready() -> int:
    return os.getpid()


def _start_ignoring_ctrl_c(pool: ProcessPoolExecutor, n_workers: int) -> None:
    """Start every worker now (``submit`` spawns one per call while none is idle), with SIGINT
    ignored in this process only while they are spawned: a child inherits an ignored SIGINT
    through exec and Python then keeps ignoring it, so a Ctrl-C while a worker is still
    importing cannot print its traceback.  Off the main thread signals cannot be changed, and
    workers start on demand as before."""
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for _ in range(n_workers):
            pool.submit(_ready)
    finally:
        signal.signal(signal.SIGINT, previous)


THREADS = "ICMIX_THREADS"  # torch threads per run (``icmix ... --threads N``), for every worker


def worker_threads(n_workers: int) -> int:
    """Torch threads for each of ``n_workers`` runs at once: ``ICMIX_THREADS`` if set, else this
    process's threads shared among them (one each when the runs fill the cores), never oversubscribed."""
    import os

    import torch

    given = os.environ.get(THREADS)
    if given:
        return int(given)
    return max(1, torch.get_num_threads() // n_workers)


@contextmanager
def worker_pool(n_workers: int):
    """``with worker_pool(n) as pool``: ``n`` spawned processes, each with its share of this
    process's torch threads.  If the block raises (Ctrl-C included), the workers are
    terminated at once rather than waited for; their work is lost only back to its last
    checkpoint, which is published by rename and so never half-written."""
    import torch

    threads = worker_threads(n_workers)
    pool = ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(threads,))
    try:
        _start_ignoring_ctrl_c(pool, n_workers)
        yield pool
    except BaseException:
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
