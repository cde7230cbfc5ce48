"""Execute one run: read data and the backbone, train through the engine, evaluate, account, record."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vdd_bench.accounting import count_macs
from vdd_bench.augment import AugmentSpec, geometry, make_spec
from vdd_bench.backbones import BackboneSpec, load_checkpoint
from vdd_bench.benchmark import Benchmark, SplitIndex
from vdd_bench.cache import default_cache_path, load_split_images
from vdd_bench.config import Planner, RunConfig, RunRequest, RunSettings, TaskPlanner
from vdd_bench.curves import finish_curves
from vdd_bench.device import Device, pick_device
from vdd_bench.distributed import Distributed
from vdd_bench.engine import (
    LabelledImages,
    Trainer,
    eval_batches,
    predict,
    remove_checkpoints,
    save_state,
)
from vdd_bench.errors import Diverged, VddError
from vdd_bench.faults import fault_point
from vdd_bench.method import METHODS, Method, TaskContext, get_method
from vdd_bench.normalization import task_mean_std
from vdd_bench.record import Accounting, BenchmarkInfo, RunRecord
from vdd_bench.safeload import load_tensors
from vdd_bench.search import trial_values
from vdd_bench.store import RunStore, atomic_write_bytes
from vdd_bench.tasks.generic import native_resolution, source_task, task_facts

MODEL_FORMAT = "vdd-model/1"  # model.pt: the final weights (+ the structure a method's surgery left)
_FINGERPRINTS: dict[tuple[str, int, int], str] = {}
_SPECS: dict[tuple[str, int, int], BackboneSpec] = {}


def file_fingerprint(path: Path) -> str:
    """Content hash of a checkpoint (12 hex), memoised per (path, size, mtime) for sweeps of many runs."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FINGERPRINTS:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        _FINGERPRINTS[key] = digest.hexdigest()[:12]
    return _FINGERPRINTS[key]


def checkpoint_spec(path: Path) -> BackboneSpec:
    """The architecture of a backbone checkpoint, memoised per (path, size, mtime): planning a sweep asks
    for it once per run and dependency, and reading the whole checkpoint each time dominated planning."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SPECS:
        _SPECS[key] = load_checkpoint(path, check=False)[0]  # open_run checks the weights
    return _SPECS[key]


def load_run_model(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The final weights of a finished run and the structure its method's surgery left."""
    state = load_tensors(folder / "model.pt", "finished model")
    return state["model"], state["structure"]


def plan_run(
    settings: RunSettings,
    task: str,
    method: str,
    overrides: dict[str, Any] | None = None,
    seed: int = 0,
    extra: dict[str, Any] | None = None,
    inputs: dict[str, RunRequest] | None = None,
    trial: int = 0,
) -> RunRequest:
    """Resolve everything a run depends on into its config; refuse what cannot run before any work starts.

    `inputs` are runs this one reads besides its method's own dependencies (a chain's previous step);
    `extra` is recorded in the config (the role of a backbone's pre-training, the run a refit refits);
    `trial` is the search trial whose values `overrides` holds (its dependencies are plain runs of the
    values they are given)."""
    bench = settings.benchmark
    if task not in bench.tasks:
        raise VddError(
            f"unknown task {task!r} in {bench.root}: choose one of {', '.join(bench.task_names())}"
        )
    method_cls = METHODS.get(method)
    hparams = method_cls.scaled(method_cls.resolve(overrides or {}, method), settings.epoch_scale)
    spec = _backbone_of(settings, method, method_cls.uses_pretrained)
    backbone: dict[str, Any] = {**spec.to_dict(), "checkpoint": None}
    if method_cls.uses_pretrained:
        backbone["checkpoint"] = file_fingerprint(settings.backbone_checkpoint)
    # The dependencies' overrides come from this run's hyper-parameters, already scaled.
    same_backbone = settings.but(backbone=spec, epoch_scale=1.0)

    def plan_dependency(other: str, other_overrides: dict[str, Any], other_protocol: str) -> RunRequest:
        return plan_run(same_backbone.but(protocol=other_protocol), task, other, other_overrides, seed)

    planner = Planner(plan_dependency, settings.protocol, spec)
    needs = {**method_cls().dependencies(hparams, planner), **(inputs or {})}
    config = RunConfig(
        benchmark=bench.fingerprint,
        benchmark_kind=bench.kind,
        task=task,
        method=method,
        hparams=hparams,
        backbone=backbone,
        resolution=native_resolution(bench) if settings.resolution is None else settings.resolution,
        recipe=settings.recipe,
        protocol=settings.protocol,
        seed=seed,
        inputs={name: request.config.run_id for name, request in needs.items()},
        extra=dict(extra or {}),
        trial=trial,
    )
    return RunRequest(config, Path(bench.root), settings.backbone_checkpoint, settings.test_labels, needs)


def task_planner(
    settings: RunSettings,
    method: str,
    overrides: dict[str, Any],
    seed: int,
    trial: int = 0,
    chain: list[str] | None = None,
) -> TaskPlanner:
    """What `Method.plan_runs` plans with: runs of `method` with `overrides` and `seed` under `settings`,
    as trial `trial` of a search: the values it draws for the keys `overrides` leaves free, per task, or
    once for the whole `chain` (the task order of a sequential method)."""
    method_cls = METHODS.get(method)
    fixed = method_cls.fixed_by(overrides)

    def plan(task: str, step: dict[str, Any], inputs: dict[str, RunRequest]) -> RunRequest:
        key = ",".join(chain) if chain else task
        drawn = trial_values(method_cls.search_space, method, key, trial, fixed | set(step))
        return plan_run(
            settings, task, method, {**drawn, **overrides, **step}, seed, inputs=inputs, trial=trial
        )

    return TaskPlanner(plan, source_task(settings.benchmark), dict(overrides))


def _backbone_of(settings: RunSettings, method: str, uses_pretrained: bool) -> BackboneSpec:
    """The architecture a run builds: the checkpoint's (it must agree with `settings.backbone` when both are
    given), else `settings.backbone`; a method that starts from pre-trained weights needs a checkpoint."""
    spec = settings.backbone
    if settings.backbone_checkpoint is not None:
        ckpt_spec = checkpoint_spec(settings.backbone_checkpoint)
        if spec is not None and spec != ckpt_spec:
            raise VddError(f"{settings.backbone_checkpoint} holds a {ckpt_spec}, not the requested {spec}")
        return ckpt_spec
    if uses_pretrained:
        raise VddError(
            f"method {method} starts from a pre-trained backbone: pass --backbone-checkpoint (vdd pretrain)"
        )
    if spec is None:
        raise VddError("no backbone: pass --backbone-checkpoint or --backbone")
    return spec


@dataclass
class TaskData:
    """A task's images (uint8, stored size) and labels per split, the training set and the transform."""

    splits: dict[str, SplitIndex]
    images: dict[str, np.ndarray]
    train: LabelledImages
    augment: AugmentSpec


def task_images(bench: Benchmark, task: str, split: str, size: int, recipe: str, results: Path) -> np.ndarray:
    """A split's uint8 images in the geometry `recipe` reads them in: from the packed HDF5 cache when there
    is one for this benchmark, size and geometry, else decoded from the JPEGs."""
    shape = geometry(recipe, task)
    cache = default_cache_path(results, bench, size, shape)
    return load_split_images(bench, bench.split(task, split), size, cache if cache.exists() else None, shape)


def task_transform(
    bench: Benchmark, task: str, size: int, recipe: str, results: Path, train: np.ndarray | None = None
) -> AugmentSpec:
    """The recipe's transform for a task, normalised with its mean/std: official, cached in the results
    folder, or computed once from its training images (`train`, when already loaded, else read then)."""
    mean, std = task_mean_std(bench, task, train, results)
    return make_spec(recipe, task, size, mean, std)


def load_task_data(bench: Benchmark, config: RunConfig, results: Path) -> TaskData:
    """Every split of the run's task, the training set of its protocol and the recipe's transform."""
    size = config.resolution
    splits = {name: bench.split(config.task, name) for name in ("train", "val", "test")}
    images = {name: task_images(bench, config.task, name, size, config.recipe, results) for name in splits}
    fit = ["train", "val"] if config.protocol == "trainval" else ["train"]
    train = LabelledImages(
        # one split is used in place (a memory-mapped cache is not copied); train+val is joined once
        images=images[fit[0]] if len(fit) == 1 else np.concatenate([images[n] for n in fit]),
        labels=torch.from_numpy(np.concatenate([splits[n].labels for n in fit])),
    )
    augment = task_transform(bench, config.task, size, config.recipe, results, images["train"])
    return TaskData(splits, images, train, augment)


def measurement_images(data: TaskData) -> Iterator[torch.Tensor]:
    """The test split in the test-time transform, float32 batches on the CPU (what `Method.measure` reads)."""
    return eval_batches(torch.from_numpy(data.images["test"]), data.augment, Device(torch.device("cpu")))


def evaluate(
    model: torch.nn.Module, data: TaskData, protocol: str, device: Device
) -> tuple[dict[str, float | None], dict[str, np.ndarray]]:
    """Accuracy on val and test (None without labels, or for val when it was trained on) and predictions."""
    metrics: dict[str, float | None] = {}
    arrays: dict[str, np.ndarray] = {}
    for name in ("val", "test"):
        pred = predict(model, torch.from_numpy(data.images[name]), data.augment, device)
        labels = data.splits[name].labels
        arrays[f"{name}_image_ids"] = np.asarray(data.splits[name].image_ids, dtype=np.int64)
        arrays[f"{name}_pred"] = pred.astype(np.int64)
        arrays[f"{name}_labels"] = labels if labels is not None else np.full(len(pred), -1, dtype=np.int64)
        usable = labels is not None and not (name == "val" and protocol == "trainval")
        metrics[f"{name}_acc"] = float(100.0 * np.mean(pred == labels)) if usable else None
        if usable and len(labels):  # what predicting the most common class scores (flagged at or below)
            metrics[f"{name}_majority_acc"] = float(100.0 * np.bincount(labels).max() / len(labels))
        fault_point("runner.evaluate")
    return metrics, arrays


@dataclass
class OpenRun:
    """A started run: its folder, benchmark, data, method and task context, ready to train."""

    request: RunRequest
    store: RunStore
    folder: Path
    bench: Benchmark
    data: TaskData
    method: Method
    ctx: TaskContext


def open_run(request: RunRequest, results: Path) -> OpenRun:
    """Start a run whose inputs are finished: check the benchmark, read the data, build the task context."""
    store, config = RunStore(results), request.config
    for name, needed in request.inputs.items():
        if not store.is_done(needed.config.run_id):
            raise VddError(f"{config.run_id}: its input {name} ({needed.config.run_id}) is not finished")
    folder = store.start(config)
    bench = Benchmark.open(request.root, request.test_labels)
    if bench.fingerprint != config.benchmark:
        raise VddError(
            f"the annotations under {request.root} changed since the run was planned: plan it again"
        )
    data = load_task_data(bench, config, Path(results))
    pretrained, pretrained_classes = None, 0
    if config.backbone["checkpoint"] is not None:
        _, pretrained, _ = load_checkpoint(request.backbone_checkpoint)
        pretrained_classes = pretrained["classifier.weight"].shape[0]
    ctx = TaskContext(
        task=config.task,
        num_classes=bench.tasks[config.task].num_classes,
        spec=config.backbone_spec,
        pretrained=pretrained,
        pretrained_classes=pretrained_classes,
        hparams=config.hparams,
        input_size=data.augment.crop,
        inputs={name: store.run_dir(run_id) for name, run_id in config.inputs.items()},
    )
    return OpenRun(request, store, folder, bench, data, get_method(config.method), ctx)


def finish_run(
    run: OpenRun,
    model: torch.nn.Module,
    device: Device,
    train_seconds: float,
    history: list[dict[str, Any]],
) -> RunRecord:
    """Evaluate, account, save the model and predictions, write the record and mark the run done."""
    config, data, task = run.request.config, run.data, run.request.config.task
    started = time.perf_counter()
    metrics, arrays = evaluate(model, data, config.protocol, device)
    arrays["category_ids"] = np.asarray(run.bench.tasks[task].category_ids, dtype=np.int64)
    eval_seconds = time.perf_counter() - started

    cpu_model = copy.deepcopy(model).cpu().float()
    accounting = run.method.account(cpu_model, run.ctx)
    accounting["macs"] = count_macs(cpu_model, data.augment.crop)
    accounting["input_size"] = data.augment.crop
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(run.folder / "predictions.npz", buffer.getvalue())
    save_state(
        run.folder / "model.pt",
        {
            "format": MODEL_FORMAT,
            "structure": run.method.structure(cpu_model),
            "model": cpu_model.state_dict(),
        },
    )
    facts = task_facts(task) if run.bench.kind == "decathlon" else None
    record = RunRecord(
        run_id=config.run_id,
        config=config,
        benchmark=BenchmarkInfo.of(run.bench),
        num_classes=run.ctx.num_classes,
        metrics=metrics,
        accounting=Accounting(**accounting),
        internal=not type(run.method).listed,
        chain_step=type(run.method).sequential,
        official_baseline_acc=facts.baseline_acc if facts else None,
        method_report={
            **run.method.report(cpu_model, run.ctx),
            **run.method.measure(cpu_model, run.ctx, lambda: measurement_images(data)),
        },
        history=history,
        searched=sorted(type(run.method).search_space),
        timing={
            "train_s": round(train_seconds, 3),
            "eval_s": round(eval_seconds, 3),
            **run.method.timings(cpu_model, run.ctx),
            "device": device.describe(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    )
    finish_curves(run.folder, config.run_id, history, config.hparams, metrics)
    run.store.finish(record)
    fault_point("runner.done")
    remove_checkpoints(run.folder / "checkpoint.pt")
    return run.store.record(config.run_id)


def execute(
    request: RunRequest,
    results: Path,
    device: Device | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[int, int], None] | None = None,
) -> RunRecord:
    """Run to completion (resuming from the last epoch-end checkpoint) and return the record. A run whose
    training diverges, or one of whose inputs did, is settled as diverged in the store (`RunStore.diverge`)
    before `Diverged` is raised, whichever command ran it."""
    config, store = request.config, RunStore(results)
    existing = store.record(config.run_id)
    if existing is not None:
        with contextlib.suppress(OSError):  # left by a crash; a read-only store keeps them, harmlessly
            remove_checkpoints(store.run_dir(config.run_id) / "checkpoint.pt")
        return existing
    device = device or pick_device()
    try:
        for name, needed in request.inputs.items():
            execute_input(name, needed, store, device, progress)
        own = get_method(config.method).execute_run(request, Path(results), device, progress, on_epoch_end)
        if own is not None:
            return own
        run = open_run(request, Path(results))
        model, history, _, seconds = train_run(run, device, progress, on_epoch_end)
        return finish_run(run, model, device, seconds, history)
    except Diverged as exc:
        store.diverge(config.run_id, str(exc))
        raise


def execute_input(name: str, needed: RunRequest, store: RunStore, device: Device, progress: bool) -> None:
    """Run an input before the run that reads it. When the input diverges (now, or settled so before), so
    does the reader: it cannot start, and trying it again would only repeat the input."""
    input_id = needed.config.run_id
    if not store.is_diverged(input_id):
        try:
            execute(needed, store.results, device, progress)
            return
        except Diverged:
            pass  # settled by its own `execute`
    raise Diverged(f"input {name} ({input_id}) diverged")


def train_run(
    run: OpenRun,
    device: Device,
    progress: bool,
    on_epoch_end: Callable[[int, int], None] | None = None,
    dist: Distributed | None = None,
) -> tuple[torch.nn.Module, list[dict[str, Any]], Trainer, float]:
    """Build the method's model (seeded) and train it through the engine, resuming from the run's last
    checkpoint; returns the model, the history, the trainer and the training seconds (of every segment of
    a resumed run, not only the last)."""
    config = run.request.config
    torch.manual_seed(config.seed)
    model = run.method.build(run.ctx)
    trainer = Trainer(
        run.method,
        run.ctx,
        device,
        config.seed,
        run.folder / "checkpoint.pt",
        config.digest(),
        progress=progress,
        label=f"{config.method}/{config.task}" + (f" x{dist.world_size}" if dist else ""),
        on_epoch_end=on_epoch_end,
        dist=dist,
    )
    model, history = trainer.fit(model, run.data.train, run.data.augment)
    return model, history, trainer, trainer.seconds
