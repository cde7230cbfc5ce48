"""Runs through the real engine on the toy decathlon: resume, idempotence, frozen backbones, the CLI sweep."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vdd_bench.backbones import load_checkpoint
from vdd_bench.benchmark import Benchmark
from vdd_bench.cli import main
from vdd_bench.config import RunSettings
from vdd_bench.record import RunRecord
from vdd_bench.runner import execute, plan_run
from vdd_bench.store import RunStore

TASK = "shapes"
SMALL = {"epochs": 3, "batch_size": 32}


class Interrupt(Exception):
    pass


def stop_after(epochs: int):
    def hook(phase: int, epoch: int) -> None:
        if epoch == epochs:
            raise Interrupt

    return hook


def comparable(record: RunRecord) -> dict:
    """A record without its wall-clock timings, which legitimately differ between two executions."""
    return {k: v for k, v in record.to_json().items() if k != "timing"}


def model_state(results: Path, run_id: str) -> dict[str, torch.Tensor]:
    path = RunStore(results).run_dir(run_id) / "model.pt"
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_an_interrupted_run_resumes_to_the_same_record(
    toy_root: Path, toy_backbone: Path, tmp_path: Path
) -> None:
    bench = Benchmark.open(toy_root)
    request = plan_run(RunSettings.of(bench, backbone_checkpoint=toy_backbone), TASK, "finetune", SMALL)
    straight = execute(request, tmp_path / "a", progress=False)

    interrupted = tmp_path / "b"
    with pytest.raises(Interrupt):
        execute(request, interrupted, progress=False, on_epoch_end=stop_after(2))
    store = RunStore(interrupted)
    assert not store.is_done(request.config.run_id)
    assert (store.run_dir(request.config.run_id) / "checkpoint.pt").exists()
    epochs_run = []
    resumed = execute(request, interrupted, progress=False, on_epoch_end=lambda p, e: epochs_run.append(e))
    assert epochs_run == [3]  # only the missing epoch was trained
    assert comparable(resumed) == comparable(straight)
    a, b = model_state(tmp_path / "a", request.config.run_id), model_state(interrupted, request.config.run_id)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_done_run_is_not_run_again(toy_root: Path, toy_backbone: Path, tmp_path: Path) -> None:
    request = plan_run(RunSettings(toy_root, backbone_checkpoint=toy_backbone), "colors", "feature", SMALL)
    first = execute(request, tmp_path, progress=False)
    record_file = RunStore(tmp_path).run_dir(request.config.run_id) / "record.json"
    stamp = record_file.stat().st_mtime_ns
    calls = []
    again = execute(request, tmp_path, progress=False, on_epoch_end=lambda p, e: calls.append(e))
    assert again == first and calls == [] and record_file.stat().st_mtime_ns == stamp


def test_feature_extractor_leaves_the_backbone_bitwise_unchanged(
    toy_root: Path, toy_backbone: Path, tmp_path: Path
) -> None:
    request = plan_run(RunSettings(toy_root, backbone_checkpoint=toy_backbone), TASK, "feature", SMALL)
    record = execute(request, tmp_path, progress=False)
    _, pretrained, _ = load_checkpoint(toy_backbone)
    trained = model_state(tmp_path, request.config.run_id)
    backbone_keys = [k for k in pretrained if not k.startswith("classifier.")]
    assert backbone_keys and all(
        torch.equal(pretrained[k], trained[k]) for k in backbone_keys
    )  # BN stats too
    assert not torch.equal(
        pretrained["classifier.weight"][: trained["classifier.weight"].shape[0]], trained["classifier.weight"]
    )
    accounting = record.accounting
    classifier = trained["classifier.weight"].numel() + trained["classifier.bias"].numel()
    assert accounting.params_task == classifier
    assert accounting.params_shared == accounting.params_total - classifier


def test_predictions_are_saved_and_give_the_recorded_accuracy(
    toy_root: Path, toy_backbone: Path, tmp_path: Path
) -> None:
    request = plan_run(RunSettings(toy_root, backbone_checkpoint=toy_backbone), TASK, "finetune", SMALL)
    record = execute(request, tmp_path, progress=False)
    preds = np.load(RunStore(tmp_path).run_dir(request.config.run_id) / "predictions.npz")
    for split in ("val", "test"):
        accuracy = 100.0 * np.mean(preds[f"{split}_pred"] == preds[f"{split}_labels"])
        assert accuracy == pytest.approx(record.metrics[f"{split}_acc"])
        share = 100.0 * np.bincount(preds[f"{split}_labels"]).max() / len(preds[f"{split}_labels"])
        assert record.metrics[f"{split}_majority_acc"] == pytest.approx(share)  # the leaderboard's floor
    assert len(preds["test_image_ids"]) == len(Benchmark.open(toy_root).split(TASK, "test"))


def test_toy_sweep_through_the_cli_ends_in_a_scored_leaderboard(
    toy_root: Path, toy_backbone: Path, tmp_path: Path
) -> None:
    args = [
        "sweep",
        "--benchmark",
        str(toy_root),
        "--methods",
        "finetune,feature,scratch",
        "--backbone-checkpoint",
        str(toy_backbone),
        "--epoch-scale",
        "0.02",
        "--set",
        "batch_size=32",
        "--results",
        str(tmp_path),
        "--no-progress",
    ]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "30 runs: 0 already done, 30 completed, 0 failed" in first.output
    again = CliRunner().invoke(main, args)
    assert "30 runs: 30 already done, 0 completed, 0 failed" in again.output

    table = CliRunner().invoke(main, ["leaderboard", "--results", str(tmp_path), "--format", "json"])
    [group] = json.loads(table.output)
    assert group["benchmark"]["kind"] == "toy"
    rows = {row["method"]: row for row in group["rows"]}
    assert set(rows) == {"finetune", "feature", "scratch"}  # no published rows on the toy
    assert rows["finetune"]["score_total"] == pytest.approx(2500.0)
    for row in rows.values():
        assert set(row["accuracy"]) == set(group["tasks"]) and len(group["tasks"]) == 10
    assert rows["feature"]["task_specific_params"][TASK] < rows["finetune"]["task_specific_params"][TASK]
    markdown = CliRunner().invoke(main, ["leaderboard", "--results", str(tmp_path)]).output
    assert "TOY benchmark" in markdown and "| Score" in markdown.replace("|   Score", "| Score")


def test_a_resumed_runs_training_time_counts_every_segment(
    toy_root: Path, toy_backbone: Path, tmp_path: Path
) -> None:
    """The first segment lasts at least 1.5 s (a pause after its first epoch, before the second epoch's
    checkpoint); the resumed run's `timing.train_s` holds it and the last epoch, not the last epoch alone."""
    import time

    request = plan_run(RunSettings(toy_root, backbone_checkpoint=toy_backbone), TASK, "feature", SMALL)

    def slow_then_stop(phase: int, epoch: int) -> None:
        if epoch == 1:
            time.sleep(1.5)
        if epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        execute(request, tmp_path, progress=False, on_epoch_end=slow_then_stop)
    checkpoint = RunStore(tmp_path).run_dir(request.config.run_id) / "checkpoint.pt"
    first_segment = torch.load(checkpoint, map_location="cpu", weights_only=True)["train_seconds"]
    assert first_segment >= 1.5
    resumed = execute(request, tmp_path, progress=False)
    assert resumed.timing["train_s"] > first_segment


def test_predict_builds_no_autograd_graph() -> None:
    """Evaluation of every run goes through `predict`: its forward passes run without gradient tracking."""
    from torch import nn

    from vdd_bench.augment import make_spec
    from vdd_bench.device import Device
    from vdd_bench.engine import predict

    grad_enabled: list[bool] = []

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            grad_enabled.append(torch.is_grad_enabled())
            return x.flatten(1)[:, :3]

    spec = make_spec("residual_adapters", "t", 36, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    images = torch.zeros(300, 3, 36, 36, dtype=torch.uint8)
    assert predict(Probe(), images, spec, Device(torch.device("cpu"))).shape == (300,)
    assert grad_enabled == [False, False]
