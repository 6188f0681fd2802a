"""Trackers (``TrainConfig.tracking``): a W&B offline run read back record by record and compared
with the run's own files; tracking changes no number and no run name."""

from __future__ import annotations

import dataclasses
import json
import shutil
import struct
import sys
from pathlib import Path

import pytest
import yaml

from icmix.cli import main
from icmix.experiments.common import run_name
from icmix.train import TrainConfig, train
from icmix.train.loop import history
from icmix.train.tracking import wandb_id

CONFIG = Path(__file__).parents[1] / "configs" / "mtd_disentangled.yaml"
TINY = ["steps=60", "eval_every=20", "checkpoint_every=20", "task.length=8"]


def wandb_records(path: Path) -> list:
    """The records of a W&B ``.wandb`` file (a LevelDB-style log: a 7-byte header ``:W&B`` +
    magic + version, then 32 KiB blocks of chunks ``crc32 (4) | length (2) | type (1) | data``,
    type 1 a whole record, 2-4 its first, middle and last parts), parsed with W&B's protobuf."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    block, pos, parts, records = 32768, 7, [], []
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # the zero padding at a block's end
            pos += left
            continue
        parts.append(data[pos + 7:pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(parts))
            records.append(record)
            parts = []
    return records


def offline_run(run: Path):
    """``(run record, [history rows])`` of the one offline W&B run under ``run/wandb``."""
    (log,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_records(log)
    (meta,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    rows = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]
    return meta, rows


@pytest.fixture
def offline(monkeypatch, tmp_path):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)


def test_wandb_offline_run_equals_the_runs_own_files(tmp_path, offline):
    run = tmp_path / "tracked"
    args = ["train", str(CONFIG), "--out", str(run), "--no-progress"] + [a for s in TINY for a in ("--set", s)]
    assert main(args + ["--set", "tracking=wandb"]) == 0
    meta, rows = offline_run(run)
    assert meta.display_name == run.name and meta.run_id == wandb_id(run) and meta.project == "icmix"
    config = {item.key: json.loads(item.value_json) for item in meta.config.update if item.key != "_wandb"}
    assert config == yaml.safe_load((run / "config.yaml").read_text())
    assert config["tracking"] == ["wandb"]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 3
    logged = [{"step": r.pop("_step"), **{k: v for k, v in r.items() if not k.startswith("_")}} for r in rows]
    assert logged == metrics  # every key of every eval row, to the last bit
    # Tracking changes no number and not the run's name.
    plain = tmp_path / "plain"
    assert main(["train", str(CONFIG), "--out", str(plain), "--no-progress"] + [a for s in TINY for a in ("--set", s)]) == 0
    assert (plain / "metrics.jsonl").read_text() == (run / "metrics.jsonl").read_text()
    assert (plain / "model" / "model.safetensors").read_bytes() == (run / "model" / "model.safetensors").read_bytes()
    tracked, untracked = (TrainConfig.from_yaml(p / "config.yaml") for p in (run, plain))
    assert run_name(tracked) == run_name(untracked)


def test_an_interrupted_run_resumed_with_wandb_logs_the_rest_and_ends_identical(tmp_path, offline):
    cfg = TrainConfig.from_yaml(CONFIG, TINY)
    plain = train(cfg, tmp_path / "plain", progress=False)
    run = train(cfg, tmp_path / "run", progress=False)
    # killed after step 60 was logged but before its checkpoint: the newest checkpoint is step 40
    shutil.rmtree(run / "model")
    shutil.rmtree(run / "checkpoints" / "step_0000060")
    tracked = dataclasses.replace(cfg, tracking=("wandb",))
    assert train(tracked, run, resume=True, progress=False) == run  # tracking is no change of the run
    assert (run / "model" / "model.safetensors").read_bytes() == (plain / "model" / "model.safetensors").read_bytes()
    assert (run / "metrics.jsonl").read_text() == (plain / "metrics.jsonl").read_text()
    _, rows = offline_run(run)
    assert [r["_step"] for r in rows] == [60]  # the rows trained after the resume
    assert any(e["field"] == "tracking" and e["to"] == ["wandb"] for e in history(run))
    # Its W&B id is kept in the run; a new run elsewhere draws another.
    assert (run / "wandb-id").read_text().strip() == wandb_id(run) != wandb_id(plain)


def test_wandb_group_and_resume_without_tracking(tmp_path, offline, monkeypatch):
    cfg = dataclasses.replace(TrainConfig.from_yaml(CONFIG, TINY), tracking=("wandb",))
    run = train(cfg, tmp_path / "run", progress=False, group="mtd-fig4")
    meta, _ = offline_run(run)
    assert meta.run_group == "mtd-fig4"
    # The finished run is the same run without trackers: resuming it with them dropped is no config change.
    model = (run / "model" / "model.safetensors").stat().st_mtime_ns
    assert train(dataclasses.replace(cfg, tracking=()), run, resume=True, progress=False) == run
    assert (run / "model" / "model.safetensors").stat().st_mtime_ns == model
    monkeypatch.setenv("WANDB_RUN_GROUP", "my-sweep")  # the environment overrides the group
    second = train(cfg, tmp_path / "second", progress=False, group="mtd-fig4")
    assert offline_run(second)[0].run_group == "my-sweep"


def test_tracking_is_not_part_of_the_name_or_the_saved_config():
    cfg = TrainConfig.from_yaml(CONFIG, TINY)
    assert "tracking" not in cfg.to_yaml()  # configs written before tracking existed read the same
    for tracking in (("wandb",), ("tensorboard", "wandb")):
        assert run_name(dataclasses.replace(cfg, tracking=tracking)) == run_name(cfg)
    # The older `tensorboard: true` stays part of the name, so runs named with it keep their names.
    assert run_name(dataclasses.replace(cfg, tensorboard=True)) != run_name(cfg)
    assert TrainConfig.from_yaml(CONFIG, TINY + ["tracking=tensorboard,wandb"]).tracking == ("tensorboard", "wandb")


@pytest.mark.parametrize("value, message", [("foo", "tracking must list trackers among ('tensorboard', 'wandb'), got ['foo']"),
                                            ("wandb,wandb", "tracking names a tracker twice")])
def test_bad_tracking_is_refused(tmp_path, capsys, value, message):
    out = tmp_path / "run"
    assert main(["train", str(CONFIG), "--out", str(out), "--set", f"tracking={value}"]) == 2
    assert message in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("command", [["reproduce", "mtd-fig3", "--tracking", "wandb"],
                                     ["train", str(CONFIG), "--set", "tracking=wandb"]])
def test_tracking_without_wandb_says_how_to_install_it(tmp_path, monkeypatch, capsys, command):
    monkeypatch.setitem(sys.modules, "wandb", None)
    out = tmp_path / "out"
    assert main(command + ["--out", str(out)]) == 2
    assert "tracking wandb needs the wandb package (pip install 'icmix[wandb]')" in capsys.readouterr().err
    assert not out.exists()  # nothing half-written
