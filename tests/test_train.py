"""The training engine: config validation, determinism, resume after SIGKILL, losses."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch.nn import functional as F

from icmix.cli import main
from icmix.train import TrainConfig, load_run, train
from icmix.train.checkpoint import read_trainer
from icmix.objectives import loss_fn, to_distribution

TINY = {
    "task": {"kind": "mtd", "vocab_size": 4, "order": 2, "seed": 3, "length": 8},
    "model": {"kind": "disentangled", "n_layers": 2, "n_heads": 1},
    "optim": {"lr": 0.01, "schedule": "cosine", "warmup_steps": 3},
    "steps": 30, "batch_size": 16, "eval_every": 5, "eval_size": 32, "checkpoint_every": 10, "seed": 7,
}


def tiny(**over) -> TrainConfig:
    d = json.loads(json.dumps(TINY))
    for k, v in over.items():
        d[k] = v
    return TrainConfig.from_dict(d)


def weights(path: Path) -> dict:
    return load_file(path / "model.safetensors")


def test_same_seed_bit_identical(tmp_path):
    for kind in ("disentangled", "gpt"):
        model = {"kind": kind, "n_layers": 2} if kind == "disentangled" else {"kind": "gpt", "n_layers": 1, "d_model": 16, "n_heads": 2}
        a = train(tiny(model=model), tmp_path / f"{kind}a", progress=False)
        b = train(tiny(model=model), tmp_path / f"{kind}b", progress=False)
        assert (a / "metrics.jsonl").read_bytes() == (b / "metrics.jsonl").read_bytes()
        for sub in ("model", "checkpoints/step_0000020", "checkpoints/step_0000030"):
            assert (a / sub / "model.safetensors").read_bytes() == (b / sub / "model.safetensors").read_bytes()
        sa, sb = read_trainer(a / "checkpoints/step_0000030"), read_trainer(b / "checkpoints/step_0000030")
        assert torch.equal(sa["data_rng"], sb["data_rng"])
        for pa, pb in zip(sa["optimiser"]["state"].values(), sb["optimiser"]["state"].values()):
            assert all(torch.equal(pa[k], pb[k]) for k in pa)
        rows = [json.loads(x) for x in (a / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30]
    c = train(tiny(seed=8), tmp_path / "c", progress=False)
    assert not torch.equal(weights(c / "model")["readout.weight"], weights(tmp_path / "disentangleda" / "model")["readout.weight"])


def test_resume_after_sigkill_matches_uninterrupted(tmp_path):
    cfg = dict(TINY, steps=600, checkpoint_every=20, eval_every=20)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    reference = train(TrainConfig.from_dict(cfg), tmp_path / "reference", progress=False)
    run = tmp_path / "killed"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "icmix.cli", "train", str(tmp_path / "cfg.yaml"), "--out", str(run),
                             "--no-progress"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer = run / "checkpoints" / "LATEST"
    deadline = time.time() + 120
    while time.time() < deadline and not (pointer.exists() and pointer.read_text() >= "step_0000060"):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "model").exists(), "the run finished before it could be killed"
    killed_at = pointer.read_text()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    ref, got = weights(reference / "model"), weights(run / "model")
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    assert (reference / "metrics.jsonl").read_bytes() == (run / "metrics.jsonl").read_bytes()
    assert killed_at < "step_0000600"


BAD = {
    "unknown top-level key": ({"stepz": 10}, "unknown config keys at the top level"),
    "unknown task key": ({"task": dict(TINY["task"], vocab=3)}, "unknown config keys in task"),
    "unknown model key": ({"model": {"kind": "disentangled", "layers": 2}}, "unknown DisentangledConfig keys"),
    "wrong type": ({"steps": "many"}, "steps must be int"),
    "negative steps": ({"steps": -5}, "steps must be an integer >= 1"),
    "order >= length": ({"task": dict(TINY["task"], order=8)}, "order must be smaller"),
    "unknown loss": ({"loss": "hinge"}, "loss must be one of"),
    "unknown model kind": ({"model": {"kind": "lstm"}}, "model.kind must be one of"),
    "model key set by task": ({"model": {"kind": "gpt", "vocab_size": 3}}, "set by the task"),
    "negative lr": ({"optim": {"lr": -1.0}}, "optim.lr"),
    "bad gpt width": ({"model": {"kind": "gpt", "d_model": 10, "n_heads": 4}}, "divisible"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_configs_fail_before_training(case, tmp_path, capsys):
    over, match = BAD[case]
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_dict({**TINY, **over})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**TINY, **over}))
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert match.split()[0] in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_overrides_and_run_dir_guards(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(TINY))
    cfg = TrainConfig.from_yaml(path, ["optim.lr=3e-4", "model.n_layers=3", "loss=ce"])
    assert cfg.optim.lr == 3e-4 and cfg.model.params["n_layers"] == 3 and cfg.loss == "ce"
    assert TrainConfig.from_yaml(tmp_path / "c.yaml") == TrainConfig.from_dict(yaml.safe_load(cfg.to_yaml()) | {
        "optim": TINY["optim"], "model": TINY["model"], "loss": "mse"})
    run = train(tiny(steps=5, eval_every=5, checkpoint_every=5), tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match="already holds a run"):
        train(tiny(), run, progress=False)
    with pytest.raises(ValueError, match="different config"):
        train(tiny(steps=99), run, resume=True, progress=False)


def test_checkpoint_that_does_not_match_its_config(tmp_path):
    run = tmp_path / "r"
    train(tiny(steps=10), run, progress=False)
    meta = yaml.safe_load((run / "config.yaml").read_text())
    meta["model"]["n_layers"] = 3
    meta["steps"] = 20
    (run / "config.yaml").write_text(yaml.safe_dump(meta))
    (run / "model" / "model.safetensors").unlink()
    before = (run / "metrics.jsonl").read_bytes()
    # The checkpoint records the config it was trained with: the edit is named as one.
    with pytest.raises(ValueError, match=r"no longer describes this run.*model.n_layers: 2 when trained, 3 in config.yaml"):
        train(None, run, resume=True, progress=False)
    assert (run / "metrics.jsonl").read_bytes() == before  # nothing trained, nothing rewritten
    # A checkpoint written before configs were recorded is checked against the model itself.
    for name in ("config.yaml", "checksums.json"):
        (run / "checkpoints" / "step_0000010" / name).unlink()
    with pytest.warns(UserWarning, match="does not match the model"), \
            pytest.raises(ValueError, match="(?s)no valid checkpoint.*does not match the model the run's config describes"):
        train(None, run, resume=True, progress=False)
    assert (run / "metrics.jsonl").read_bytes() == before


def test_losses_against_direct_formulas():
    g = torch.Generator().manual_seed(0)
    out = torch.randn(3, 5, 4, generator=g, dtype=torch.float64)
    y = torch.randint(4, (3, 5), generator=g)
    last = torch.tensor([False] * 4 + [True])
    brier = ((out[:, -1] - F.one_hot(y[:, -1], 4)) ** 2).sum(-1).mean()
    torch.testing.assert_close(loss_fn(out, y, last, "mse"), brier)
    allpos = torch.tensor([False, True, True, True, True])
    ce = F.cross_entropy(out[:, 1:].reshape(-1, 4).float(), y[:, 1:].reshape(-1))
    torch.testing.assert_close(loss_fn(out, y, allpos, "ce"), ce)
    p = to_distribution(torch.tensor([[0.5, -0.1, 0.6]]), "mse")
    assert p.min() > 0 and abs(p.sum() - 1) < 1e-12


def test_load_run_refuses_unfinished_and_missing(tmp_path):
    with pytest.raises(ValueError, match="not a training run"):
        load_run(tmp_path)
    run = train(tiny(steps=5, eval_every=5, checkpoint_every=5), tmp_path / "r", progress=False)
    cfg, model = load_run(run)
    assert cfg.steps == 5 and model.config.vocab_size == 4


def test_cross_entropy_all_positions_run(tmp_path):
    cfg = tiny(steps=6, eval_every=3, checkpoint_every=6, loss="ce", loss_positions="all",
               model={"kind": "gpt", "n_layers": 1, "d_model": 8, "n_heads": 2, "positions": "relative"})
    run = train(cfg, tmp_path / "ce", progress=False)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 6]
    assert all(np.isfinite(r["eval_kl"]) and r["eval_kl"] >= 0 for r in rows)
    assert rows[0]["eval_loss"] > 1.0  # cross-entropy near log(4) at the start, not a Brier score


def test_parallel_runs_equal_sequential_runs(tmp_path):
    """train_many in worker processes writes the same bits as training one run after another."""
    from icmix.train import train_many

    configs = [tiny(seed=7), tiny(seed=8)]
    train_many([(c, tmp_path / f"seq{c.seed}") for c in configs], 1, progress=False)
    train_many([(c, tmp_path / f"par{c.seed}") for c in configs], 2, progress=False)
    for c in configs:
        seq, par = tmp_path / f"seq{c.seed}", tmp_path / f"par{c.seed}"
        assert (seq / "metrics.jsonl").read_bytes() == (par / "metrics.jsonl").read_bytes()
        assert (seq / "model/model.safetensors").read_bytes() == (par / "model/model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="different config"):  # a clash in a worker reaches the caller
        train_many([(tiny(seed=9), tmp_path / "seq7"), (tiny(seed=8), tmp_path / "seq8")], 2, progress=False)


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_workers_exit_when_the_parent_is_killed(tmp_path):
    """SIGTERM to the parent alone (not its process group) must not leave a worker running on."""
    script = tmp_path / "parent.py"
    script.write_text("import os, time\nfrom icmix._pool import worker_pool\n"
                      "if __name__ == '__main__':\n"
                      "    with worker_pool(1) as pool:\n"
                      "        print(pool.submit(os.getpid).result(), flush=True)\n"
                      "        pool.submit(time.sleep, 120).result()\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    try:
        assert _running(worker)
        parent.terminate()
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _running(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _running(worker), "the worker outlived its parent"
    finally:
        if _running(worker):
            os.kill(worker, signal.SIGKILL)


def test_fine_tune_lowers_the_loss_and_leaves_the_global_rng_alone():
    from icmix.train import build_model, build_task, fine_tune

    cfg = tiny()
    torch.manual_seed(0)
    model, task = build_model(cfg), build_task(cfg)
    batch = cfg.family.objective(task, cfg).batch(0, 512, torch.Generator().manual_seed(99))
    mask = task.loss_mask(cfg.task.length, cfg.loss_positions)
    before = loss_fn(model(batch["inputs"]), batch["targets"], mask, cfg.loss).item()
    state = torch.get_rng_state()
    fine_tune(model, task, cfg, steps=200, lr=0.02, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    with torch.no_grad():
        after = loss_fn(model(batch["inputs"]), batch["targets"], mask, cfg.loss).item()
    assert after < before - 0.01


def test_sweep_trains_a_grid_and_skips_finished_runs(tmp_path, capsys):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(dict(TINY, steps=10, checkpoint_every=5)))
    args = ["sweep", str(tmp_path / "base.yaml"), "--grid", "seed=0,1", "--grid", "task.order=1,2",
            "--out", str(tmp_path / "sw"), "--jobs", "2", "--no-progress"]
    assert main(args) == 0
    runs = sorted((tmp_path / "sw" / "runs").iterdir())
    assert len(runs) == 4
    cfgs = {(c.seed, c.task.order) for c in (TrainConfig.from_yaml(r / "config.yaml") for r in runs)}
    assert cfgs == {(0, 1), (0, 2), (1, 1), (1, 2)}
    stamps = [(r / "model" / "model.safetensors").stat().st_mtime_ns for r in runs]
    # an interrupted run is resumed, finished ones are left alone
    (runs[0] / "model" / "model.safetensors").unlink()
    assert main(args) == 0
    assert [(r / "model" / "model.safetensors").stat().st_mtime_ns for r in runs][1:] == stamps[1:]
    assert (runs[0] / "model" / "model.safetensors").exists()
    assert "seed=1 task.order=2" in capsys.readouterr().out
    assert main(["sweep", str(tmp_path / "base.yaml"), "--grid", "seed", "--out", str(tmp_path / "bad")]) == 2


def test_data_device_is_validated_and_keeps_older_run_names():
    """``data_device`` (sampling on the training device) is a later field: a config at its
    default serialises as before, so the names of older runs (a hash of the YAML) hold."""
    from icmix.experiments.common import run_name

    cfg = tiny()
    assert "data_device" not in cfg.to_yaml()
    on_device = tiny(data_device="device")
    assert "data_device: device" in on_device.to_yaml()
    assert run_name(on_device) != run_name(cfg)
    assert TrainConfig.from_dict(yaml.safe_load(on_device.to_yaml())) == on_device
    with pytest.raises(ValueError, match="data_device must be one of"):
        tiny(data_device="gpu")


def test_data_device_on_cpu_trains_like_the_default(tmp_path):
    """On a CPU run, "device" is the CPU: the same generator, the same numbers."""
    a = train(tiny(), tmp_path / "a", progress=False)
    b = train(tiny(data_device="device"), tmp_path / "b", progress=False)
    assert (a / "metrics.jsonl").read_bytes() == (b / "metrics.jsonl").read_bytes()
    wa, wb = weights(a / "model"), weights(b / "model")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
