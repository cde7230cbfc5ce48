"""Pre-train a backbone on a benchmark's source task and save the checkpoint later runs start from.

Pre-training is an ordinary `scratch` run on the source task (so it lands in the run store, resumes, and is
skipped when done); its final weights are then saved as a backbone checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.generic import source_task
from vdd_bench.backbones import BackboneSpec, build_backbone, save_checkpoint
from vdd_bench.benchmark import Benchmark
from vdd_bench.device import Device
from vdd_bench.runner import execute, load_run_model, plan_run
from vdd_bench.store import RunStore


def default_checkpoint_path(
    results: Path, bench: Benchmark, task: str, spec: BackboneSpec, run_digest: str
) -> Path:
    name = f"{bench.fingerprint}-{task}-{spec.name}-w{spec.width:g}-{run_digest}.pt"
    return Path(results) / "backbones" / name


def pretrain(
    bench: Benchmark,
    results: Path,
    spec: BackboneSpec,
    task: str | None = None,
    resolution: int | None = None,
    overrides: dict[str, Any] | None = None,
    epoch_scale: float = 1.0,
    seed: int = 0,
    out: Path | None = None,
    device: Device | None = None,
    progress: bool = True,
) -> Path:
    """Train (or reuse) the source-task run and write its backbone checkpoint; returns the checkpoint path."""
    task = task or source_task(bench)
    request = plan_run(
        bench,
        task,
        "scratch",
        overrides,
        seed=seed,
        spec=spec,
        resolution=resolution,
        epoch_scale=epoch_scale,
        role="pretrain",
    )
    config = request.config
    out = Path(out) if out else default_checkpoint_path(results, bench, task, spec, config.digest())
    if out.exists():
        return out
    record = execute(request, Path(results), device, progress=progress)
    folder = RunStore(results).run_dir(config.run_id)
    state, _ = load_run_model(folder)
    model = build_backbone(spec, bench.tasks[task].num_classes)
    model.load_state_dict(state)
    meta = {
        "benchmark": bench.fingerprint,
        "benchmark_kind": bench.kind,
        "task": task,
        "run_id": config.run_id,
        "resolution": config.resolution,
        "val_acc": record["metrics"]["val_acc"],
        "test_acc": record["metrics"]["test_acc"],
    }
    save_checkpoint(out, model, meta)
    return out
