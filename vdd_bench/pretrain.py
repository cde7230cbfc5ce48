"""Pre-train a backbone on a benchmark's source task and save the checkpoint later runs start from.

Pre-training is an ordinary `scratch` run on the source task (so it lands in the run store, resumes, and is
skipped when done); its final weights are then saved as a backbone checkpoint.

With `processes` > 1 it runs data-parallel, one process per GPU (or CPU processes with gloo): see
`vdd_bench.distributed` for what is sharded and how BatchNorm is handled. With synchronised BatchNorm (the
default) the run, its id and the checkpoint's name are those of the single-process run.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from tasks.generic import source_task
from vdd_bench.backbones import BackboneSpec, build_backbone, save_checkpoint
from vdd_bench.benchmark import Benchmark
from vdd_bench.device import Device
from vdd_bench.distributed import Distributed, check_batch, spawn
from vdd_bench.runner import RunRequest, execute, finish_run, load_run_model, open_run, plan_run, train_run
from vdd_bench.store import RunStore


def default_checkpoint_path(
    results: Path, bench: Benchmark, task: str, spec: BackboneSpec, run_digest: str
) -> Path:
    name = f"{bench.fingerprint}-{task}-{spec.name}-w{spec.width:g}-{run_digest}.pt"
    return Path(results) / "backbones" / name


def plan_pretrain(
    bench: Benchmark,
    spec: BackboneSpec,
    task: str,
    resolution: int | None = None,
    overrides: dict[str, Any] | None = None,
    epoch_scale: float = 1.0,
    seed: int = 0,
    processes: int = 1,
    sync_bn: bool = True,
) -> RunRequest:
    """The source-task run; per-process BatchNorm statistics over several processes are another
    computation than the single-process run, so they enter its config (and its id)."""
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
    if processes > 1:
        check_batch(request.config.hparams["batch_size"], processes)
        if not sync_bn:
            extra = {**request.config.extra, "batchnorm": f"per-process/{processes}"}
            request = replace(request, config=replace(request.config, extra=extra))
    return request


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
    processes: int = 1,
    sync_bn: bool = True,
) -> Path:
    """Train (or reuse) the source-task run and write its backbone checkpoint; returns the checkpoint path.

    `processes` > 1 trains data-parallel in that many local processes (GPUs 0..N-1, or CPU with gloo)."""
    task = task or source_task(bench)
    request = plan_pretrain(bench, spec, task, resolution, overrides, epoch_scale, seed, processes, sync_bn)
    out = Path(out) if out else default_checkpoint_path(results, bench, task, spec, request.config.digest())
    if out.exists():
        return out
    if processes > 1:
        args = (bench.root, Path(results), spec, task, resolution, overrides, epoch_scale, seed, out)
        spawn(processes, device, sync_bn, pretrain_rank, (*args, progress))
        return out
    return _train_and_save(request, Path(results), out, device, progress)


def pretrain_rank(
    dist: Distributed,
    device: Device,
    root: Path,
    results: Path,
    spec: BackboneSpec,
    task: str | None = None,
    resolution: int | None = None,
    overrides: dict[str, Any] | None = None,
    epoch_scale: float = 1.0,
    seed: int = 0,
    out: Path | None = None,
    progress: bool = False,
) -> Path:
    """One rank of a data-parallel pretraining (the process group is initialised); rank 0 writes the files."""
    bench = Benchmark.open(root)
    task = task or source_task(bench)
    request = plan_pretrain(
        bench, spec, task, resolution, overrides, epoch_scale, seed, dist.world_size, dist.sync_bn
    )
    out = Path(out) if out else default_checkpoint_path(results, bench, task, spec, request.config.digest())
    dist.agree(out.exists(), f"existence of {out}")
    if out.exists():
        return out
    return _train_and_save(request, Path(results), out, device, progress and dist.is_main, dist)


def _train_and_save(
    request: RunRequest,
    results: Path,
    out: Path,
    device: Device | None,
    progress: bool,
    dist: Distributed | None = None,
) -> Path:
    data_parallel = None
    if dist is None:
        record = execute(request, results, device, progress=progress)
    else:
        record, data_parallel = _execute_data_parallel(request, results, device, progress, dist)
        if not dist.is_main:
            return out
    config = request.config
    spec = BackboneSpec.from_dict({k: v for k, v in config.backbone.items() if k != "checkpoint"})
    state, _ = load_run_model(RunStore(results).run_dir(config.run_id))
    model = build_backbone(spec, record["num_classes"])
    model.load_state_dict(state)
    meta = {
        "benchmark": config.benchmark,
        "benchmark_kind": config.benchmark_kind,
        "task": config.task,
        "run_id": config.run_id,
        "resolution": config.resolution,
        "val_acc": record["metrics"]["val_acc"],
        "test_acc": record["metrics"]["test_acc"],
    }
    if data_parallel is not None:
        meta["data_parallel"] = data_parallel
    save_checkpoint(out, model, meta)
    return out


def _execute_data_parallel(
    request: RunRequest, results: Path, device: Device, progress: bool, dist: Distributed
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The runner's `execute` for one rank: every rank trains its shards, rank 0 evaluates and records.
    Returns the record (empty on other ranks) and, when this call trained, how (world size, backend,
    BatchNorm, every rank's final weights digest)."""
    config = request.config
    existing = RunStore(results).record(config.run_id)
    dist.agree(existing is not None, f"state of run {config.run_id}")
    if existing is not None:
        return existing, None
    run = open_run(request, results)
    model, history, trainer, seconds = train_run(run, device, progress, dist=dist)
    how = {**dist.describe(), "rank_weights": trainer.rank_digests}
    if not dist.is_main:
        return {}, how
    return finish_run(run, model, device, seconds, history), how
