"""Training curves: metrics.csv, TensorBoard events with the hparams, W&B offline, `vdd plot --curves`."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from vdd_bench.cli import main
from vdd_bench.config import RunSettings
from vdd_bench.curves import COLUMNS, read_curves
from vdd_bench.errors import VddError
from vdd_bench.runner import execute, plan_run
from vdd_bench.store import RunStore

SMALL = {"epochs": 3, "batch_size": 32}


def _run(toy_root: Path, toy_backbone: Path, results: Path, method: str = "feature"):
    request = plan_run(RunSettings(toy_root, backbone_checkpoint=toy_backbone), "colors", method, SMALL)
    record = execute(request, results, progress=False)
    return record, RunStore(results).run_dir(record.run_id)


def test_a_run_writes_its_curves_and_tensorboard_events_with_its_hparams(
    toy_root: Path, toy_backbone: Path, tmp_path: Path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    record, folder = _run(toy_root, toy_backbone, tmp_path)
    header = (folder / "metrics.csv").read_text().splitlines()[0]
    assert header == ",".join(COLUMNS)
    rows = read_curves(folder)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and {r["phase"] for r in rows} == {"train"}
    assert [r["lr"] for r in rows] == [h["lr"] for h in record.history]
    assert [r["train_loss"] for r in rows] == [h["loss"] for h in record.history]
    assert all(0 <= r["train_acc"] <= 100 and r["images_per_s"] > 0 for r in rows)
    assert [r["val_acc"] for r in rows] == [None, None, record.accuracy("val")]

    events = EventAccumulator(str(folder / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/train_loss")] == [1, 2, 3]
    assert [e.value for e in events.Scalars("train/train_acc")] == pytest.approx(
        [r["train_acc"] for r in rows]
    )
    assert events.Scalars("val/val_acc")[0].value == pytest.approx(record.accuracy("val"))
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")


def test_a_method_with_several_outputs_per_step_has_no_training_accuracy(
    toy_root: Path, toy_backbone: Path, tmp_path: Path
) -> None:
    """NetTailor's student returns more than class scores: its accuracy column stays empty, never a wrong
    number."""
    _, folder = _run(toy_root, toy_backbone, tmp_path, "nettailor_student")
    rows = read_curves(folder)
    assert rows and all(r["train_acc"] is None for r in rows) and all(r["train_loss"] for r in rows)


def test_wandb_logs_the_run_offline_when_asked(
    toy_root: Path, toy_backbone: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VDD_WANDB", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    _, folder = _run(toy_root, toy_backbone, tmp_path)
    [offline] = list((folder / "wandb").glob("offline-run-*"))
    assert any(offline.glob("*.wandb")) or any((offline / "files").iterdir())
    monkeypatch.setenv("VDD_WANDB", "yes")
    with pytest.raises(VddError, match="VDD_WANDB='yes': use offline or online"):
        _run(toy_root, toy_backbone, tmp_path / "other")


def test_vdd_plot_curves_draws_the_training_curves(
    toy_root: Path, toy_backbone: Path, tmp_path: Path
) -> None:
    _run(toy_root, toy_backbone, tmp_path / "results")
    args = ["plot", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "plots"), "--curves"]
    result = CliRunner().invoke(main, [*args, "--formats", "png"])
    assert result.exit_code == 0, result.output
    [figure] = list((tmp_path / "plots").glob("*-curves.png"))
    assert figure.stat().st_size > 5000
