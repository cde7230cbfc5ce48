"""End to end on real images: the mini-decathlon sample (skipped where it is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vdd_bench.backbones import BackboneSpec
from vdd_bench.benchmark import Benchmark
from vdd_bench.config import RunSettings
from vdd_bench.runner import execute, plan_run
from vdd_bench.store import RunStore


def test_a_run_on_real_grayscale_images_learns_and_scores_on_the_test_labels(
    mini_root: Path, tmp_path: Path
) -> None:
    bench = Benchmark.open(mini_root)
    assert bench.kind == "custom"
    spec = BackboneSpec("resnet26", width=0.25)
    settings = RunSettings.of(bench, backbone=spec, resolution=36)
    request = plan_run(settings, "daimlerpedcls", "scratch", {"epochs": 4, "batch_size": 32})
    record = execute(request, tmp_path, progress=False)
    preds = np.load(RunStore(tmp_path).run_dir(request.config.run_id) / "predictions.npz")
    assert (
        len(preds["test_pred"]) == 200 and (preds["test_labels"] >= 0).all()
    )  # labels from daimlerpedcls_test.json
    assert record.metrics["test_acc"] == 100.0 * np.mean(preds["test_pred"] == preds["test_labels"])
    assert record.metrics["test_acc"] > 50.0  # two classes: above chance after a few epochs
    assert record.accounting.input_size == 32
