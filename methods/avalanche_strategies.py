"""The Avalanche bridge, a family of methods: `avalanche:<Strategy>` names resolve here (the prefix is
registered below). avalanche-lib is imported only inside these functions: it takes seconds to import.

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
   (`avalanche_state.pt`), since Avalanche's own checkpointing fails to pickle under recent torch. The file
   holds plain data only and loads with `weights_only=True` (`encode_state`): a network a plugin holds is
   the previous step's model and is restored from its `model.pt`; a strategy whose state holds anything
   else (Replay's buffer of datasets) is refused with an error rather than pickled.

Limits: Avalanche's PackNet refuses BatchNorm and cannot wrap these ResNets (use the harness's `packnet`);
its stream accuracy weighs tasks by samples, the harness reports plain means over tasks; epoch-end
checkpoints happen inside Avalanche's loop only, so a killed step restarts its experience.
"""

from __future__ import annotations

import copy
import importlib
import json
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from vdd_bench.tasks.generic import native_resolution

from vdd_bench.augment import augment_batch
from vdd_bench.backbones import BackboneSpec, build_backbone
from vdd_bench.benchmark import Benchmark
from vdd_bench.chains import PREVIOUS
from vdd_bench.config import RunRequest
from vdd_bench.device import Device
from vdd_bench.errors import VddError
from vdd_bench.method import METHODS, TaskContext, pretrained_backbone, register_method
from vdd_bench.record import RunRecord
from vdd_bench.runner import finish_run, open_run
from vdd_bench.safeload import load_tensors
from vdd_bench.sequential import SequentialMethod, eval_split
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
    size = size or native_resolution(bench)
    streams: dict[str, list[Any]] = {"train": [], "test": []}
    for label, task in enumerate(tasks):
        for split, stream in streams.items():
            stream.append(_dataset(*task_tensors(bench, task, split, size, recipe, Path(results)), label))
    return _stream_benchmark(**streams)


_ACTIVE = object()  # AvalancheNet.forward called without task labels


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

        def forward(self, x: Tensor, task_labels: Any = _ACTIVE) -> Any:
            """`model(x)` (the harness): the active task's head; Avalanche's `model(x, None)`: every head."""
            return super().forward(x, self.active if task_labels is _ACTIVE else task_labels)

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
        model.known_train_tasks_labels = set(range(len(model.avalanche_tasks)))  # for "every head"
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

    def report(self, model: nn.Module, ctx: TaskContext) -> dict[str, Any]:
        return {"loop": "avalanche", "strategy": self.strategy, "task_label": model.active}

    def execute_run(
        self,
        request: RunRequest,
        results: Path,
        device: Device,
        progress: bool,
        on_epoch_end: Callable[[int, int], None] | None,
    ) -> RunRecord:
        """One experience in Avalanche's loop, then the runner's evaluation, accounting and record."""
        import avalanche.training
        from avalanche.training.plugins import EvaluationPlugin

        config = request.config
        existing = RunStore(results).record(config.run_id)
        if existing is not None:
            return existing
        run = open_run(request, Path(results))
        hp = config.hparams
        torch.manual_seed(config.seed)
        model = self.build(run.ctx)
        previous = self.load_previous(run.ctx)
        images, labels = task_tensors(
            run.bench, config.task, "train", config.resolution, config.recipe, Path(results)
        )
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
        if previous is not None:
            saved = load_tensors(run.ctx.inputs[PREVIOUS] / STATE_FILE, "Avalanche plugin state")
            for plugin, state in zip(plugins, saved, strict=True):
                plugin.__dict__.update(decode_state(state, previous[0].to(device.torch_device)))
        started = time.perf_counter()
        strategy.train(_stream_benchmark(train=[_dataset(images, labels, model.active)]).train_stream[0])
        train_seconds = time.perf_counter() - started
        torch.save([encode_state(dict(p.__dict__), self.strategy) for p in plugins], run.folder / STATE_FILE)
        return finish_run(run, model.eval(), device, train_seconds, [])


_MODEL = "__previous_model__"
_FACTORIES: dict[str, type] = {"dict": dict, "list": list, "set": set}


def encode_state(value: Any, strategy: str) -> Any:
    """A plugin's state as plain data that loads with `weights_only=True`: tensors, numbers, strings and
    tagged containers. A network becomes a marker (what a plugin holds is the previous step's model, restored
    from that step's `model.pt`), an Avalanche helper object its class name and encoded attributes."""
    from avalanche.training.utils import ParamData

    def encode(item: Any) -> Any:
        return encode_state(item, strategy)

    if value is None or isinstance(value, (bool, int, float, str, Tensor)):
        return value
    if isinstance(value, nn.Module):
        return _MODEL
    if isinstance(value, torch.Size):
        return {"__size__": list(value)}
    if isinstance(value, torch.device):
        return {"__device__": str(value)}
    if isinstance(value, ParamData):
        return {"__param__": {"name": value.name, "shape": list(value.shape), "data": value.data}}
    if isinstance(value, defaultdict) and value.default_factory in _FACTORIES.values():
        factory = value.default_factory.__name__
        return {"__defaultdict__": factory, "items": {k: encode(v) for k, v in value.items()}}
    if isinstance(value, dict):
        return {"__dict__": {k: encode(v) for k, v in value.items()}}
    if isinstance(value, (list, tuple, set, frozenset)):
        return {f"__{type(value).__name__}__": [encode(v) for v in value]}
    cls = type(value)
    if cls.__module__.startswith("avalanche.") and hasattr(value, "__dict__"):
        return {"__object__": f"{cls.__module__}:{cls.__qualname__}", "state": encode(vars(value))}
    raise VddError(
        f"avalanche:{strategy}: its plugin state holds a {cls.__module__}.{cls.__qualname__}, which the "
        "harness cannot store safely between steps: use a strategy whose state is tensors (EWC, SI, MAS, LwF)"
    )


_PLAIN_TAGS: dict[str, Callable[[Any], Any]] = {"__size__": torch.Size, "__device__": torch.device}


def decode_state(value: Any, previous_model: nn.Module) -> Any:
    """The inverse of `encode_state`; only classes of Avalanche's own modules are re-created."""
    from avalanche.training.utils import ParamData

    def decode(item: Any) -> Any:
        return decode_state(item, previous_model)

    if value == _MODEL:
        return copy.deepcopy(previous_model)
    if not isinstance(value, dict):
        return value
    [(tag, content)] = [(k, v) for k, v in value.items() if k != "items" and k != "state"]
    if tag in _PLAIN_TAGS:
        return _PLAIN_TAGS[tag](content)
    if tag == "__param__":
        return ParamData(content["name"], torch.Size(content["shape"]), init_tensor=content["data"])
    if tag == "__defaultdict__":
        return defaultdict(_FACTORIES[content], {k: decode(v) for k, v in value["items"].items()})
    if tag == "__dict__":
        return {k: decode(v) for k, v in content.items()}
    if tag in ("__list__", "__tuple__", "__set__", "__frozenset__"):
        return {"__list__": list, "__tuple__": tuple, "__set__": set, "__frozenset__": frozenset}[tag](
            decode(v) for v in content
        )
    if tag == "__object__":
        obj = object.__new__(_avalanche_class(content))
        obj.__dict__.update(decode(value["state"]))
        return obj
    raise VddError(f"plugin state: unknown tag {tag!r}: the state file was written by another version")


def _avalanche_class(name: str) -> type:
    """The class `module:qualname` names, refused unless it is one of Avalanche's own modules."""
    module_name, _, qualname = name.partition(":")
    if not module_name.startswith("avalanche."):
        raise VddError(f"plugin state names {name}, not an Avalanche class: refusing it")
    cls: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        cls = getattr(cls, part)
    return cls


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


METHODS.register_prefix("avalanche:", register_strategy)
