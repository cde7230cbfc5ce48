"""The Avalanche bridge (avalanche-lib, imported only inside these functions: it takes seconds to import).

1. `to_avalanche(bench, ...)`: any benchmark root as an Avalanche benchmark, one experience per task
   (task label = position in the order, labels 0..C-1 of the task), train and test streams, so Avalanche
   users can run their strategies on the decathlon. Images are cropped and normalised as the harness
   evaluates them (the recipe's test-time transform); random augmentation is left to the user's transforms.
2. `register_strategy(name)`: an Avalanche training strategy as the sequential harness method
   `avalanche:<name>` (`vdd chain --method avalanche:EWC` registers it). Each step of the chain is a run in
   the same store: the strategy trains one experience in its own loop, the harness evaluates, accounts and
   records it like any run. The network is the pre-trained backbone with one head per task
   (`AvalancheNet`, a `MultiTaskModule` with fixed-size heads: Avalanche's `MultiHeadClassifier` with
   masking crashes with the new benchmark API). The strategy's plugins (EWC's importances, LwF's previous
   model, ...) are saved after each step and restored into the next step's strategy
   (`avalanche_state.pt`), since Avalanche's own checkpointing fails to pickle under recent torch.

Limits: Avalanche's PackNet refuses BatchNorm and cannot wrap these ResNets (use the harness's `packnet`);
its stream accuracy weighs tasks by samples, the harness reports plain means over tasks; epoch-end
checkpoints happen inside Avalanche's loop only, so a killed step restarts its experience.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from vdd_bench.accounting import count_macs, parameter_split
from vdd_bench.augment import augment_batch
from vdd_bench.backbones import BackboneSpec, build_backbone, load_checkpoint
from vdd_bench.benchmark import Benchmark
from vdd_bench.continual import PREVIOUS, SequentialMethod, eval_split
from vdd_bench.device import Device
from vdd_bench.engine import predict, save_state
from vdd_bench.errors import VddError
from vdd_bench.method import METHODS, TaskContext, pretrained_backbone, register_method
from vdd_bench.runner import MODEL_FORMAT, RunRequest, default_resolution
from vdd_bench.store import RunStore

STATE_FILE = "avalanche_state.pt"
# Required arguments of common strategies (Avalanche has no defaults for them); `strategy_args` overrides.
STRATEGY_ARGS: dict[str, dict[str, Any]] = {
    "EWC": {"ewc_lambda": 1.0},
    "LwF": {"alpha": 1.0, "temperature": 2.0},
    "SynapticIntelligence": {"si_lambda": 1.0},
    "MAS": {"lambda_reg": 1.0},
    "Replay": {"mem_size": 200},
    "GDumb": {"mem_size": 200},
    "GEM": {"patterns_per_exp": 32},
    "AGEM": {"patterns_per_exp": 32, "sample_size": 64},
}


def task_tensors(
    bench: Benchmark, task: str, split: str, size: int, recipe: str, results: Path
) -> tuple[Tensor, Tensor]:
    """Normalised float images and labels of one task's split, transformed as the harness evaluates."""
    data = eval_split(bench, task, split, size, recipe, results)
    if data.labels is None:
        raise VddError(f"task {task}: the {split} split has no labels (pass --test-labels)")
    return augment_batch(data.images, data.augment, train=False), torch.from_numpy(data.labels)


def _dataset(images: Tensor, labels: Tensor, task_label: int) -> Any:
    from avalanche.benchmarks.utils import _make_taskaware_tensor_classification_dataset

    return _make_taskaware_tensor_classification_dataset(
        images, labels, task_labels=task_label, targets=labels.tolist()
    )


def _stream_benchmark(**streams: list[Any]) -> Any:
    """Avalanche's new benchmark API, with the task labels and class timeline its strategies read."""
    from avalanche.benchmarks.scenarios import benchmark_from_datasets, with_task_labels
    from avalanche.benchmarks.scenarios.supervised import with_classes_timeline

    return with_classes_timeline(with_task_labels(benchmark_from_datasets(**streams)))


def to_avalanche(
    bench: Benchmark,
    tasks: list[str] | None = None,
    size: int | None = None,
    recipe: str = "residual_adapters",
    results: Path = Path("results"),
) -> Any:
    """A task-incremental Avalanche benchmark: experience k is task k of `tasks` (default: all, in order)."""
    tasks = list(tasks or bench.task_names())
    size = size or default_resolution(bench)
    streams: dict[str, list[Any]] = {"train": [], "test": []}
    for label, task in enumerate(tasks):
        for split, stream in streams.items():
            stream.append(_dataset(*task_tensors(bench, task, split, size, recipe, Path(results)), label))
    return _stream_benchmark(**streams)


def _avalanche_net(features: nn.Module, feature_dim: int) -> nn.Module:
    from avalanche.models import MultiTaskModule

    class AvalancheNet(MultiTaskModule):
        """The backbone's features and one linear head per task (task label = position in the chain)."""

        def __init__(self) -> None:
            super().__init__()
            self.features = features
            self.heads = nn.ModuleList()
            self.active = 0
            self.max_class_label = 0

        def add_head(self, classes: int) -> None:
            self.heads.append(nn.Linear(feature_dim, classes))
            self.max_class_label = max(self.max_class_label, classes)

        def forward_single_task(self, x: Tensor, task_label: int) -> Tensor:
            return self.heads[task_label](self.features(x))

        def forward(self, x: Tensor, task_labels: Tensor | int | None = None) -> Tensor:
            return super().forward(x, self.active if task_labels is None else task_labels)

    return AvalancheNet()


class AvalancheStrategy(SequentialMethod):
    """Base of the `avalanche:<name>` methods; `strategy` names the class in `avalanche.training`."""

    strategy: ClassVar[str] = ""
    uses_pretrained: ClassVar[bool] = True

    def skeleton(self, spec: BackboneSpec, structure: dict[str, Any]) -> nn.Module:
        backbone = build_backbone(spec, 1)
        model = _avalanche_net(_features(backbone), backbone.feature_dim)
        for classes in structure["classes"]:
            model.add_head(classes)
        model.avalanche_tasks = list(structure["tasks"])
        return model

    def build(self, ctx: TaskContext) -> nn.Module:
        previous = self.load_previous(ctx)
        if previous is None:
            backbone = pretrained_backbone(ctx)
            model = _avalanche_net(_features(backbone), backbone.feature_dim)
            model.avalanche_tasks = [ctx.task]
        else:
            model, structure = previous
            model.avalanche_tasks = [*structure["tasks"], ctx.task]
        model.add_head(ctx.num_classes)
        model.active = len(model.avalanche_tasks) - 1
        return model

    def structure(self, model: nn.Module) -> dict[str, Any]:
        return {"tasks": list(model.avalanche_tasks), "classes": [h.out_features for h in model.heads]}

    def select_task(self, model: nn.Module, task: str) -> nn.Module:
        model.active = model.avalanche_tasks.index(task)
        return model

    def execute(
        self,
        request: RunRequest,
        results: Path,
        device: Device,
        progress: bool,
        on_epoch_end: Callable[[int, int], None] | None,
    ) -> dict[str, Any]:
        """One experience in Avalanche's loop, then the harness's evaluation, accounting and record."""
        import avalanche.training
        from avalanche.training.plugins import EvaluationPlugin

        store, config = RunStore(results), request.config
        existing = store.record(config.run_id)
        if existing is not None:
            return existing
        for name, needed in request.inputs.items():
            if not store.is_done(needed.config.run_id):
                raise VddError(f"{config.run_id}: its {name} step is not finished: run the chain in order")
        folder = store.start(config)
        bench = Benchmark.open(request.root, request.test_labels)
        _, pretrained, _ = load_checkpoint(request.backbone_checkpoint)
        hp = config.hparams
        ctx = TaskContext(
            task=config.task,
            num_classes=bench.tasks[config.task].num_classes,
            spec=BackboneSpec.from_dict({k: v for k, v in config.backbone.items() if k != "checkpoint"}),
            pretrained=pretrained,
            pretrained_classes=pretrained["classifier.weight"].shape[0],
            hparams=hp,
            input_size=0,
            inputs={name: store.run_dir(run_id) for name, run_id in config.inputs.items()},
        )
        torch.manual_seed(config.seed)
        model = self.build(ctx)
        label = len(model.avalanche_tasks) - 1
        images, labels = task_tensors(bench, config.task, "train", config.resolution, config.recipe, results)
        experience = _dataset(images, labels, label)
        strategy = getattr(avalanche.training, self.strategy)(
            model=model,
            optimizer=torch.optim.SGD(
                model.parameters(), lr=hp["lr"], momentum=hp["momentum"], weight_decay=hp["weight_decay"]
            ),
            criterion=nn.CrossEntropyLoss(),
            train_mb_size=hp["batch_size"],
            train_epochs=hp["epochs"],
            eval_mb_size=256,
            device=device.torch_device,
            evaluator=EvaluationPlugin(),
            **{**STRATEGY_ARGS.get(self.strategy, {}), **json.loads(hp["strategy_args"] or "{}")},
        )
        plugins = [p for p in strategy.plugins if not isinstance(p, EvaluationPlugin)]
        if PREVIOUS in ctx.inputs:
            saved = torch.load(ctx.inputs[PREVIOUS] / STATE_FILE, map_location="cpu", weights_only=False)
            for plugin, state in zip(plugins, saved, strict=True):
                plugin.__dict__.update(state)
        started = time.perf_counter()
        strategy.train(_stream_benchmark(train=[experience]).train_stream[0])
        train_seconds = time.perf_counter() - started
        torch.save([dict(p.__dict__) for p in plugins], folder / STATE_FILE)

        cpu_model = model.cpu().float().eval()
        model.active = label
        metrics = {}
        for split in ("val", "test"):
            data = eval_split(bench, config.task, split, config.resolution, config.recipe, results)
            pred = predict(cpu_model, data.images, data.augment, device)
            metrics[f"{split}_acc"] = (
                float(100 * np.mean(pred == data.labels)) if data.labels is not None else None
            )
        crop = images.shape[-1]
        accounting = {
            **parameter_split(cpu_model, pretrained),
            "macs": count_macs(cpu_model, crop),
            "input_size": crop,
        }
        save_state(
            folder / "model.pt",
            {"format": MODEL_FORMAT, "structure": self.structure(cpu_model), "model": cpu_model.state_dict()},
        )
        record = {
            "benchmark": {
                "kind": bench.kind,
                "name": bench.name,
                "fingerprint": bench.fingerprint,
                "tasks": bench.task_names(),
            },
            "task": config.task,
            "method": config.method,
            "num_classes": ctx.num_classes,
            "official_baseline_acc": None,
            "metrics": metrics,
            "method_report": {"loop": "avalanche", "strategy": self.strategy, "task_label": label},
            "history": [],
            "accounting": accounting,
            "timing": {
                "train_s": round(train_seconds, 3),
                "device": device.describe(),
                "torch": torch.__version__,
                "python": platform.python_version(),
            },
        }
        store.finish(config, record)
        return store.record(config.run_id)


def _features(backbone: nn.Module) -> nn.Module:
    backbone.classifier = nn.Identity()
    return backbone


def register_strategy(name: str) -> str:
    """Register `avalanche:<name>` for the class `avalanche.training.<name>`; returns the method name."""
    import avalanche.training

    method = f"avalanche:{name}"
    if method in METHODS:
        return method
    if not isinstance(getattr(avalanche.training, name, None), type):
        raise VddError(f"avalanche.training has no strategy {name!r}")
    defaults = {
        "epochs": 10,
        "lr": 0.01,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "batch_size": 128,
        "strategy_args": "",
    }
    cls = type(
        f"Avalanche{name}", (AvalancheStrategy,), {"strategy": name, "defaults": defaults, "name": method}
    )
    register_method(method)(cls)
    return method
