"""Faults and bad input never cost a result (issue 18): one test per probe.

Each probe is what a user or a machine does to a run directory or a command: edit a run's
config, damage or delete its checkpoints, feed bad configs and arguments, fill the disk,
make ``--out`` read-only, write two commands into one ``--out``, press Ctrl-C.  Where a valid
checkpoint exists, the resumed run must end bit-identical to an uninterrupted one.

Real full and read-only disks are small tmpfs mounts (root with mount rights, as in CI;
skipped elsewhere); the same probes also run everywhere with an injected ``OSError``.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import icmix._checks
from icmix.cli import main
from icmix.io import LOCK_FILE, exclusive
from icmix.train import TrainConfig, train

TINY = {
    "task": {"kind": "mtd", "vocab_size": 4, "order": 2, "seed": 3, "length": 8},
    "model": {"kind": "disentangled", "n_layers": 2, "n_heads": 1},
    "optim": {"lr": 0.01, "schedule": "cosine", "warmup_steps": 3},
    "steps": 40, "batch_size": 16, "eval_every": 5, "eval_size": 32, "checkpoint_every": 10, "seed": 7,
    "device": "cpu",
}
# A cheap mtd-fig3 (about a second): enough to exercise every output file.
FIG3 = ["--set", "lengths=(8,16)", "--set", "n_sequences=20", "--set", "n_tune=10", "--set", "gibbs_samples=20",
        "--set", "gibbs_burn_in=5", "--set", "em_max_iter=50", "--set", "seeds=(0,)", "--no-progress"]
ICMIX = [sys.executable, "-m", "icmix"]


def tiny(**over) -> TrainConfig:
    return TrainConfig.from_dict({**json.loads(json.dumps(TINY)), **over})


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run: what every resumed run must equal, byte for byte."""
    run = tmp_path_factory.mktemp("ref") / "run"
    train(tiny(), run, progress=False)
    return run


def same_run(a: Path, b: Path) -> None:
    assert (a / "model" / "model.safetensors").read_bytes() == (b / "model" / "model.safetensors").read_bytes()
    assert (a / "metrics.jsonl").read_bytes() == (b / "metrics.jsonl").read_bytes()


def interrupted_copy(reference: Path, tmp_path: Path) -> Path:
    """The reference run as a kill after its last checkpoint leaves it: no final model."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    shutil.rmtree(run / "model")
    return run


def cli(argv, capsys) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


@pytest.fixture
def tmpfs(tmp_path):
    """``mount(size, readonly)`` -> a fresh tmpfs of that many bytes; skipped where mounting is not allowed."""
    mounts = []

    def mount(size: int, readonly: bool = False) -> Path:
        where = tmp_path / f"mnt{len(mounts)}"
        where.mkdir()
        opts = f"size={size}" + (",ro" if readonly else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
        mounts.append(where)
        return where

    yield mount
    for where in mounts:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


# --- the run's identity -------------------------------------------------------------------------

@pytest.mark.parametrize("edit, named", [
    ({"optim": {**TINY["optim"], "lr": 0.003}}, "optim.lr: 0.01 when trained, 0.003 in config.yaml"),
    ({"batch_size": 32}, "batch_size: 16 when trained, 32 in config.yaml"),
    ({"loss": "ce"}, "loss: 'mse' when trained, 'ce' in config.yaml"),
])
def test_resume_refuses_an_edited_config(reference, tmp_path, capsys, edit, named):
    run = interrupted_copy(reference, tmp_path)
    (run / "config.yaml").write_text(yaml.safe_dump({**yaml.safe_load((run / "config.yaml").read_text()), **edit}))
    before = files_under(run), (run / "metrics.jsonl").read_bytes()
    code, err = cli(["train", "--resume", run, "--no-progress"], capsys)
    assert code == 2 and err.startswith("icmix: error:") and named in err and "Traceback" not in err
    assert "checkpoints/step_0000040/config.yaml" in err  # where the true config is
    assert (files_under(run), (run / "metrics.jsonl").read_bytes()) == before  # nothing trained or rewritten


def test_finished_run_with_an_edited_config_is_refused(reference, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    text = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(text.replace("lr: 0.01", "lr: 0.02"))
    code, err = cli(["train", "--resume", run], capsys)
    assert code == 2 and "optim.lr: 0.01 when trained, 0.02 in config.yaml" in err


def test_changes_that_keep_the_numbers_are_accepted(reference, tmp_path):
    run = interrupted_copy(reference, tmp_path)
    (run / "checkpoints" / "step_0000040").rename(run / "checkpoints" / "gone")  # resume from step 30
    meta = yaml.safe_load((run / "config.yaml").read_text())
    meta.update(keep_checkpoints=3, checkpoint_every=5)
    (run / "config.yaml").write_text(yaml.safe_dump(meta))
    train(None, run, resume=True, progress=False)
    same_run(run, reference)
    assert "keep_checkpoints: 3" in (run / "checkpoints" / "step_0000040" / "config.yaml").read_text()  # recorded


def test_extending_steps_is_the_documented_change_and_is_recorded(tmp_path, capsys):
    """``--resume RUN --steps N``: with a constant schedule the extended run is bit-identical to
    a fresh N-step run; with a cosine one the lr follows the new length from the extension on."""
    constant = {"optim": {"lr": 0.01, "schedule": "constant"}}
    short, fresh = tmp_path / "short", tmp_path / "fresh"
    train(tiny(**constant), short, progress=False)
    train(tiny(**constant, steps=60), fresh, progress=False)
    assert cli(["train", "--resume", short, "--steps", "60", "--no-progress"], capsys)[0] == 0
    same_run(short, fresh)
    assert TrainConfig.from_yaml(short / "config.yaml").steps == 60
    [entry] = [json.loads(line) for line in (short / "history.jsonl").read_text().splitlines()]
    assert (entry["at_step"], entry["field"], entry["from"], entry["to"]) == (40, "steps", 40, 60)
    # killed after the extension, before its first checkpoint: a plain resume accepts the recorded change
    import shutil

    shutil.rmtree(short / "model")
    for step in ("step_0000050", "step_0000060"):
        shutil.rmtree(short / "checkpoints" / step)
    train(None, short, resume=True, progress=False)
    same_run(short, fresh)
    code, err = cli(["train", "--resume", short, "--steps", "50"], capsys)
    assert code == 2 and "--steps 50 must exceed the step of the newest checkpoint (60" in err
    code, err = cli(["train", tmp_path / "x.yaml", "--steps", "50"], capsys)
    assert code == 2 and "--steps extends a run" in err

    cosine = tmp_path / "cosine"  # TINY: cosine, 3 warm-up steps, lr 0.01
    train(tiny(), cosine, progress=False)
    used = []
    real_step = torch.optim.Adam.step

    def spy(self, *a, **k):  # the lr each optimiser step actually uses
        used.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim.Adam, "step", spy)
        train(None, cosine, resume=True, progress=False, extend_to=80)
    import math

    new_schedule = [0.01 * 0.5 * (1 + math.cos(math.pi * (s - 3) / (80 - 3))) for s in range(40, 80)]
    assert used == pytest.approx(new_schedule, rel=1e-12)  # from the first step after the extension on
    # Resumed from a checkpoint older than the extension: the history says where it really applies.
    import shutil

    import icmix.train.loop as loop

    older = tmp_path / "older"
    train(tiny(), older, progress=False)
    with pytest.MonkeyPatch.context() as mp:  # killed after the extension, before its first checkpoint
        mp.setattr(loop, "save_checkpoint", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            train(None, older, resume=True, progress=False, extend_to=80)
    os.truncate(older / "checkpoints" / "step_0000040" / "trainer.safetensors", 0)
    with pytest.warns(UserWarning, match="skipping damaged checkpoint"):
        train(None, older, resume=True, progress=False)
    entries = [json.loads(line) for line in (older / "history.jsonl").read_text().splitlines()]
    assert [(e["at_step"], e["from"], e["to"]) for e in entries] == [(40, 40, 80), (30, 40, 80)]
    assert "older than this change" in entries[1]["note"]


# --- damaged checkpoints ------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncate weights", "truncate trainer", "empty weights", "flip a byte",
                                    "delete trainer", "checksums of the wrong shape", "truncate config"])
def test_damaged_latest_checkpoint_falls_back_to_the_earlier_one(reference, tmp_path, damage):
    run = interrupted_copy(reference, tmp_path)
    latest = run / "checkpoints" / "step_0000040"
    weights, trainer = latest / "model.safetensors", latest / "trainer.safetensors"
    if damage == "truncate weights":
        os.truncate(weights, weights.stat().st_size // 2)
    elif damage == "truncate trainer":
        os.truncate(trainer, 100)
    elif damage == "empty weights":
        os.truncate(weights, 0)
    elif damage == "flip a byte":  # same size, different content: only the checksum sees it
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "checksums of the wrong shape":
        sums = json.loads((latest / "checksums.json").read_text())
        (latest / "checksums.json").write_text(json.dumps({k: {"size": v["bytes"]} for k, v in sums.items()}))
    elif damage == "truncate config":
        os.truncate(latest / "config.yaml", 30)
    else:
        trainer.unlink()
    with pytest.warns(UserWarning, match=f"skipping damaged checkpoint {latest}"):
        train(None, run, resume=True, progress=False)
    same_run(run, reference)  # resumed from step 30, ended where the uninterrupted run ended
    assert (run / "checkpoints" / "damaged_step_0000040").is_dir()  # kept for inspection, out of the way


def test_pruning_never_deletes_the_checkpoint_resumed_from(reference, tmp_path):
    """keep_checkpoints=1 with a damaged newer checkpoint: the damaged one must not count as the
    newest when old checkpoints are pruned, or the only valid one would be deleted."""
    import icmix.train.loop as loop

    run = interrupted_copy(reference, tmp_path)
    os.truncate(run / "checkpoints" / "step_0000040" / "model.safetensors", 0)
    meta = yaml.safe_load((run / "config.yaml").read_text())
    meta.update(keep_checkpoints=1, checkpoint_every=5)
    (run / "config.yaml").write_text(yaml.safe_dump(meta))
    real = loop.save_checkpoint

    def killed_after_one_save(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp, pytest.warns(UserWarning):
        mp.setattr(loop, "save_checkpoint", killed_after_one_save)
        with pytest.raises(KeyboardInterrupt):
            train(None, run, resume=True, progress=False)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["LATEST", "damaged_step_0000040", "step_0000035"]
    train(None, run, resume=True, progress=False)
    same_run(run, reference)


def test_finished_run_with_a_damaged_record_is_not_a_traceback(reference, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "checkpoints" / "step_0000040" / "config.yaml").write_text("task: [unclosed\n")
    code, err = cli(["train", "--resume", run], capsys)
    assert code == 0 and "icmix: warning: skipping damaged checkpoint" in err and "Traceback" not in err


@pytest.mark.parametrize("line, says", [
    ('{"at_step": 40, "field": "steps"}', "is damaged"),
    ('{"at_step": "40", "field": "steps", "from": 40, "to": 80}', "is damaged"),
    ('{"at_step": 40, "field": ["steps"], "from": 40, "to": 80}', "is damaged"),
    ('{"at_step": 40, "field": "steps", "from": 40, "to": -5}', "records an impossible change"),
    ('{"at_step": 40, "field": "steps", "fr', "is damaged"),
])
def test_damaged_history_is_named_and_nothing_is_deleted(reference, tmp_path, capsys, line, says):
    run = interrupted_copy(reference, tmp_path)
    (run / "history.jsonl").write_text(line + "\n")
    before = files_under(run)
    code, err = cli(["train", "--resume", run, "--no-progress"], capsys)
    assert code == 2 and f"{run / 'history.jsonl'} {says}" in err and "Traceback" not in err
    assert "delete" not in err  # not mistaken for damaged checkpoints
    assert files_under(run) == before


def test_an_extension_recorded_but_never_made_does_not_lock_the_run(reference, tmp_path, capsys):
    """history.jsonl says 40 -> 80 but config.yaml was never rewritten (a full disk in between):
    a later --steps 60 and a plain resume still work."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    shutil.rmtree(run / "model")
    (run / "history.jsonl").write_text('{"at_step": 40, "field": "steps", "from": 40, "to": 80}\n')
    assert cli(["train", "--resume", run, "--steps", "60", "--no-progress"], capsys)[0] == 0
    assert TrainConfig.from_yaml(run / "config.yaml").steps == 60
    assert cli(["train", "--resume", run, "--no-progress"], capsys)[0] == 0


def test_a_fresh_run_into_a_folder_of_orphaned_checkpoints_is_refused(reference, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "config.yaml").unlink()
    with pytest.raises(ValueError, match="holds checkpoints of an earlier run but no config.yaml"):
        train(tiny(), run, progress=False)


def test_missing_latest_pointer_uses_the_newest_valid_checkpoint(reference, tmp_path):
    run = interrupted_copy(reference, tmp_path)
    (run / "checkpoints" / "step_0000040").rename(tmp_path / "gone")  # killed between steps 30 and 40
    (run / "checkpoints" / "LATEST").unlink()
    metrics_seen = []
    real = Path.write_text

    def spy(self, text, *a, **k):  # the metrics are truncated to the checkpoint's step, never to 0
        if self.name.startswith(".icmix-tmp-") and self.name.endswith("-metrics.jsonl"):
            metrics_seen.append(text.count("\n"))
        return real(self, text, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "write_text", spy)
        train(None, run, resume=True, progress=False)
    same_run(run, reference)
    assert metrics_seen == [6]  # kept the 6 evaluations up to step 30: not restarted from 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["LATEST", "step_0000030", "step_0000040"]


def test_no_valid_checkpoint_names_them_and_touches_nothing(reference, tmp_path, capsys):
    run = interrupted_copy(reference, tmp_path)
    for step in ("step_0000030", "step_0000040"):
        os.truncate(run / "checkpoints" / step / "model.safetensors", 10)
    before = files_under(run)
    code, err = cli(["train", "--resume", run, "--no-progress"], capsys)
    assert code == 2 and "no valid checkpoint to resume from" in err
    assert "step_0000030: model.safetensors has 10 bytes" in err and "step_0000040" in err
    assert f"delete {run / 'checkpoints'}" in err  # what to do
    assert files_under(run) == before  # the damaged checkpoints are kept, not deleted


def test_stale_temporary_checkpoint_is_cleaned_on_resume(reference, tmp_path):
    run = interrupted_copy(reference, tmp_path)
    (run / "checkpoints" / ".tmp_step_0000050").mkdir()
    (run / "checkpoints" / ".tmp_step_0000050" / "model.safetensors").write_bytes(b"half")
    train(None, run, resume=True, progress=False)
    same_run(run, reference)
    assert not list((run / "checkpoints").glob(".tmp_*"))


def test_partial_last_metrics_line_is_dropped_on_resume(reference, tmp_path):
    run = interrupted_copy(reference, tmp_path)
    (run / "checkpoints" / "step_0000040").rename(run / "gone")
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 45, "train_lo')  # a full disk or a kill cut this line short
    train(None, run, resume=True, progress=False)
    same_run(run, reference)


# --- bad configs and arguments fail before any work --------------------------------------------

@pytest.mark.parametrize("text, says", [
    ("", "is empty"),
    ("# only a comment\n", "is empty"),
    ("- a\n- b\n", "must be a mapping of config keys"),
    ("just a string\n", "must be a mapping of config keys"),
    ("task: 5\n", "task must be a mapping"),
    ("model: [1, 2]\n", "model must be a mapping"),
    ("optim: 3\n", "optim must be a mapping"),
])
def test_bad_config_files(tmp_path, capsys, text, says):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    code, err = cli(["train", config, "--out", tmp_path / "run", "--no-progress"], capsys)
    assert code == 2 and err.startswith("icmix: error:") and says in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, says", [
    (["--order", "-1"], "order must be >= 1, got -1"),
    (["--order", "0", "--beta", "8"], "order must be >= 1, got 0"),
    (["--order", "12", "--beta", "8"], "order must be smaller than the sequence length"),
    (["--order", "2", "--beta", "-1"], "--beta must be a positive number"),
    (["--order", "2", "--eta", "nan"], "--eta must be a finite number"),
    (["--order", "2", "--alpha", "0"], "--alpha must be a positive number"),
    (["--order", "2", "--steps", "0"], "--steps must be an integer >= 1"),
    (["--order", "2", "--gibbs-samples", "0"], "--gibbs-samples must be an integer >= 1"),
])
def test_bad_estimate_arguments(tmp_path, capsys, args, says):
    import numpy as np

    np.save(tmp_path / "tokens.npy", np.random.default_rng(0).integers(0, 3, size=(2, 12)))
    np.save(tmp_path / "pi.npy", np.full((3, 3), 1 / 3))
    code, err = cli(["estimate", tmp_path / "tokens.npy", "--transition", tmp_path / "pi.npy", *args], capsys)
    assert code == 2 and err.startswith("icmix: error:") and says in err


def test_exact_bayes_refusal_names_the_flags_and_comes_before_any_estimator(tmp_path, capsys, monkeypatch):
    import numpy as np

    from icmix.estimators import mtd as est

    def must_not_run(*a, **k):
        raise AssertionError("an estimator ran before the arguments were checked")

    for name in ("mirror_descent", "em", "bayes_exact", "bayes_gibbs"):
        monkeypatch.setattr(est, name, must_not_run)
    np.save(tmp_path / "tokens.npy", np.random.default_rng(0).integers(0, 3, size=(2, 3000)))
    np.save(tmp_path / "pi.npy", np.full((3, 3), 1 / 3))
    code, err = cli(["estimate", tmp_path / "tokens.npy", "--transition", tmp_path / "pi.npy", "--order", "5"], capsys)
    assert code == 2 and "--estimator bayes-exact is too large for --order 5" in err
    assert "Use --estimator bayes-gibbs" in err and "max_work" not in err and "bayes_gibbs" not in err


def test_csv_parse_error_names_the_file(tmp_path, capsys):
    bad = tmp_path / "tokens.csv"
    bad.write_text("0,1,2\n1,x,0\n")
    code, err = cli(["estimate", bad, "--transition", bad, "--order", "1"], capsys)
    assert code == 2 and f"cannot read the tokens file {bad}" in err


def test_prefix_lengths_must_be_integers():
    from icmix.estimators.mtd import mirror_descent

    tokens, pi = torch.randint(0, 3, (2, 20)), torch.full((3, 3), 1 / 3)
    with pytest.raises(ValueError, match="prefix lengths must be integers, got 16.5"):
        mirror_descent(tokens, pi, 2, 0.1, lengths=[16.5])
    assert mirror_descent(tokens, pi, 2, 0.1, lengths=[16.0, torch.tensor(18)]).shape == (2, 2, 2)


@pytest.mark.parametrize("args, says", [
    (["reproduce", "mtd-fig3", "--set", "lengths=abc"], "lengths must be int, got 'abc'"),
    (["reproduce", "mtd-fig3", "--set", "lengths=(8,16.5)"], "lengths must be int, got 16.5"),
    (["reproduce", "all", "--jobs", "0"], "--jobs must be >= 1, got 0"),
    (["reproduce", "mtd-fig3", "--seeds", "0"], "--seeds must be >= 1"),
])
def test_bad_reproduce_arguments(tmp_path, capsys, args, says):
    code, err = cli([*args, "--out", tmp_path / "out", "--no-progress"], capsys)
    assert code == 2 and says in err
    assert not (tmp_path / "out").exists()


# --- sizes are checked before allocation --------------------------------------------------------

@pytest.fixture
def eight_gb(monkeypatch):
    """This machine has 8 GB available, whatever it really has (the checks' verdicts are then fixed)."""
    monkeypatch.setattr(icmix._checks, "available_memory", lambda: 8 * 10**9)


@pytest.fixture
def no_real_model(monkeypatch):
    """Building a model anywhere but on the ``meta`` device fails the test: nothing may be allocated."""
    from icmix.construct import mirror_descent as construct_md
    from icmix.models import DisentangledTransformer

    def guarded(config):
        if torch.empty(0).device.type != "meta":
            raise AssertionError("a real model was allocated before the size check")
        return DisentangledTransformer(config)

    monkeypatch.setattr(construct_md, "DisentangledTransformer", guarded)


@pytest.mark.parametrize("args, says", [
    (["construct", "mtd", "--vocab-size", "4", "--order", "2", "--beta", "8", "--max-length", "100000000"],
     "the construction with max_length 100,000,000 would need 56.4 GB of memory, more than the 8.0 GB available"),
    (["construct", "mtd", "--vocab-size", "4", "--order", "2", "--beta", "8", "--max-length", "100000", "--check"],
     "--check on 64 sequences of length 100,000 would need 46.1 TB"),
    (["construct", "mtd", "--vocab-size", "100000000", "--order", "2", "--beta", "8"],
     "an MTD task with vocab_size 100,000,000 would need 240.0 PB"),
    (["construct", "mlr", "--dim", "100000", "--components", "100000", "--noise", "1"],
     "100,000 components of dimension 100,000 would need 160.0 GB"),
    (["construct", "mlr", "--dim", "8", "--components", "3", "--noise", "1", "--points", "10000000"],
     "the posterior-mean construction (d = 8, m = 3, 10,000,000 points) would need"),
])
def test_huge_sizes_are_refused_before_allocation(tmp_path, capsys, eight_gb, no_real_model, args, says):
    code, err = cli([*args, "--out", tmp_path / "out"], capsys)
    assert code == 2 and says in err, err
    assert not (tmp_path / "out").exists()


def test_huge_training_configs_are_refused_before_allocation(tmp_path, capsys, eight_gb):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(TINY))
    code, err = cli(["train", config, "--set", "task.vocab_size=100000", "--out", tmp_path / "run"], capsys)
    assert code == 2 and "training a disentangled model of this config would need" in err
    assert not (tmp_path / "run").exists()


# --- outputs are all or nothing -----------------------------------------------------------------

@pytest.mark.parametrize("failing", ["csv", "png", "json", "md"])
def test_figure_outputs_appear_together_or_not_at_all(tmp_path, capsys, monkeypatch, failing):
    """An injected full disk at each of a figure's writes leaves nothing: no file, no temp folder."""
    import matplotlib.figure
    import pandas

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    if failing == "csv":
        monkeypatch.setattr(pandas.DataFrame, "to_csv", full)
    elif failing == "png":
        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    else:
        real = Path.write_text
        monkeypatch.setattr(Path, "write_text", lambda self, *a, **k: full() if self.suffix == f".{failing}"
                            else real(self, *a, **k))
    out = tmp_path / "out"
    code, err = cli(["reproduce", "mtd-fig3", "--out", out, *FIG3], capsys)
    assert code == 2 and f"icmix: error: no space left on {out}" in err
    assert files_under(out) == []  # no csv without its png, no .icmix-stage-* folder, no lock


def test_figure_on_a_real_full_disk(tmpfs, capsys):
    disk = tmpfs(64 * 1024)  # room for the csv, not for the png as well
    code, err = cli(["reproduce", "mtd-fig3", "--out", disk / "fig", *FIG3], capsys)
    assert code == 2 and f"no space left on {disk / 'fig'}" in err
    assert files_under(disk) == []  # not even the --out folder it made


def test_read_only_out_fails_before_the_computation(tmp_path, capsys, monkeypatch, tmpfs):
    from icmix.experiments import mtd_fig3

    monkeypatch.setattr(mtd_fig3, "compute", lambda *a: pytest.fail("computed before checking --out"))
    readonly = tmpfs(1 << 20, readonly=True)
    code, err = cli(["reproduce", "mtd-fig3", "--out", readonly, *FIG3], capsys)
    assert code == 2 and f"--out {readonly} is not writable" in err


def test_unwritable_out_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    import icmix.io
    from icmix.experiments import mtd_fig3

    monkeypatch.setattr(mtd_fig3, "compute", lambda *a: pytest.fail("computed before checking --out"))
    monkeypatch.setattr(icmix.io, "write_bytes_durably",
                        lambda path, data: (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only file system")))
    code, err = cli(["reproduce", "mtd-fig3", "--out", tmp_path / "out", *FIG3], capsys)
    assert code == 2 and f"--out {tmp_path / 'out'} is not writable (Read-only file system)" in err
    assert not (tmp_path / "out").exists()  # the folder it made for the probe is gone again


def test_training_on_a_full_disk_keeps_the_last_checkpoint_and_resumes_exactly(reference, tmp_path, capsys,
                                                                                 monkeypatch):
    import icmix.train.checkpoint as ckpt

    real, calls = ckpt.write_bytes_durably, []

    def fills_up(path, data):
        calls.append(path)
        if "step_0000030" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(ckpt, "write_bytes_durably", fills_up)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(TINY))
    run = tmp_path / "run"
    code, err = cli(["train", config, "--out", run, "--no-progress"], capsys)
    assert code == 2 and f"no space left on {run / 'checkpoints'}" in err and f"icmix train --resume {run}" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["LATEST", "step_0000010", "step_0000020"]
    monkeypatch.setattr(ckpt, "write_bytes_durably", real)  # space freed
    assert cli(["train", "--resume", run, "--no-progress"], capsys)[0] == 0
    same_run(run, reference)


def test_training_on_a_real_full_disk(reference, tmpfs, capsys, tmp_path):
    one = sum(f.stat().st_size for f in (reference / "checkpoints" / "step_0000040").iterdir())
    disk = tmpfs(int(2.5 * one) + 16 * 1024)  # two checkpoints fit, a third does not
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(TINY))
    code, err = cli(["train", config, "--out", disk / "run", "--no-progress"], capsys)
    assert code == 2 and f"no space left on {disk / 'run'}" in err and "Traceback" not in err
    kept = sorted(p.name for p in (disk / "run" / "checkpoints").iterdir())
    assert kept[0] == "LATEST" and kept[1:] and all(k.startswith("step_") for k in kept[1:])  # no .tmp_step_*
    import shutil

    shutil.copytree(disk / "run", tmp_path / "run")  # "free some space": move it to a disk with room
    assert cli(["train", "--resume", tmp_path / "run", "--no-progress"], capsys)[0] == 0
    same_run(tmp_path / "run", reference)


def test_stale_temporaries_of_a_killed_writer_are_removed_under_the_lock(tmp_path, capsys):
    out = tmp_path / "out"
    dead = subprocess.Popen(["true"])  # a writer that has gone (its pid named in its temporaries)
    dead.wait()
    (out / f".icmix-tmp-{dead.pid}-0123456789ab-stage").mkdir(parents=True)
    (out / f".icmix-tmp-{dead.pid}-0123456789ab-mtd-fig3.csv").write_text("half")
    # in a container every run may be process 1, alive: under the lock, its leftovers are stale all the same
    (out / ".icmix-tmp-1-0123456789ab-mtd-fig3.png").write_text("half")
    (out / "mine.txt").write_text("kept")
    assert cli(["reproduce", "mtd-fig3", "--out", out, *FIG3], capsys)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["claims.csv", "mine.txt", "mtd-fig3.csv", "mtd-fig3.json",
                                                      "mtd-fig3.md", "mtd-fig3.png", "report.html", "report.md"]


def test_save_pretrained_replaces_a_model_but_not_a_folder_of_other_files(tmp_path):
    from icmix.models import DisentangledConfig, DisentangledTransformer

    model = DisentangledTransformer(DisentangledConfig(vocab_size=4, max_length=8))
    model.save_pretrained(tmp_path / "m")
    model.save_pretrained(tmp_path / "m")  # an older save is replaced
    (tmp_path / "m" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds other files \\(notes.txt\\)"):
        model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "notes.txt").read_text() == "mine"


def test_files_follow_the_umask(reference, tmp_path, capsys):
    old = os.umask(0o027)
    try:
        code, _ = cli(["reproduce", "mtd-fig3", "--out", tmp_path / "fig", *FIG3], capsys)
        train(tiny(steps=10), tmp_path / "run", progress=False)
    finally:
        os.umask(old)
    assert code == 0
    written = [p for p in [*(tmp_path / "fig").iterdir(), *(tmp_path / "run").rglob("*")]]
    assert len(written) > 10
    for p in written:
        assert (p.stat().st_mode & 0o777) == (0o750 if p.is_dir() else 0o640), p


# --- one writer per --out; Ctrl-C ---------------------------------------------------------------

def hold_lock(directory: Path) -> subprocess.Popen:
    code = ("import sys, time; from icmix.io import exclusive\n"
            f"with exclusive({str(directory)!r}):\n    print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_into_the_same_out_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    holder = hold_lock(out)
    try:
        code, err = cli(["reproduce", "mtd-fig3", "--out", out, *FIG3], capsys)
        assert code == 2 and f"--out {out} is in use by process {holder.pid}" in err
        code, err = cli(["reproduce", "all", "--only", "mtd-construction", "--out", out, "--no-progress"], capsys)
        assert code == 2 and f"process {holder.pid}" in err
        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump(TINY))
        code, err = cli(["sweep", config, "--grid", "seed=0,1", "--out", out, "--no-progress"], capsys)
        assert code == 2 and f"process {holder.pid}" in err
        assert files_under(out) == [LOCK_FILE]
    finally:
        holder.kill()
        holder.wait()
    # The holder died by SIGKILL, its lock file is still there: stale, so taken over.
    assert (out / LOCK_FILE).exists()
    assert cli(["reproduce", "mtd-fig3", "--out", out, *FIG3], capsys)[0] == 0
    assert not (out / LOCK_FILE).exists()  # released on exit


def test_two_trainers_of_one_run_are_refused(tmp_path):
    run = tmp_path / "run"
    train(tiny(steps=10), run, progress=False)
    (run / "model").rename(tmp_path / "model")
    holder = hold_lock(run)
    try:
        with pytest.raises(ValueError, match=f"run directory {run} is in use by process {holder.pid}"):
            train(None, run, resume=True, progress=False)
    finally:
        holder.kill()
        holder.wait()


def test_lock_file_with_garbage_from_a_dead_process_is_taken_over(tmp_path):
    (tmp_path / LOCK_FILE).write_text('{"pid": 999999, "host": "gone"')
    with exclusive(tmp_path) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()


def session_members(sid: int) -> list[int]:
    """Processes of session ``sid`` still alive (zombies excluded)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            alive.append(int(stat.parent.name))
    return alive


def interrupt_when(cmd: list[str], ready, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group, send Ctrl-C (SIGINT to the group) once ``ready()``;
    afterwards no process of its session (its training workers) may be left."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + timeout
    try:
        while not ready():
            assert proc.poll() is None and time.time() < deadline, "the command ended or never got ready"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # a failed test leaves nothing running
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    deadline = time.time() + 10
    while session_members(proc.pid) and time.time() < deadline:
        time.sleep(0.2)
    assert session_members(proc.pid) == [], "worker processes outlived the interrupted command"
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def checkpoints_under(root: Path) -> bool:
    return any(root.glob("runs/*/checkpoints/step_*/checksums.json"))


def test_ctrl_c_during_a_parallel_sweep_then_a_clean_rerun(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**TINY, "steps": 4000, "checkpoint_every": 50, "eval_every": 50}))
    out = tmp_path / "sweep"
    cmd = [*ICMIX, "sweep", str(config), "--grid", "seed=0,1", "--jobs", "2", "--out", str(out), "--no-progress"]
    done = interrupt_when(cmd, lambda: checkpoints_under(out))
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "icmix: interrupted; rerun the same command to resume"
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr
    assert not list(out.glob(LOCK_FILE))
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    for run in out.glob("runs/*"):
        steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert steps == list(range(50, 4001, 50))  # resumed where it stopped: every evaluation once


def test_ctrl_c_during_reproduce_all_prints_one_line(tmp_path):
    out = tmp_path / "report"
    cmd = [*ICMIX, "reproduce", "all", "--preset", "quick", "--only", "mtd-fig7", "--jobs", "2", "--out", str(out)]
    done = interrupt_when(cmd, lambda: checkpoints_under(out))
    assert done.returncode == 130
    lines = [ln for ln in done.stderr.replace("\r", "\n").splitlines() if ln.startswith("icmix")]
    assert lines == ["icmix: interrupted; rerun the same command to resume"]
    assert "Traceback" not in done.stderr
