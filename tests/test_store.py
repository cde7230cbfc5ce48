"""Run ids and the run store: content-derived ids, atomic records, `done` last, nothing half-read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from record_helpers import make_record

from vdd_bench.config import RunConfig
from vdd_bench.errors import VddError
from vdd_bench.store import RunStore, atomic_write_bytes


def config(**changes) -> RunConfig:
    base = dict(
        benchmark="abc123def456",
        benchmark_kind="toy",
        task="colors",
        method="finetune",
        hparams={"lr": 0.1, "epochs": 3},
        backbone={"name": "resnet26", "width": 0.25, "stem_relu": False, "checkpoint": "0f0f0f0f0f0f"},
        resolution=36,
    )
    base.update(changes)
    return RunConfig(**base)


def test_run_id_depends_on_semantics_only() -> None:
    assert config().run_id == config().run_id
    assert config().run_id == config(hparams={"epochs": 3, "lr": 0.1}).run_id  # key order is not semantic
    assert config().run_id != config(seed=1).run_id
    assert config().run_id != config(hparams={"lr": 0.01, "epochs": 3}).run_id
    assert config().run_id.startswith("finetune--colors--")


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden", "x..y"])
def test_names_that_could_escape_the_results_folder_are_refused(name: str) -> None:
    with pytest.raises(VddError, match="invalid task name"):
        config(task=name)


def test_done_marker_is_written_after_the_record(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    cfg = config()
    folder = store.start(cfg)
    assert not store.is_done(cfg.run_id)
    assert list(store.done_records()) == []  # started, not done: invisible to the leaderboard
    store.finish(make_record(cfg, {"test_acc": 50.0}))
    assert store.is_done(cfg.run_id)
    record = store.record(cfg.run_id)
    assert record.metrics == {"test_acc": 50.0}
    assert record.config == cfg
    assert json.loads((folder / "record.json").read_text())["config"] == json.loads(json.dumps(cfg.to_dict()))
    assert (folder / "done").stat().st_mtime_ns >= (folder / "record.json").stat().st_mtime_ns
    assert [r.run_id for r in store.done_records()] == [cfg.run_id]


def test_a_folder_with_another_config_under_the_same_id_is_refused(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    cfg = config()
    folder = store.start(cfg)
    (folder / "config.json").write_text(json.dumps({**cfg.to_dict(), "seed": 7}))
    with pytest.raises(VddError, match="another config"):
        store.start(cfg)


def test_atomic_write_leaves_the_old_file_when_interrupted(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "record.json"
    atomic_write_bytes(target, b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]  # no temp file left behind


def test_a_record_reads_back_as_it_was_written_and_keeps_the_file_format(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    cfg = config()
    store.start(cfg)
    written = make_record(cfg, {"test_acc": 50.0}, history=[{"epoch": 1}], timing={"train_s": 1.0})
    store.finish(written)
    assert store.record(cfg.run_id) == written
    on_disk = json.loads((store.run_dir(cfg.run_id) / "record.json").read_text())
    assert (
        on_disk["format"] == "vdd-record/1"
        and on_disk["task"] == "colors"
        and on_disk["method"] == "finetune"
    )
    assert "continual" not in on_disk and "task_bytes" not in on_disk["accounting"]  # None fields left out


def test_a_record_missing_a_field_is_refused_naming_its_file(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    cfg = config()
    store.start(cfg)
    store.finish(make_record(cfg, {"test_acc": 50.0}))
    path = store.run_dir(cfg.run_id) / "record.json"
    data = json.loads(path.read_text())
    del data["accounting"]["macs"]  # a hand edit
    path.write_text(json.dumps(data))
    with pytest.raises(VddError) as caught:
        store.record(cfg.run_id)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and "macs" in message
