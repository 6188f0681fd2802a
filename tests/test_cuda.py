"""CUDA paths (skipped without a GPU): the same numbers as on CPU, and training in each precision."""

import json
import shutil

import pytest
import torch

from icmix.construct import mirror_descent_transformer
from icmix.estimators import mtd as est
from icmix.models import DisentangledConfig, DisentangledTransformer, GPTConfig, GPTTransformer
from icmix.tasks import MTDTask
from icmix.train import TrainConfig, load_run, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def killed_after_step_20(run) -> None:
    """Turn a finished 40-step run (checkpoints at 20 and 40) into one killed after step 20."""
    (run / "model" / "model.safetensors").unlink()
    shutil.rmtree(run / "checkpoints" / "step_0000040")
    (run / "checkpoints" / "LATEST").write_text("step_0000020")


def test_models_on_cuda_match_cpu():
    torch.manual_seed(0)
    tokens = torch.randint(0, 6, (8, 24))
    for model in (DisentangledTransformer(DisentangledConfig(vocab_size=6, n_layers=3, max_length=24)),
                  GPTTransformer(GPTConfig(vocab_size=6, n_layers=2, d_model=32, n_heads=4, max_length=24))):
        for p in model.parameters():  # the readout starts at zero; make the comparison non-trivial
            torch.nn.init.normal_(p, std=0.3)
        model.eval()
        with torch.no_grad():
            cpu = model(tokens)
            gpu = model.cuda()(tokens.cuda()).cpu()
        torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=1e-4)


def test_construction_on_cuda_is_one_md_step():
    task = MTDTask(5, 3, seed=1)
    tokens, _ = task.sample(64, 40, generator=torch.Generator().manual_seed(2))
    beta = 8.0
    model = mirror_descent_transformer(task.transition, 3, beta, max_length=40).cuda()
    with torch.no_grad():
        p = model(tokens.cuda())[:, -1].cpu()
    lam = est.mirror_descent(tokens, task.transition, 3, beta / (3 * 37))
    err = (p - est.predictive(tokens, task.transition, lam)).abs().max().item()
    assert err < 1e-10


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_on_cuda(tmp_path, precision):
    cfg = TrainConfig.from_dict({
        "task": {"kind": "mtd", "vocab_size": 5, "order": 2, "seed": 3, "length": 16},
        "model": {"kind": "disentangled", "n_layers": 3, "positions": "warmup", "value_offsets": 2},
        "optim": {"lr": 6e-3, "schedule": "cosine", "warmup_steps": 20},
        "loss_positions": "all", "steps": 300, "batch_size": 64, "eval_every": 100, "seed": 0,
        "device": "cuda", "precision": precision,
    })
    run = train(cfg, tmp_path / precision, progress=False)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in rows)
    assert rows[-1]["eval_loss"] < rows[0]["eval_loss"]  # it learns
    assert rows[-1]["eval_kl"] < 0.08  # 0.036 on CPU in fp32
    _, model = load_run(run)  # the saved model loads on CPU
    assert next(model.parameters()).device.type == "cpu"


def test_a_run_started_on_cuda_resumes_on_cpu(tmp_path, monkeypatch):
    cfg = TrainConfig.from_dict({
        "task": {"kind": "mtd", "vocab_size": 5, "order": 2, "seed": 3, "length": 12},
        "model": {"kind": "disentangled", "n_layers": 2},
        "steps": 40, "batch_size": 16, "eval_every": 10, "checkpoint_every": 20, "seed": 0, "device": "auto",
    })
    run = tmp_path / "r"
    train(cfg, run, progress=False)
    killed_after_step_20(run)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    train(None, run, resume=True, progress=False)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30, 40]
    _, model = load_run(run)
    assert next(model.parameters()).device.type == "cpu"


def test_tasks_sample_on_the_generators_device():
    from icmix.tasks import MixLinRegTask

    g = torch.Generator(device="cuda").manual_seed(0)
    tokens, lam = MTDTask(5, 3, seed=1).sample(16, 20, generator=g)
    xs, ys = MixLinRegTask(4, 3, noise=0.5, seed=0).sample(16, 9, generator=g)
    assert {t.device.type for t in (tokens, lam, xs, ys)} == {"cuda"}
    assert tokens.max() < 5 and torch.allclose(lam.sum(-1), torch.ones(16, device="cuda", dtype=lam.dtype))


@pytest.mark.parametrize("task", ["mtd", "fixed-set regression"])
def test_training_with_data_on_the_device_resumes_exactly(tmp_path, task):
    if task == "mtd":
        d = {"task": {"kind": "mtd", "vocab_size": 5, "order": 2, "seed": 3, "length": 12},
             "model": {"kind": "disentangled", "n_layers": 2}}
    else:
        d = {"task": {"kind": "mixlinreg", "dim": 4, "n_components": 3, "noise": 0.5, "n_points": 9, "n_train": 64},
             "model": {"kind": "gpt-regression", "n_layers": 1, "d_model": 16, "n_heads": 2}}
    cfg = TrainConfig.from_dict({**d, "steps": 40, "batch_size": 16, "eval_every": 10, "checkpoint_every": 20,
                                 "seed": 0, "device": "cuda", "data_device": "device"})
    full = train(cfg, tmp_path / "full", progress=False)
    part = tmp_path / "part"
    train(cfg, part, progress=False)
    killed_after_step_20(part)
    train(None, part, resume=True, progress=False)
    assert (full / "metrics.jsonl").read_text() == (part / "metrics.jsonl").read_text()
