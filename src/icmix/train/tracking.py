"""Experiment trackers: where a run's evaluation rows go besides ``metrics.jsonl``.

``TrainConfig.tracking`` lists them (``tensorboard``, ``wandb``).  ``metrics.jsonl`` stays the
deterministic record: a tracker receives a copy of each row after it is written, draws no
random number and changes no number, and the run's name (its config hash) does not depend on
it (``TrainConfig.identity``).

Weights & Biases (``pip install 'icmix[wandb]'``) gets the full config, the run name, a group
(the figure or sweep the run belongs to; ``WANDB_RUN_GROUP`` overrides it) and every row.  Its
project is ``WANDB_PROJECT`` or ``icmix``; the W&B run id is derived from the run directory, so
a resumed or requeued run continues the same W&B run (``RUN/wandb-id``).  ``WANDB_MODE=offline`` writes it under
``RUN/wandb`` with no network (``wandb sync`` uploads it later).
"""

from __future__ import annotations

import os
from pathlib import Path

TRACKERS = ("tensorboard", "wandb")


def check_tracking(tracking: tuple[str, ...]) -> tuple[str, ...]:
    """``tracking`` if every entry is a known tracker, named once; ``ValueError`` otherwise."""
    unknown = [t for t in tracking if t not in TRACKERS]
    if unknown:
        raise ValueError(f"tracking must list trackers among {TRACKERS}, got {unknown}")
    if len(set(tracking)) != len(tracking):
        raise ValueError(f"tracking names a tracker twice: {list(tracking)}")
    return tracking


_PACKAGES = {"tensorboard": ("torch.utils.tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


def trackers_of(cfg) -> tuple[str, ...]:
    """The trackers a config asks for: ``tracking``, and ``tensorboard`` for the older flag."""
    return tuple(cfg.tracking) + (("tensorboard",) if cfg.tensorboard and "tensorboard" not in cfg.tracking else ())


def require(tracking: tuple[str, ...]) -> tuple[str, ...]:
    """``tracking`` if each tracker's package is installed and, for W&B, it can log (an API key,
    or offline mode); ``ValueError`` saying how to get there otherwise.  Called before a run
    writes anything, so a refused run leaves its folder as it was."""
    import importlib

    for name in tracking:
        module, extra = _PACKAGES[name]
        try:
            importlib.import_module(module)
        except ImportError:
            raise ValueError(f"tracking {name} needs the {extra} package (pip install 'icmix[{extra}]')") from None
    if "wandb" in tracking:
        _require_wandb_credentials()
    return tracking


def _require_wandb_credentials() -> None:
    """W&B logs offline (``WANDB_MODE=offline`` or ``wandb offline``) or disabled, or has an API
    key (``WANDB_API_KEY``, ``~/.netrc``, W&B's settings; never a prompt, nothing sent).  Without
    ``WANDB_API_KEY`` this sets W&B up in this process (its settings; W&B may start its
    ``wandb-core`` service) and ``wandb.login`` may print where it found a key."""
    import wandb

    if os.environ.get("WANDB_API_KEY"):
        return
    try:
        settings = wandb.setup().settings
    except Exception as err:  # noqa: BLE001 - pydantic's validation error of a bad WANDB_MODE, and W&B's own
        raise ValueError(f"tracking wandb: W&B's settings are not valid here ({str(err).splitlines()[0]})") from None
    if settings.mode in ("offline", "dryrun", "disabled"):
        return
    if not wandb.login(prompt=False, verify=False):
        raise ValueError("tracking wandb: W&B has no API key here (none in WANDB_API_KEY, ~/.netrc or W&B's settings), "
                         "so the run was not started. Run `wandb login` or set WANDB_API_KEY to log online, or set "
                         "WANDB_MODE=offline to log into RUN/wandb and upload later with `wandb sync`")


WANDB_ID = "wandb-id"


def wandb_id(run: Path) -> str:
    """The W&B run id of a run directory: drawn at its first start and kept in ``RUN/wandb-id``,
    so every resumed or requeued start continues the same W&B run, and a new run trained in the
    same folder (or the same path on another cluster) starts a new one."""
    import uuid

    from icmix.io import atomic_write

    path = Path(run) / WANDB_ID
    if not path.exists():
        atomic_write(path, lambda p: Path(p).write_text(uuid.uuid4().hex[:16] + "\n"))
    return path.read_text().strip()


class _TensorBoard:
    def __init__(self, run: Path, cfg, group: str | None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ValueError("tracking tensorboard needs the tensorboard package "
                             "(pip install 'icmix[tensorboard]')") from err
        self.writer = SummaryWriter(run / "tensorboard")

    def log(self, row: dict) -> None:
        for key, value in row.items():
            if key != "step":
                self.writer.add_scalar(key, value, row["step"])

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, run: Path, cfg, group: str | None):
        try:
            import wandb
        except ImportError as err:
            raise ValueError("tracking wandb needs the wandb package (pip install 'icmix[wandb]')") from err
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "icmix"), name=run.name, id=wandb_id(run),
                              group=os.environ.get("WANDB_RUN_GROUP", group), config=cfg.to_dict(), dir=str(run),
                              resume="allow", reinit="create_new")

    def log(self, row: dict) -> None:
        # A resumed run logs again the rows after its checkpoint; W&B keeps the first copy of a
        # step (the same numbers: training is deterministic).
        if row["step"] >= self.run.step:
            self.run.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)  # a crashed run shows as failed in W&B


_BACKENDS = {"tensorboard": _TensorBoard, "wandb": _WandB}


class Trackers:
    """The trackers of a run (none when ``cfg.tracking`` is empty): ``log(row)``, then ``close()``."""

    def __init__(self, run: Path, cfg, group: str | None = None):
        self.backends = []
        try:
            for name in trackers_of(cfg):
                self.backends.append(_BACKENDS[name](Path(run), cfg, group))
        except BaseException:
            self.close(failed=True)
            raise

    def log(self, row: dict) -> None:
        """Send one evaluation row (``step`` and the metrics) to every tracker."""
        for backend in self.backends:
            backend.log(row)

    def close(self, failed: bool = False) -> None:
        """Finish every tracker (a W&B run marked failed with ``failed``), then drop them."""
        for backend in self.backends:
            backend.close(failed)
        self.backends = []
