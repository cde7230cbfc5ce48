"""`vdd export`: one bundle for all tasks of a method serves each task with the predictions of its run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from method_helpers import ToyEnv, make_toy_env, run_method

from vdd_bench.bundle import Bundle, export
from vdd_bench.cli import main
from vdd_bench.continual import plan_chain, run_chain
from vdd_bench.sequential import eval_split
from vdd_bench.store import RunStore

TASKS = ["colors", "shapes"]
TINY = {"epochs": 1, "batch_size": 32}
METHOD_RUNS: dict[str, dict[str, Any]] = {
    "finetune": {**TINY, "lr": 0.01},
    "feature": TINY,
    "piggyback": {**TINY, "lr_step_epochs": 1},
    "adapters_series": {**TINY, "lr": 0.01},
    "bn_bias": TINY,
    "lora": {**TINY, "lr": 0.01},
    "taps": {**TINY, "warmup_epochs": 1, "lam": 30.0},  # a strong penalty: some layers switched off
    "spottune": {**TINY, "lr": 0.01},
    "nettailor": {"teacher_epochs": 1, "epochs": 1, "retrain_epochs": 1, "candidates": [0, 8]},
}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> ToyEnv:
    shared = make_toy_env(tmp_path_factory)
    # a run store of its own: exactly one hyper-parameter setting per method
    return ToyEnv(shared.bench, tmp_path_factory.mktemp("bundle-results"), shared.checkpoint)


def assert_bundle_predicts_like_the_runs(env: ToyEnv, bundle: Bundle, run_ids: dict[str, str]) -> None:
    store = RunStore(env.results)
    assert sorted(bundle.tasks) == sorted(run_ids)
    for task in reversed(bundle.tasks):  # switching in both directions
        saved = np.load(store.run_dir(run_ids[task]) / "predictions.npz")
        bundle.set_task(task)
        for split in ("val", "test"):
            data = eval_split(env.bench, task, split, 36, "residual_adapters", env.results)
            assert np.array_equal(bundle.predict(data.images), saved[f"{split}_pred"]), (task, split)


@pytest.mark.parametrize("method", list(METHOD_RUNS))
def test_bundle_predictions_equal_the_runs(env: ToyEnv, method: str, tmp_path: Path) -> None:
    run_ids = {t: run_method(env, method, METHOD_RUNS[method], task=t).folder.name for t in TASKS}
    summary = export(
        method, env.results, env.bench.root, tmp_path / "b.pt", backbone_checkpoint=env.checkpoint
    )
    assert summary.tasks == TASKS
    payload = torch.load(tmp_path / "b.pt", weights_only=True)  # plain data and tensors only
    assert not any(b.dtype == torch.bool for b in payload["blobs"])  # masks are bit-packed
    assert_bundle_predicts_like_the_runs(env, Bundle.load(tmp_path / "b.pt"), run_ids)
    if method in ("piggyback", "adapters_series", "feature", "bn_bias", "lora"):
        # the frozen backbone is stored once: far less than one fine-tuned network per task
        assert summary.bundle_bytes < 0.75 * summary.finetuned_bytes
    if method == "piggyback":
        masks = [r for e in payload["tasks"].values() for r in e["state"].values() if r[0] == "bits"]
        assert masks and all(payload["blobs"][r[1]].dtype == torch.uint8 for r in masks)


def test_packnet_chain_bundle(env: ToyEnv, tmp_path: Path) -> None:
    chain = plan_chain(env.settings, "packnet", TASKS, {**TINY, "retrain_epochs": 1, "lr": 0.01})
    run_chain(chain, env.results, progress=False)
    result = CliRunner().invoke(
        main,
        [
            "export",
            "--method",
            "packnet",
            "--results",
            str(env.results),
            "--benchmark",
            str(env.bench.root),
            "--backbone-checkpoint",
            str(env.checkpoint),
            "-o",
            str(tmp_path / "p.pt"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "fine-tuned networks" in result.output and "task switch" in result.output
    bundle = Bundle.load(tmp_path / "p.pt")
    assert bundle.payload["chain"]["run_id"] == chain[-1].config.run_id  # the last step holds every task
    owners = [r for r in bundle.payload["chain"]["state"].values() if r[0] == "int"]
    assert owners and all(bundle.payload["blobs"][r[1]].dtype == torch.uint8 for r in owners)
    run_ids = {r.config.task: r.config.run_id for r in chain}
    assert_bundle_predicts_like_the_runs(env, bundle, run_ids)
