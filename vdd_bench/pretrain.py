"""Pre-train a backbone on a benchmark's source task and save the checkpoint later runs start from.

Pre-training is an ordinary `scratch` run on the source task (so it lands in the run store, resumes, and is
skipped when done); its final weights are then saved as a backbone checkpoint.

With `processes` > 1 it runs data-parallel, one process per GPU (or CPU processes with gloo): see
`vdd_bench.distributed` for what is sharded and how BatchNorm is handled. With synchronised BatchNorm (the
default) the run, its id and the checkpoint's name are those of the single-process run.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vdd_bench.backbones import build_backbone, save_checkpoint
from vdd_bench.config import RunRequest, RunSettings
from vdd_bench.device import Device
from vdd_bench.distributed import Distributed, check_batch, spawn
from vdd_bench.errors import VddError
from vdd_bench.record import RunRecord
from vdd_bench.runner import execute, finish_run, load_run_model, open_run, plan_run, train_run
from vdd_bench.store import RunStore
from vdd_bench.tasks.generic import source_task


@dataclass(frozen=True)
class PretrainPlan:
    """What `vdd pretrain` trains: a `scratch` run of `settings.backbone` on `task` (default: the benchmark's
    source task) with `overrides`, in `processes` data-parallel processes. Per-process BatchNorm statistics
    (`sync_bn=False` over several processes) are another computation than the single-process run, so they
    enter the run's config (and its id)."""

    settings: RunSettings
    task: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    processes: int = 1
    sync_bn: bool = True

    def __post_init__(self) -> None:
        if self.settings.backbone is None:
            raise VddError("pretraining needs a backbone architecture: pass --backbone (and --width)")
        if self.processes < 1:
            raise VddError(f"bad process count {self.processes}: give at least 1")

    @property
    def source(self) -> str:
        return self.task or source_task(self.settings.benchmark)

    def request(self) -> RunRequest:
        request = plan_run(
            self.settings, self.source, "scratch", self.overrides, self.seed, {"role": "pretrain"}
        )
        if self.processes > 1:
            check_batch(request.config.hparams["batch_size"], self.processes)
            if not self.sync_bn:
                extra = {**request.config.extra, "batchnorm": f"per-process/{self.processes}"}
                request = replace(request, config=replace(request.config, extra=extra))
        return request

    def checkpoint_path(self, results: Path, out: Path | None = None) -> Path:
        """`out`, or the default name under `results/backbones/`, named by the benchmark, task, backbone
        and the run's digest."""
        if out is not None:
            return Path(out)
        spec, bench = self.settings.backbone, self.settings.benchmark
        digest = self.request().config.digest()
        name = f"{bench.fingerprint}-{self.source}-{spec.name}-w{spec.width:g}-{digest}.pt"
        return Path(results) / "backbones" / name


def pretrain(
    plan: PretrainPlan,
    results: Path,
    out: Path | None = None,
    device: Device | None = None,
    progress: bool = True,
) -> Path:
    """Train (or reuse) the source-task run and write its backbone checkpoint; returns the checkpoint path.

    With `plan.processes` > 1 it trains data-parallel in that many local processes (GPUs 0..N-1, or CPU
    with gloo)."""
    out = plan.checkpoint_path(results, out)
    if out.exists():
        return out
    if plan.processes > 1:
        spawn(plan.processes, device, plan.sync_bn, pretrain_rank, (plan, Path(results), out, progress))
        return out
    return _train_and_save(plan.request(), Path(results), out, device, progress)


def pretrain_rank(
    dist: Distributed, device: Device, plan: PretrainPlan, results: Path, out: Path, progress: bool = False
) -> Path:
    """One rank of a data-parallel pretraining (the process group is initialised); rank 0 writes the files.
    `plan.processes` and `plan.sync_bn` are replaced by the process group's."""
    plan = replace(plan, processes=dist.world_size, sync_bn=dist.sync_bn)
    dist.agree(out.exists(), f"existence of {out}")
    if out.exists():
        return out
    return _train_and_save(plan.request(), Path(results), out, device, progress and dist.is_main, dist)


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
        if record is None or not dist.is_main:  # only the main rank writes the backbone
            return out
    config = request.config
    spec = config.backbone_spec
    state, _ = load_run_model(RunStore(results).run_dir(config.run_id))
    model = build_backbone(spec, record.num_classes)
    model.load_state_dict(state)
    meta = {
        "benchmark": config.benchmark,
        "benchmark_kind": config.benchmark_kind,
        "task": config.task,
        "run_id": config.run_id,
        "resolution": config.resolution,
        "val_acc": record.accuracy("val"),
        "test_acc": record.accuracy("test"),
    }
    if data_parallel is not None:
        meta["data_parallel"] = data_parallel
    save_checkpoint(out, model, meta)
    return out


def _execute_data_parallel(
    request: RunRequest, results: Path, device: Device, progress: bool, dist: Distributed
) -> tuple[RunRecord | None, dict[str, Any] | None]:
    """The runner's `execute` for one rank: every rank trains its shards, rank 0 evaluates and records.
    Returns the record (None on other ranks) and, when this call trained, how (world size, backend,
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
        return None, how
    return finish_run(run, model, device, seconds, history), how
