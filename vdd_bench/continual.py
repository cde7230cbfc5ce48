"""The continual protocol: one network learns the tasks of a benchmark one after another.

A chain is a list of ordinary runs, one per task in the chosen order; run k names run k-1 as its input
"previous" (`plan_run(..., inputs={"previous": ...})`), so its id encodes the whole history and its method's
`build` starts from the model run k-1 left (`load_previous`). After each step finishes, the step's final
model is reloaded and evaluated on every task seen so far; the accuracies land in `continual.json` next to
the step's record (written atomically; a step without it is evaluated again on the next launch). The
accuracy matrix R[i][j] (accuracy on task j after learning task i), the final accuracy and the forgetting
of each task are read back from those files (`chain_result`).

A killed chain is relaunched with the same command: finished steps are done runs and are skipped, the
interrupted step resumes from its epoch-end checkpoint, and the rest follow.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from vdd_bench import chains
from vdd_bench.augment import AugmentSpec, make_spec
from vdd_bench.backbones import Backbone, BackboneSpec, build_backbone, load_weights
from vdd_bench.benchmark import Benchmark
from vdd_bench.chains import CHAIN_PREDICTIONS_FILE, CONTINUAL_FILE, PREVIOUS
from vdd_bench.config import RunConfig, RunRequest, RunSettings, TaskPlanner
from vdd_bench.device import Device, pick_device
from vdd_bench.engine import predict
from vdd_bench.errors import VddError
from vdd_bench.method import METHODS, Method, TaskContext, get_method, pretrained_backbone
from vdd_bench.normalization import task_mean_std
from vdd_bench.runner import execute, load_run_model, task_images, task_planner
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
    if not ctx.hparams["source_first"]:
        return pretrained_backbone(ctx)
    if ctx.num_classes != ctx.pretrained_classes:
        raise VddError(
            f"source_first: task {ctx.task} has {ctx.num_classes} classes, the backbone's source task "
            f"{ctx.pretrained_classes}: it is not the source task, set source_first=false"
        )
    model = build_backbone(ctx.spec, ctx.pretrained_classes)
    model.load_state_dict(ctx.pretrained)
    return model


def sequential_method(name: str) -> SequentialMethod:
    method = get_method(name)
    if not isinstance(method, SequentialMethod):
        sequential = [n for n in METHODS.names() if issubclass(METHODS.get(n), SequentialMethod)]
        raise VddError(f"method {name} is not sequential: a chain runs one of {', '.join(sequential)}")
    return method


def plan_chain(
    settings: RunSettings,
    method: str,
    order: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    seed: int = 0,
) -> list[RunRequest]:
    """One run per task of `order` (default: the benchmark's task order), each reading the one before."""
    order = list(order or settings.benchmark.task_names())
    return sequential_method(method).plan_runs(order, task_planner(settings, method, overrides or {}, seed))


@dataclass
class EvalSplit:
    images: torch.Tensor  # uint8 [N, 3, S, S]
    labels: np.ndarray | None
    augment: AugmentSpec


def eval_split(bench: Benchmark, task: str, split: str, size: int, recipe: str, results: Path) -> EvalSplit:
    """A task's images of one split with the recipe's test-time transform, as the runner evaluates them."""
    train = task_images(bench, task, "train", size, recipe, results)
    mean, std = task_mean_std(bench, task, train, results)
    images = torch.from_numpy(task_images(bench, task, split, size, recipe, results))
    return EvalSplit(images, bench.split(task, split).labels, make_spec(recipe, task, size, mean, std))


def step_model(results: Path, run_id: str) -> tuple[SequentialMethod, nn.Module, dict[str, Any]]:
    """A finished step's method, final model (eval mode, CPU) and structure."""
    store = RunStore(results)
    record = store.record(run_id)
    if record is None:
        raise VddError(f"run {run_id} is not finished")
    config = record["config"]
    method = sequential_method(config["method"])
    state, structure = load_run_model(store.run_dir(run_id))
    model = method.skeleton(RunConfig.from_dict(config).backbone_spec, structure)
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


def run_chain(
    requests: list[RunRequest],
    results: Path,
    device: Device | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[int, int, int], None] | None = None,
) -> ChainResult:
    """Run (or resume) every step in order and evaluate each; `on_epoch_end(step, phase, epoch)`."""
    device = device or pick_device()
    RunStore(results).mark_entries(request.config.run_id for request in requests)
    for step, request in enumerate(requests):
        method = sequential_method(request.config.method)
        hook = None
        if on_epoch_end is not None:

            def hook(phase: int, epoch: int, step: int = step) -> None:
                on_epoch_end(step, phase, epoch)

        execute(request, Path(results), device, progress, hook)
        method.after_run(request, results, device)
    return chain_result(results, requests[-1].config.run_id)


@dataclass
class ChainResult:
    """R[i][j]: accuracy (%) on task j after learning task i (None above the diagonal)."""

    method: str
    run_ids: list[str]
    tasks: list[str]
    matrix: list[list[float | None]]
    split: str

    @property
    def final(self) -> dict[str, float | None]:
        return dict(zip(self.tasks, self.matrix[-1], strict=True))

    @property
    def forgetting(self) -> dict[str, float | None]:
        """Per task but the last: best accuracy at any earlier step minus the final one (Chaudhry et al.)."""
        out: dict[str, float | None] = {}
        for j, task in enumerate(self.tasks[:-1]):
            earlier = [row[j] for row in self.matrix[j:-1] if row[j] is not None]
            last = self.matrix[-1][j]
            out[task] = max(earlier) - last if earlier and last is not None else None
        return out

    @property
    def mean_final(self) -> float | None:
        values = list(self.final.values())
        return sum(values) / len(values) if None not in values else None

    @property
    def mean_forgetting(self) -> float | None:
        values = list(self.forgetting.values())
        return sum(values) / len(values) if values and None not in values else None

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "run_ids": self.run_ids,
            "tasks": self.tasks,
            "split": self.split,
            "matrix": self.matrix,
            "final": self.final,
            "forgetting": self.forgetting,
            "mean_final": self.mean_final,
            "mean_forgetting": self.mean_forgetting,
        }


def chain_result(results: Path, last_run_id: str, split: str = "test") -> ChainResult:
    """The accuracy matrix of the chain ending at `last_run_id`, from its steps' `continual.json` files."""
    store = RunStore(results)
    steps: list[dict[str, Any]] = []
    run_id: str | None = last_run_id
    while run_id is not None:
        path = store.run_dir(run_id) / CONTINUAL_FILE
        if not path.exists():
            raise VddError(f"step {run_id} has no {CONTINUAL_FILE}: relaunch the chain to evaluate it")
        step = json.loads(path.read_text())
        steps.append(step)
        run_id = step["previous"]
    steps.reverse()
    tasks = steps[-1]["tasks"]
    matrix = [[step["accuracy"][split].get(task) for task in tasks] for step in steps]
    method = store.record(last_run_id)["method"]
    return ChainResult(method, [s["run_id"] for s in steps], tasks, matrix, split)


def chain_ends(results: Path) -> list[str]:
    """Run ids of the last step of every chain in the store whose last step is evaluated."""
    ends = chains.chain_ends(list(RunStore(results).done_records()))
    return sorted({end["run_id"] for end in ends.values() if "continual" in end})


def render_continual(results: Path, fmt: str = "markdown", split: str = "test") -> str:
    """Every chain in the store: its accuracy matrix, final accuracy and forgetting per task."""
    from tabulate import tabulate

    chains = [chain_result(results, run_id, split) for run_id in chain_ends(results)]
    if fmt == "json":
        return json.dumps([chain.to_json() for chain in chains], indent=2)
    if not chains:
        raise VddError(f"no evaluated chain under {results}: run `vdd chain` first")
    tablefmt = {"markdown": "github", "latex": "latex_booktabs", "csv": "tsv"}[fmt]
    out = []
    for chain in chains:

        def cells(values: list[float | None]) -> list[float | None]:
            return [None if v is None else round(v, 2) for v in values]

        rows = [[f"after {task}", *cells(row)] for task, row in zip(chain.tasks, chain.matrix, strict=True)]
        rows.append(["final", *cells(list(chain.final.values()))])
        rows.append(["forgetting", *cells([chain.forgetting.get(t) for t in chain.tasks])])
        mean_final = "–" if chain.mean_final is None else f"{chain.mean_final:.2f}"
        mean_forgetting = "–" if chain.mean_forgetting is None else f"{chain.mean_forgetting:.2f}"
        out.append(
            f"{chain.method}: {' -> '.join(chain.tasks)} (last run {chain.run_ids[-1]})\n"
            f"{split} accuracy R[i][j] on task j after learning task i; mean final {mean_final}, "
            f"mean forgetting {mean_forgetting} (plain means over tasks)\n\n"
            + tabulate(rows, ["", *chain.tasks], tablefmt=tablefmt, missingval="–")
        )
    return "\n\n".join(out)
