import os
import sys
from pathlib import Path

import pytest
import torch

from icmix import MTDTask

# The test plugin (tests/plugin), installed by `make test` into a folder of its own: on the path of
# the tests and of the processes they start, and of nothing else.
PLUGIN_SITE = Path(os.environ.get("ICMIX_TEST_PLUGIN_SITE") or Path(__file__).resolve().parents[1] / ".venv" / "test-plugin-site")
if PLUGIN_SITE.is_dir() and str(PLUGIN_SITE) not in sys.path:
    sys.path.insert(0, str(PLUGIN_SITE))
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(PLUGIN_SITE), os.environ.get("PYTHONPATH")) if p)

# Under pytest-xdist (`make test` runs -n 2) each worker takes its share of the cores, not all of them.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


@pytest.fixture
def small_task():
    return MTDTask(vocab_size=6, order=3, seed=11)


def sample(task, batch, length, seed):
    return task.sample(batch, length, generator=torch.Generator().manual_seed(seed))
