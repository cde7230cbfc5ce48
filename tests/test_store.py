"""Run ids and the run store: content-derived ids, atomic records, `done` last, nothing half-read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
    store.finish(cfg, {"metrics": {"test_acc": 50.0}})
    assert store.is_done(cfg.run_id)
    record = store.record(cfg.run_id)
    assert record["metrics"] == {"test_acc": 50.0}
    assert record["config"] == json.loads(json.dumps(cfg.to_dict()))
    assert (folder / "done").stat().st_mtime_ns >= (folder / "record.json").stat().st_mtime_ns
    assert [r["run_id"] for r in store.done_records()] == [cfg.run_id]


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
