import pytest
import torch

from icmix import MTDTask


@pytest.fixture
def small_task():
    return MTDTask(vocab_size=6, order=3, seed=11)


def sample(task, batch, length, seed):
    return task.sample(batch, length, generator=torch.Generator().manual_seed(seed))
