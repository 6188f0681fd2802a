"""File helpers shared by every layer of the library: nothing icmix writes is ever half-written.

- ``atomic_write(path, write)``: one file, via a temporary sibling and a rename.
- ``staged(directory)``: several files that appear together or not at all (a figure's csv,
  png, json and md; a saved model's weights and config).
- ``check_writable(directory)``: fail before any work when an output folder cannot be written.
- ``exclusive(directory)``: one writer at a time per output folder (a lock file naming its
  holder; a lock left by a dead process is free again, since the kernel drops it).

Files get the mode the user's umask gives (not the 0600 of ``tempfile``), and a full disk is
reported as ``no space left on PATH`` with the temporary files removed.  Every temporary is
named by ``temporary_name`` (``.icmix-tmp-<pid>-...``), and ``remove_stale_files`` deletes
nothing else: a user's own files in an output folder are never touched, whatever their names.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import re
import shutil
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".icmix.lock"


def is_full_disk(err: BaseException) -> bool:
    """Whether ``err`` says the disk is full or the quota exceeded (``ENOSPC``, ``EDQUOT``)."""
    return getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def reporting_full_disk(where: str | Path):
    """Re-raise a full-disk ``OSError`` (ENOSPC, EDQUOT) of the block as ``no space left on WHERE``."""
    try:
        yield
    except OSError as err:
        if is_full_disk(err):
            raise OSError(errno.ENOSPC, f"no space left on {where}") from err
        raise


TEMPORARY_PREFIX = ".icmix-tmp-"
_TEMPORARY = re.compile(r"^\.icmix-tmp-\d+-[0-9a-f]{12}(-.*)?$")
_CREATED: set[str] = set()  # the temporary names this process made (it may still be writing them)


def temporary_name(label: str = "") -> str:
    """The name of a temporary file or folder icmix creates: its own prefix, this process's id,
    a random part and a label (``.icmix-tmp-<pid>-<12 hex>-<label>``, the label's end kept, so
    a file's suffix survives), so that ``remove_stale_files`` can tell it from anything else."""
    name = f"{TEMPORARY_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}" + (f"-{label[-100:]}" if label else "")
    _CREATED.add(name)
    return name


def temporary_dir(parent: Path, label: str = "") -> Path:
    """Create a folder named by ``temporary_name`` in ``parent`` (the umask's mode)."""
    path = Path(parent) / temporary_name(label)
    path.mkdir()
    return path


def _temporary_sibling(path: Path) -> Path:
    # Not created in advance: whatever writes it creates it, with the umask's mode.  The name
    # ends with the file's own name, so writers that read the format off the suffix still can.
    return path.parent / temporary_name(path.name)


def remove_stale_files(directory: str | Path, legacy: re.Pattern | None = None) -> list[Path]:
    """Delete the temporaries a killed icmix process left in ``directory`` (never published,
    so never part of a result): only names ``temporary_name`` makes, and none this process
    made.  Nothing else is touched, whatever its name.  ``legacy`` adds the names an older
    icmix gave its temporaries in a folder only icmix writes (a run's ``checkpoints/``).

    Call it only while holding the folder's lock (``exclusive``): no other process then writes
    temporaries into the folder, so every other one is a dead writer's.  (A process id in the
    name cannot say that: in a container every run may be process 1.)"""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for path in directory.iterdir():
        if (_TEMPORARY.match(path.name) and path.name not in _CREATED) or (legacy is not None and legacy.match(path.name)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def atomic_write(path: str | Path, write) -> None:
    """Write a file via a temporary sibling and a rename, so a crash never leaves half a file.

    ``write`` receives the temporary path and must write the whole file there.  On a full
    disk the temporary file is removed and ``OSError`` says ``no space left on <folder>``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_sibling(path)
    try:
        with reporting_full_disk(path.parent):
            write(str(tmp))
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it (for files a rename is about to publish)."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


@contextmanager
def staged(directory: str | Path):
    """A temporary folder inside ``directory`` whose files are moved into ``directory`` when
    the block ends without error, and deleted otherwise: the files appear together or not at
    all, and a full disk leaves no temporary folder behind (``no space left on DIRECTORY``).

        with staged(out) as stage:
            table.to_csv(stage / "fig.csv"); fig.savefig(stage / "fig.png")
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stage = temporary_dir(directory, "stage")
    try:
        with reporting_full_disk(directory):
            yield stage
            for item in sorted(stage.iterdir()):
                os.replace(item, directory / item.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextmanager
def staged_directory(path: str | Path, replaces: tuple[str, ...] = ()):
    """A temporary sibling folder that replaces the folder ``path`` when the block ends without
    error, and is deleted otherwise: ``path`` is whole, never partial.  An existing ``path`` is
    replaced only if it holds nothing but the files named in ``replaces`` (``ValueError``
    otherwise, before any work): it is renamed aside, the new folder renamed in, then the old
    one deleted, so a crash leaves the old or the new folder."""
    path = Path(path)
    if path.exists():
        other = sorted(p.name for p in path.iterdir() if p.name not in replaces) if path.is_dir() else [path.name]
        if other:
            raise ValueError(f"{path} exists and holds other files ({', '.join(other[:5])}); "
                             "save into an empty or new folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    stage = temporary_dir(path.parent, path.name)
    old = path.parent / temporary_name(f"old-{path.name}")
    try:
        with reporting_full_disk(path.parent):
            yield stage
            if path.exists():
                os.rename(path, old)
            os.rename(stage, path)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def check_writable(directory: str | Path, flag: str = "--out") -> Path:
    """Create ``directory`` if needed and prove a file can be written there, before any work.

    Raises ``OSError`` naming the folder (and the flag it came from) when it cannot be made,
    is not a folder, is read-only or is on a full disk.
    """
    directory = Path(directory)
    created = [p for p in (directory, *directory.parents) if not p.exists()]
    try:
        if directory.exists() and not directory.is_dir():
            raise OSError(errno.ENOTDIR, f"{flag} {directory} is a file, not a folder")
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / temporary_name("probe")
        try:
            write_bytes_durably(probe, b"icmix")
        finally:
            if probe.exists():
                probe.unlink()
    except OSError as err:
        for p in created:  # leave no empty folder behind (deepest first)
            try:
                p.rmdir()
            except OSError:
                break
        if is_full_disk(err):
            raise OSError(errno.ENOSPC, f"no space left on {directory}") from None
        if err.errno == errno.ENOTDIR:
            raise
        raise OSError(err.errno, f"{flag} {directory} is not writable ({err.strerror or err})") from None
    return directory


def _holder() -> dict:
    return {"pid": os.getpid(), "host": platform.node(), "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "python"}


def _in_use(fd: int, what: str, directory: Path, path: Path) -> str:
    """The refusal naming the holder of a lock (closes ``fd``)."""
    try:
        holder = json.loads(os.read(fd, 4096).decode() or "{}")
    except (ValueError, OSError):
        holder = {}
    finally:
        os.close(fd)
    who = (f"process {holder.get('pid', '?')} on {holder.get('host', '?')} since {holder.get('since', '?')} "
           f"({holder.get('command', '?')})") if isinstance(holder, dict) and holder else "another process"
    return f"{what} {directory} is in use by {who}. Wait for it to finish, or write somewhere else (lock file: {path})"


@contextmanager
def exclusive(directory: str | Path, what: str = "--out"):
    """Hold ``DIRECTORY/.icmix.lock`` for the block (yields its path; ``None``, with a warning,
    on a file system without locks): a second icmix process writing into the same folder is
    refused at once, with the holder's pid, host, start time and command.

    The lock is an ``flock`` on the file, which the kernel releases when its process ends in
    any way (``kill -9`` included), so a lock file left behind by a dead process is free:
    it is taken over, not obeyed.  The file is removed on release; a process that locked a
    file that was removed meanwhile notices (its inode is no longer the path's) and retries.
    """
    import fcntl

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(_in_use(fd, what, directory, path)) from None
        except OSError as err:  # a file system without locks (ENOLCK): go on unguarded, but say so
            os.close(fd)
            unsupported = err
            break
        unsupported = None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder before us removed the file as we opened it: lock the new one
    if unsupported is not None:
        import warnings

        warnings.warn(f"cannot lock {path} ({unsupported.strerror}); nothing stops a second icmix process from "
                      f"writing into {directory} at the same time", stacklevel=3)
        path.unlink(missing_ok=True)
        yield None
        return
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder()).encode(), 0)
        yield path
    finally:
        path.unlink(missing_ok=True)  # while still holding it, so nobody can lock the old inode meanwhile
        os.close(fd)


@contextmanager
def output_folder(directory: str | Path, flag: str = "--out"):
    """``check_writable`` then ``exclusive``: the folder an icmix command writes its results to.
    A folder this call created is removed again if the command fails before writing into it."""
    directory = Path(directory)
    created = not directory.exists()
    check_writable(directory, flag)
    try:
        with exclusive(directory, flag) as lock:
            if lock is not None:
                remove_stale_files(directory)  # temporaries of a writer killed without clean-up
            yield lock
    except BaseException:
        try:
            if created and directory.is_dir() and not any(directory.iterdir()):
                directory.rmdir()
        except OSError:
            pass
        raise
