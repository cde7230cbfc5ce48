"""Sequential methods: one network learns the tasks one after another (PackNet, LwF, the Avalanche bridge).

`SequentialMethod` plans its runs as a chain (`plan_runs`: run k reads run k-1 as its input "previous", so
its id encodes the whole history) and builds each step from the model the previous step left
(`load_previous`). After a step finishes (`after_run`), its final model is evaluated on every task learned so
far (`evaluate_step`); the accuracies land in `continual.json` next to the step's record (written atomically;
a step without it is evaluated again on the next launch).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from vdd_bench.augment import AugmentSpec
from vdd_bench.backbones import Backbone, BackboneSpec, load_weights
from vdd_bench.benchmark import Benchmark
from vdd_bench.chains import CHAIN_PREDICTIONS_FILE, CONTINUAL_FILE, PREVIOUS, longest_chain
from vdd_bench.config import RunRequest, TaskPlanner
from vdd_bench.device import Device, pick_device
from vdd_bench.engine import predict
from vdd_bench.errors import VddError
from vdd_bench.method import (
    METHODS,
    Method,
    TaskContext,
    get_method,
    pretrained_backbone,
    source_task_network,
)
from vdd_bench.record import RunRecord
from vdd_bench.runner import load_run_model, task_images, task_transform
from vdd_bench.store import RunStore, atomic_write_bytes, atomic_write_json

CONTINUAL_FORMAT = "vdd-continual/1"


class SequentialMethod(Method):
    """A method whose model grows along a chain: one network, the tasks learned so far recorded in its
    structure (`structure()["tasks"]`, in chain order).

    `build` starts from `load_previous(ctx)` when the run has a previous step. `source_first` (a
    hyper-parameter of every sequential method, set by `plan_chain` when the chain starts with the task
    the backbone was pre-trained on) keeps the pre-trained classifier for that task instead of learning it.
    """

    sequential: ClassVar[bool] = True

    def skeleton(self, spec: BackboneSpec, structure: dict[str, Any]) -> nn.Module:
        """An untrained model of the given structure, for a finished step's weights to be loaded into."""
        raise NotImplementedError

    def select_task(self, model: nn.Module, task: str) -> nn.Module:
        """The model predicting the classes of `task` (one of the tasks in its structure)."""
        raise NotImplementedError

    def load_previous(self, ctx: TaskContext) -> tuple[nn.Module, dict[str, Any]] | None:
        """The previous step's final model and structure, or None for the first step of a chain."""
        folder = ctx.inputs.get(PREVIOUS)
        if folder is None:
            return None
        state, structure = load_run_model(folder)
        if ctx.task in structure["tasks"]:
            raise VddError(f"task {ctx.task} was already learned earlier in this chain: a task comes once")
        model = self.skeleton(ctx.spec, structure)
        load_weights(model, state, folder / "model.pt")
        return model, structure

    def plan_runs(self, tasks: list[str], plan: TaskPlanner) -> list[RunRequest]:
        """One chain over `tasks` in their order, each step reading the one before. A method with the key
        `last_in_chain` gets True on the last step: planning the chain as a whole tells a step whether it is
        the last one (a longer chain over the same first tasks is another chain)."""
        if len(set(tasks)) != len(tasks):
            raise VddError(f"a task order names every task once, got {','.join(tasks)}")
        step: dict[str, Any] = {}
        if "source_first" in self.defaults and "source_first" not in plan.overrides:
            step["source_first"] = tasks[0] == plan.source_task
        requests: list[RunRequest] = []
        for task in tasks:
            if "last_in_chain" in self.defaults:  # e.g. PackNet leaves the chain's last task unpruned
                step["last_in_chain"] = task == tasks[-1]
            requests.append(plan(task, step, {PREVIOUS: requests[-1]} if requests else None))
        return requests

    def serving_runs(
        self, records: list[RunRecord], tasks: list[str]
    ) -> tuple[list[RunRecord], RunRecord | None]:
        """The steps of the longest chain, in chain order; its last step's network serves every task."""
        steps = longest_chain(records)
        return steps, steps[-1] if steps else None

    def after_run(self, request: RunRequest, results: Path, device: Device | None) -> None:
        evaluate_step(request, results, device)

    def complete(self, run_dir: Path) -> bool:
        return (run_dir / CONTINUAL_FILE).exists()


class PerTask(nn.Module):
    """One module per task (heads, BN layers); the forward runs the active task's."""

    def __init__(self, first: nn.Module) -> None:
        super().__init__()
        self.tasks = nn.ModuleList([first])
        self.active = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tasks[self.active](x)


def first_model(ctx: TaskContext) -> Backbone:
    """The pre-trained network a chain starts from: with its own classifier when the first task is the
    backbone's source task (`source_first`), else with a fresh one for the task."""
    if ctx.hparams["source_first"]:
        return source_task_network(ctx, "source_first")
    return pretrained_backbone(ctx)


def sequential_method(name: str) -> SequentialMethod:
    method = get_method(name)
    if not isinstance(method, SequentialMethod):
        sequential = [n for n in METHODS.names() if issubclass(METHODS.get(n), SequentialMethod)]
        raise VddError(f"method {name} is not sequential: a chain runs one of {', '.join(sequential)}")
    return method


@dataclass
class EvalSplit:
    images: torch.Tensor  # uint8 [N, 3, S, S]
    labels: np.ndarray | None
    augment: AugmentSpec


def eval_split(bench: Benchmark, task: str, split: str, size: int, recipe: str, results: Path) -> EvalSplit:
    """A task's images of one split with the recipe's test-time transform, as the runner evaluates them."""
    images = torch.from_numpy(task_images(bench, task, split, size, recipe, results))
    augment = task_transform(bench, task, size, recipe, results)
    return EvalSplit(images, bench.split(task, split).labels, augment)


def step_model(results: Path, run_id: str) -> tuple[SequentialMethod, nn.Module, dict[str, Any]]:
    """A finished step's method, final model (eval mode, CPU) and structure."""
    store = RunStore(results)
    record = store.record(run_id)
    if record is None:
        raise VddError(f"run {run_id} is not finished")
    method = sequential_method(record.method)
    state, structure = load_run_model(store.run_dir(run_id))
    model = method.skeleton(record.config.backbone_spec, structure)
    load_weights(model, state, store.run_dir(run_id) / "model.pt")
    return method, model.eval(), structure


def evaluate_step(request: RunRequest, results: Path, device: Device | None = None) -> dict[str, Any]:
    """Accuracy of a finished step's model on every task it has learned (val and test); cached on disk."""
    results = Path(results)
    config = request.config
    path = RunStore(results).run_dir(config.run_id) / CONTINUAL_FILE
    if path.exists():
        return json.loads(path.read_text())
    device = device or pick_device()
    method, model, structure = step_model(results, config.run_id)
    bench = Benchmark.open(request.root, request.test_labels)
    model = device.prepare_model(model)
    accuracy: dict[str, dict[str, float | None]] = {"val": {}, "test": {}}
    arrays: dict[str, np.ndarray] = {}
    for task in structure["tasks"]:
        routed = method.select_task(model, task)
        for split in ("val", "test"):
            data = eval_split(bench, task, split, config.resolution, config.recipe, results)
            pred = predict(routed, data.images, data.augment, device)
            usable = data.labels is not None and not (split == "val" and config.protocol == "trainval")
            accuracy[split][task] = float(100.0 * np.mean(pred == data.labels)) if usable else None
        arrays[f"{task}.test_pred"] = pred.astype(np.int64)
        arrays[f"{task}.test_image_ids"] = np.asarray(bench.split(task, "test").image_ids, dtype=np.int64)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # the chain's submission, when this step ends it
    atomic_write_bytes(path.with_name(CHAIN_PREDICTIONS_FILE), buffer.getvalue())
    result = {
        "format": CONTINUAL_FORMAT,
        "run_id": config.run_id,
        "previous": config.inputs.get(PREVIOUS),
        "tasks": list(structure["tasks"]),
        "accuracy": accuracy,
    }
    atomic_write_json(path, result)
    return result
