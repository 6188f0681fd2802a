"""Untrusted inputs: what a user loads from disk (a colleague's run, checkpoint or zoo) cannot
run code or pass as verified, icmix deletes nothing of the user's, and a command that is
refused leaves its folder as it was.

One test per probe of issue 30 (each failed on 226dff0):

1. a crafted ``trainer.pt`` (its unpickling runs code; checksums recomputed) on resume;
2. a zoo run with zeroed weights, its SHA-256 (and digest) updated: ``zoo verify``, ``place``;
3. provenance fields no hash covered (``cpu``, ``git_commit``, ``figures``) edited;
4. an ``--out`` folder holding the user's own ``*.tmp-*`` files;
5. ``--set device=cuda`` on a machine without CUDA;
6. ``--set batch_size=100000000``;
7. ``--set tracking=wandb`` with no W&B API key;
8. ``icmix estimate ... | head -1``.

Plus the trainer-state codec (no pickle) against a round trip of every type a trainer state
holds, and a scan of src/ and tests/ for the ways pickle gets in.
"""

import hashlib
import importlib.util
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from icmix import zoo
from icmix.cli import main
from icmix.experiments.common import run_name
from icmix.train import TrainConfig, train
from icmix.train.checkpoint import CheckpointWarning

ROOT = Path(__file__).resolve().parents[1]
ICMIX = [sys.executable, "-m", "icmix"]
TINY = {
    "task": {"kind": "mtd", "vocab_size": 4, "order": 2, "seed": 3, "length": 8},
    "model": {"kind": "disentangled", "n_layers": 2, "n_heads": 1},
    "optim": {"lr": 0.01, "schedule": "cosine", "warmup_steps": 3},
    "steps": 40, "batch_size": 16, "eval_every": 5, "eval_size": 32, "checkpoint_every": 10, "seed": 7,
    "keep_checkpoints": 3, "device": "cpu",
}
FIG3 = ["--set", "lengths=(8,16)", "--set", "n_sequences=20", "--set", "n_tune=10", "--set", "gibbs_samples=20",
        "--set", "gibbs_burn_in=5", "--set", "em_max_iter=50", "--set", "seeds=(0,)", "--no-progress"]


def tiny() -> TrainConfig:
    return TrainConfig.from_dict(json.loads(json.dumps(TINY)))


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def tiny_config_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished tiny run (checkpoints at steps 20, 30, 40)."""
    return train(tiny(), tmp_path_factory.mktemp("finished") / "run", progress=False)


# --- 1. a crafted trainer state ---------------------------------------------------------------

class _Payload:
    """Unpickling this runs code: it writes the file ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('the checkpoint ran code')",)


def craft_trainer(checkpoint: Path, marker: Path) -> None:
    """Replace a checkpoint's trainer state by a ``trainer.pt`` whose unpickling runs code (as
    an attacker would: the right step, the checksums recomputed so the files look intact)."""
    step = int(checkpoint.name.split("_")[1])
    for name in ("trainer.pt", "trainer.safetensors", "trainer.json"):
        (checkpoint / name).unlink(missing_ok=True)
    torch.save({"step": step, "optimiser": _Payload(marker)}, checkpoint / "trainer.pt")
    sums = {f.name: {"sha256": hashlib.sha256(f.read_bytes()).hexdigest(), "bytes": f.stat().st_size}
            for f in sorted(checkpoint.iterdir()) if f.name != "checksums.json"}
    (checkpoint / "checksums.json").write_text(json.dumps(sums))


def test_a_crafted_trainer_state_runs_nothing_on_a_finished_run(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    marker = tmp_path / "pwned"
    craft_trainer(run / "checkpoints" / "step_0000040", marker)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0  # finished: nothing to do
    assert not marker.exists()
    assert "skipping damaged checkpoint" in capsys.readouterr().err


def test_a_crafted_trainer_state_runs_nothing_and_is_skipped_as_damaged(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    shutil.rmtree(run / "model")  # unfinished: killed after its last checkpoint
    marker = tmp_path / "pwned"
    craft_trainer(run / "checkpoints" / "step_0000040", marker)
    with pytest.warns(CheckpointWarning, match="skipping damaged checkpoint .*step_0000040.*trainer.pt"):
        train(None, run, resume=True, progress=False)
    assert not marker.exists()
    assert (run / "checkpoints" / "damaged_step_0000040").is_dir()  # set aside, kept for inspection
    # resumed from step 30, it ends where the uninterrupted run ended
    assert (run / "model" / "model.safetensors").read_bytes() == (finished / "model" / "model.safetensors").read_bytes()
    assert (run / "metrics.jsonl").read_bytes() == (finished / "metrics.jsonl").read_bytes()


@pytest.mark.parametrize("damage", ["only the step", "moments of another shape", "a parameter the model lacks",
                                    "nested too deeply"])
def test_a_well_formed_trainer_state_of_another_shape_is_damage(finished, tmp_path, damage):
    """Valid JSON and safetensors, checksums recomputed, but not this run's trainer state:
    skipped as damaged before anything is loaded (no traceback from deep inside the optimiser)."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    shutil.rmtree(run / "model")
    ckpt = run / "checkpoints" / "step_0000040"
    state = json.loads((ckpt / "trainer.json").read_text())
    if damage == "only the step":
        (ckpt / "trainer.json").write_text(json.dumps({"step": 40}))
        (ckpt / "trainer.safetensors").write_bytes(save_file_bytes({}))
    elif damage == "nested too deeply":
        (ckpt / "trainer.json").write_text("[" * 100000 + "]" * 100000)
    else:
        tensors = load_file(ckpt / "trainer.safetensors")
        items = state["optimiser"]["state"]["__items__"]
        if damage == "moments of another shape":
            key = items[0][1]["exp_avg"]["__tensor__"]
            tensors[key] = torch.zeros(3, 3, 3)
        else:
            items[0][0] = 999
        (ckpt / "trainer.json").write_text(json.dumps(state))
        (ckpt / "trainer.safetensors").write_bytes(save_file_bytes(tensors))
    sums = {f.name: {"sha256": hashlib.sha256(f.read_bytes()).hexdigest(), "bytes": f.stat().st_size}
            for f in sorted(ckpt.iterdir()) if f.name != "checksums.json"}
    (ckpt / "checksums.json").write_text(json.dumps(sums))
    with pytest.warns(CheckpointWarning, match="skipping damaged checkpoint .*step_0000040"):
        train(None, run, resume=True, progress=False)
    assert (run / "model" / "model.safetensors").read_bytes() == (finished / "model" / "model.safetensors").read_bytes()


def save_file_bytes(tensors: dict) -> bytes:
    from safetensors.torch import save

    return save(tensors)


def test_an_older_checkpoint_of_plain_tensors_still_loads(finished, tmp_path):
    """A ``trainer.pt`` of an older icmix (tensors and plain containers) is read, with
    ``weights_only=True``, into the same state the new files hold."""
    from icmix.train.checkpoint import decode_trainer, read_checkpoint

    ckpt = tmp_path / "step_0000040"
    shutil.copytree(finished / "checkpoints" / "step_0000040", ckpt)
    state = decode_trainer((ckpt / "trainer.safetensors").read_bytes(), (ckpt / "trainer.json").read_bytes())
    (ckpt / "trainer.safetensors").unlink()
    (ckpt / "trainer.json").unlink()
    torch.save(state, ckpt / "trainer.pt")
    sums = {f.name: {"sha256": hashlib.sha256(f.read_bytes()).hexdigest(), "bytes": f.stat().st_size}
            for f in sorted(ckpt.iterdir()) if f.name != "checksums.json"}
    (ckpt / "checksums.json").write_text(json.dumps(sums))
    with torch.device("meta"):
        from icmix.train.loop import build_model

        shapes = build_model(tiny())
    loaded = read_checkpoint(ckpt, shapes).trainer
    assert loaded["step"] == 40 and torch.equal(loaded["data_rng"], state["data_rng"])
    assert loaded["optimiser"]["param_groups"] == state["optimiser"]["param_groups"]


def test_the_trainer_codec_keeps_every_type():
    from icmix.train.checkpoint import decode_trainer, encode_trainer

    state = {"step": 7, "loss_sum": 0.1 + 0.2, "nan": float("inf"), "none": None, "flag": True,
             "betas": (0.9, 0.999), "optimiser": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3)},
                                                             1: {"exp_avg": torch.zeros(4, dtype=torch.float64)}},
                                                   "param_groups": [{"params": [0, 1], "lr": 1e-3, "betas": (0.9, 0.99)}]},
             "rng": torch.get_rng_state(), "__tensor__": "a key that looks like a marker", "ranks": [1.5, 2.5]}
    back = decode_trainer(*encode_trainer(state))
    assert list(back["optimiser"]["state"]) == [0, 1] and back["betas"] == (0.9, 0.999)  # int keys, tuples
    assert back["loss_sum"] == 0.1 + 0.2 and back["nan"] == float("inf") and back["__tensor__"] == state["__tensor__"]
    assert torch.equal(back["rng"], state["rng"]) and back["rng"].dtype == torch.uint8
    assert back["optimiser"]["state"][0]["step"].shape == () and back["optimiser"]["state"][1]["exp_avg"].dtype == torch.float64
    with pytest.raises(TypeError, match="not object"):
        encode_trainer({"x": object()})
    tensors, text = encode_trainer(state)
    with pytest.raises(ValueError, match="names a tensor 't99'"):
        decode_trainer(tensors, text.replace(b'"t0"', b'"t99"'))
    with pytest.raises(ValueError, match="cannot be read"):
        decode_trainer(pickle.dumps(_Payload(Path("/nonexistent"))), text)
    with pytest.raises(ValueError, match="not JSON"):
        decode_trainer(tensors, b"\x80\x04K\x01.")  # a pickle where JSON belongs


def test_nothing_in_src_or_tests_unpickles():
    """No call that unpickles or runs what a file says: ``torch.load`` only with
    ``weights_only=True``, ``np.load`` only with ``allow_pickle=False``, no ``pickle``/
    ``yaml`` loaders that build objects."""
    import re

    rules = [(r"torch\.load\((?!.*weights_only=True)", "torch.load without weights_only=True"),
             (r"np\.load\((?!.*allow_pickle=False)", "np.load without allow_pickle=False"),
             (r"\b(c?pickle|dill|cloudpickle|marshal|shelve)\.loads?\(|read_pickle\(", "an unpickler"),
             (r"yaml\.(unsafe_)?load\(|yaml\.full_load|Loader=yaml\.(Unsafe|Full)?Loader", "a YAML loader that builds objects")]
    found = [f"{p.relative_to(ROOT)}: {what}" for d in ("src", "tests") for p in (ROOT / d).rglob("*.py")
             if p.name != "test_untrusted.py" for pattern, what in rules if re.search(pattern, p.read_text())]
    assert found == []


# --- 2. zeroed weights, hashes forged ----------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    base = tmp_path_factory.mktemp("zoo")
    tc = tiny()
    name = run_name(tc)
    zoo.train_entry(name, tc, ["tiny-fig"], base / "work", base / "root" / "cpu" / name, threads=1, command="pytest")
    return base / "root", name, tc


def forge(entry, **fields) -> None:
    """Rewrite an entry's provenance as a careful attacker would: every SHA-256 and the digest
    made to match the files and fields as they now are."""
    prov = json.loads((entry.path / zoo.PROVENANCE).read_text())
    prov.update(fields)
    prov["sha256"] = {rel: zoo.sha256(entry.path / rel) for rel in zoo.FILES}
    prov["digest"] = zoo.digest(prov)  # (ignored by 226dff0, which had no digest)
    (entry.path / zoo.PROVENANCE).write_text(json.dumps(prov, indent=2))


def zeroed_copy(root: Path, name: str, tmp_path: Path):
    """A copy of the zoo under ``tmp_path`` whose entry ``name`` has all its weights zeroed
    (its provenance not yet updated): ``(root of the copy, the entry)``."""
    shutil.copytree(root, tmp_path / "root")
    entry = zoo.lookup(name, tmp_path / "root")
    weights = entry.path / "model" / "model.safetensors"
    save_file({k: torch.zeros_like(v) for k, v in load_file(weights).items()}, weights)
    return tmp_path / "root", entry


def test_zeroed_weights_with_forged_hashes_fail_verify_at_once_and_are_not_placed(tiny_zoo, tmp_path, capsys):
    root, name, tc = tiny_zoo
    root, entry = zeroed_copy(root, name, tmp_path)
    forge(entry, cpu="Another CPU")  # trained elsewhere, as every shipped run is for most users
    assert zoo.lookup(name, root).problems() == []  # sound on paper ...
    start = time.time()
    code = main(["zoo", "verify", name, "--root", str(root), "--no-progress", "--work", str(tmp_path / "work")])
    out = capsys.readouterr().out
    assert code == 1 and time.time() - start < 60
    assert "FAIL at the evaluation check, not retrained" in out and "eval_kl recorded" in out  # both numbers
    assert not (tmp_path / "work").exists()
    record = zoo.verify(name, tmp_path / "work", root, progress=False)
    assert record["status"] == "fail" and record["step"] == "evaluation" and record["retrain_seconds"] == 0.0
    recorded, measured = record["evaluation"]["recorded"]["eval_kl"], record["evaluation"]["measured"]["eval_kl"]
    assert measured > 2 * recorded  # zero weights predict uniformly: far worse than the trained model
    # ... and reproduce does not place it
    warned = []
    placed, stale = zoo.place([(tc, tmp_path / "out" / "runs" / name)], root, warn=warned.append)
    assert placed == [] and "do not give its recorded final metrics" in stale[tmp_path / "out" / "runs" / name]
    assert warned and not (tmp_path / "out" / "runs" / name).exists()
    assert "stale: its weights do not give" in zoo.table(root).status.iloc[0]  # zoo list too


def test_a_record_without_its_metrics_cannot_vouch_for_its_weights(tiny_zoo, tmp_path):
    """Zeroed weights whose metrics row was stripped of the metrics (hashes forged, digest
    removed): nothing recorded to compare with is a failed check, not a passed one."""
    root, name, tc = tiny_zoo
    root, entry = zeroed_copy(root, name, tmp_path)
    rows = [json.loads(line) for line in (entry.path / "metrics.jsonl").read_text().splitlines()]
    rows[-1] = {"step": rows[-1]["step"]}
    (entry.path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prov = json.loads((entry.path / zoo.PROVENANCE).read_text())
    prov["sha256"] = {rel: zoo.sha256(entry.path / rel) for rel in zoo.FILES}
    prov.pop("digest", None)
    (entry.path / zoo.PROVENANCE).write_text(json.dumps(prov))
    check = zoo.check_evaluation(zoo.lookup(name, root))
    assert not check["ok"] and "eval_kl not recorded" in check["reason"]
    placed, stale = zoo.place([(tc, tmp_path / "out" / "runs" / name)], root)
    assert placed == [] and "not recorded" in stale[tmp_path / "out" / "runs" / name]


# --- 3. provenance fields no hash covered --------------------------------------------------------

@pytest.mark.parametrize("field,value", [("cpu", "Another CPU"), ("git_commit", "0" * 40), ("figures", ["mtd-fig3"])])
def test_an_edited_provenance_field_makes_an_entry_stale(tiny_zoo, tmp_path, field, value, capsys):
    root, name, _ = tiny_zoo
    shutil.copytree(root, tmp_path / "root")
    root = tmp_path / "root"
    path = root / "cpu" / name / zoo.PROVENANCE
    prov = json.loads(path.read_text())
    prov[field] = value
    path.write_text(json.dumps(prov, indent=2))
    assert zoo.lookup(name, root).problems() == ["provenance.json was edited: its fields no longer match its digest"]
    assert main(["zoo", "list", "--root", str(root)]) == 0
    assert "stale: provenance.json was edited" in capsys.readouterr().out


@pytest.mark.parametrize("field,value", [("cpu", "Another CPU"), ("git_commit", "0" * 40), ("figures", ["mtd-fig3"])])
def test_the_shipped_zoo_catches_an_edit_by_its_manifest(tmp_path, monkeypatch, field, value):
    """An entry of the package's own zoo edited in place, digest forged too: the manifest in
    the package's code still knows the provenance it shipped."""
    shipped = next(iter(zoo.entries(zoo.ZOO_ROOT).values()))
    copy = tmp_path / "zoo"
    shutil.copytree(shipped.path, copy / shipped.preset / shipped.name)
    monkeypatch.setattr(zoo, "ZOO_ROOT", copy.resolve())  # the copy is the package's zoo now
    entry = zoo.lookup(shipped.name, copy)
    assert entry.problems() == []
    forge(entry, **{field: value})
    entry = zoo.lookup(shipped.name, copy)
    assert entry.problems() == ["provenance.json is not the one the package's zoo manifest records (edited after shipping)"]
    assert not entry.listed()


def test_an_unlisted_zoo_is_used_and_labelled(tiny_zoo, tmp_path):
    """A zoo of one's own (ICMIX_ZOO): sound entries are used after the evaluation check, and
    labelled as not in the package's manifest."""
    root, name, tc = tiny_zoo
    entry = zoo.lookup(name, root)
    assert not entry.listed() and entry.problems(evaluate=True) == []
    assert zoo.table(root).status.iloc[0] == "ok, unlisted"
    run = tmp_path / "out" / "runs" / name
    assert zoo.place([(tc, run)], root) == ([run], {})
    assert zoo.source(run) == "zoo" and zoo.unlisted(run)


# --- 4. nothing of the user's is deleted --------------------------------------------------------

def test_the_users_files_in_out_are_never_deleted(tmp_path, capsys):
    out = tmp_path / "out"
    mine = [".cache.tmp-dir/notes.txt", ".draft.0123456789ab.tmp.csv", ".icmix-stage-mine/a.txt", ".tmp_step_0000050/x",
            ".model.extended/y", ".icmix-tmp-notes.txt", ".icmix-tmp-12-notes.txt"]
    for rel in mine:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text("mine")
    assert main(["reproduce", "mtd-fig3", "--out", str(out), *FIG3]) == 0
    for rel in mine:
        assert (out / rel).read_text() == "mine", rel
    # The same for a run directory
    run = tmp_path / "run"
    (run / ".cache.tmp-dir").mkdir(parents=True)
    (run / ".cache.tmp-dir" / "notes.txt").write_text("mine")
    assert main(["train", str(tiny_config_file(tmp_path)), "--out", str(run), "--no-progress"]) == 0
    assert (run / ".cache.tmp-dir" / "notes.txt").read_text() == "mine"


# --- 5-7. refused before anything is written ------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_that_is_not_there_is_refused_before_anything_is_written(tmp_path, capsys):
    config, run = tiny_config_file(tmp_path), tmp_path / "run"
    for _ in range(2):  # and the same command again gives the same answer
        assert main(["train", str(config), "--set", "device=cuda", "--out", str(run), "--no-progress"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
        assert not run.exists()


def test_a_batch_that_cannot_fit_is_refused_with_its_estimate(tmp_path, capsys):
    config, run = tiny_config_file(tmp_path), tmp_path / "run"
    run.mkdir()  # an existing folder is left as it was
    code = main(["train", str(config), "--set", "batch_size=100000000", "--out", str(run), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "batch_size 100,000,000" in err and "activations per sequence" in err and "would need" in err
    assert files_under(run) == []


def test_activation_bytes_grow_with_length_and_batch():
    """The per-sequence activation estimate is what autograd keeps for a sequence: positive,
    and doubling the length at least doubles it (attention grows with its square)."""
    from icmix.train.loop import activation_bytes

    short = activation_bytes(tiny())
    longer = activation_bytes(TrainConfig.from_dict({**TINY, "task": {**TINY["task"], "length": 16}}))
    assert 0 < short and longer >= 2 * short


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None,
                    reason="needs wandb")
def test_wandb_without_an_api_key_is_refused_before_anything_is_written(tmp_path):
    config, run = tiny_config_file(tmp_path), tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path / "home"), WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"), NETRC=str(tmp_path / "netrc"))
    done = subprocess.run([*ICMIX, "train", str(config), "--set", "tracking=wandb", "--out", str(run), "--no-progress"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "icmix: error: tracking wandb: W&B has no API key here" in done.stderr and "WANDB_MODE=offline" in done.stderr
    assert "Traceback" not in done.stderr and not run.exists()


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason="needs wandb")
@pytest.mark.parametrize("setting", ["WANDB_MODE=offline", "WANDB_MODE=disabled", "wandb offline", "WANDB_API_KEY"])
def test_wandb_setups_that_can_log_are_accepted(tmp_path, setting):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(HOME=str(tmp_path / "home"), WANDB_CONFIG_DIR=str(tmp_path / "wandb-config"), NETRC=str(tmp_path / "netrc"))
    if setting.startswith("WANDB_MODE="):
        env["WANDB_MODE"] = setting.split("=")[1]
    elif setting == "WANDB_API_KEY":
        env["WANDB_API_KEY"] = "a" * 40
    else:  # `wandb offline`: the mode kept in W&B's settings file of the working directory
        subprocess.run([str(Path(sys.executable).parent / "wandb"), "offline"], env=env, cwd=tmp_path, check=True,
                       capture_output=True, timeout=120)
    check = "from icmix.train.tracking import require; print(require(('wandb',)))"
    done = subprocess.run([sys.executable, "-c", check], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "('wandb',)" in done.stdout, done.stderr


# --- 8. a reader that goes away ------------------------------------------------------------------

def test_a_broken_pipe_ends_quietly(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "pi.npy", rng.dirichlet(np.ones(4), size=4))
    np.save(tmp_path / "tokens.npy", rng.integers(0, 4, size=(5000, 20)))
    proc = subprocess.Popen([*ICMIX, "estimate", str(tmp_path / "tokens.npy"), "--transition", str(tmp_path / "pi.npy"),
                             "--order", "2", "--estimator", "md"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()  # `| head -1`
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141 and b"estimator" in first  # (the output is larger than a pipe's buffer)
    assert "error" not in err and "Traceback" not in err and "Exception ignored" not in err


# --- also found: a saved model folder from a stranger ---------------------------------------------

def _saved_model(tmp_path: Path) -> Path:
    from icmix.models import DisentangledConfig, DisentangledTransformer

    return DisentangledTransformer(DisentangledConfig(vocab_size=4, max_length=8)).save_pretrained(tmp_path / "model")


def test_a_saved_models_dtype_is_not_looked_up_by_name(tmp_path):
    """``config.json``'s dtype named any attribute of ``torch`` (``load``, ``save``, ...)."""
    from icmix.models import DisentangledTransformer

    path = _saved_model(tmp_path)
    meta = json.loads((path / "config.json").read_text())
    meta["dtype"] = "load"
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="dtype 'load' is not one of"):
        DisentangledTransformer.from_pretrained(path)


def test_a_saved_model_too_large_for_memory_is_refused_before_it_is_built(tmp_path):
    from icmix.models import DisentangledTransformer

    path = _saved_model(tmp_path)
    meta = json.loads((path / "config.json").read_text())
    meta["config"]["vocab_size"] = 10**6  # its embedding and readout: terabytes
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="would need .* of memory"):
        DisentangledTransformer.from_pretrained(path)


def test_a_zoo_entry_of_links_is_stale(tiny_zoo, tmp_path):
    """A link in an entry would copy whatever it points at (a file of the user's) into OUT."""
    root, name, tc = tiny_zoo
    shutil.copytree(root, tmp_path / "root")
    entry = zoo.lookup(name, tmp_path / "root")
    secret = tmp_path / "secret.txt"
    secret.write_text("a file of the user's")
    (entry.path / "metrics.jsonl").unlink()
    (entry.path / "metrics.jsonl").symlink_to(secret)
    forge(entry)
    assert zoo.lookup(name, tmp_path / "root").problems() == ["metrics.jsonl is a link, not a file"]
    placed, stale = zoo.place([(tc, tmp_path / "out" / "runs" / name)], tmp_path / "root")
    assert placed == [] and not (tmp_path / "out" / "runs" / name).exists()


# --- also found: a report built from files ----------------------------------------------------------

def test_a_report_shows_text_from_files_and_reads_nothing_outside_its_folder(tmp_path):
    """A stale zoo entry's reason (text from the entry) and an edited ``manifest.json`` (an
    output outside the folder) end up in report.html: the text is escaped, the file not read."""
    from icmix.report import _sound_entries, write_report

    out = tmp_path / "out"
    out.mkdir()
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"a file of the user's")
    manifest = {"preset": "quick", "figures": {"my-fig": {"status": "ok", "outputs": {"png": str(secret),
                                                                                       "csv": "../secret.png"}}},
                "zoo": {"stale": {"some-run": "unknown task kind '<img src=x onerror=alert(1)>'"}}}
    assert _sound_entries(manifest["figures"], out) == {}  # not reused
    (out / "zoo-verify").mkdir()
    (out / "zoo-verify" / "r.json").write_text(json.dumps({"run": "r", "status": "fail", "step": "integrity", "integrity": ["x"],
                                                           "reason": "<script>alert(1)</script>"}))
    page = write_report(out, manifest, {}).read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    import base64

    assert base64.b64encode(secret.read_bytes()).decode() not in page and "../secret.png" not in page


def test_a_broken_pipe_of_our_own_is_an_error(monkeypatch, capsys):
    """Only a reader of our output that has gone ends quietly: a pipe of icmix's own (to a
    worker, to a tracker's service) that breaks is an error like any other."""
    import icmix.cli as cli

    def broken(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "_estimate", broken)
    assert cli.main(["estimate", "x.npy", "--transition", "p.npy", "--order", "2"]) == 2
    assert "icmix: error: Broken pipe" in capsys.readouterr().err


def test_a_failed_jobs_error_is_read_from_its_stderr():
    """The launcher reports a failed job from its stderr (text), not by unpickling its result."""
    from icmix.train.launch import _last_error

    stderr = "Traceback (most recent call last):\n  File \"x\", line 1\nValueError: batch_size 3 must be divisible\nsrun: error: task 0\n"
    assert _last_error(stderr) == "ValueError: batch_size 3 must be divisible"
    assert _last_error("killed by the OOM killer\n") == "killed by the OOM killer" and _last_error("") is None
