"""The method interface: a method owns the model surgery, the harness owns the loop and the accounting.

A method says how to build its model from the pre-trained backbone, which parameters train with which
optimizer settings (`param_groups`), its loss, and its training phases. Everything measured (accuracy,
score, parameters, FLOPs) is computed by the harness from the model the method returns, so numbers stay
comparable across methods. Adding a method is one file in `methods/` with a class decorated by
`@register_method("name")`; packages outside the project register through the `vdd_bench.methods`
entry-point group.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from vdd_bench.accounting import parameter_split
from vdd_bench.backbones import Backbone, BackboneSpec, build_backbone
from vdd_bench.config import Planner, RunRequest, TaskPlanner
from vdd_bench.errors import VddError
from vdd_bench.record import RunRecord
from vdd_bench.registry import Registry
from vdd_bench.search import Distribution, LogUniform

METHODS: Registry[type[Method]] = Registry("method", "vdd_bench.methods", "vdd_bench.methods")
register_method = METHODS.register

# The residual-adapters recipe (Rebuffi et al., srebuffi/residual_adapters) shared by the baselines: SGD,
# momentum 0.9, lr 0.1, 120 epochs with the lr divided by 10 at epochs 80 and 100, batch 128, and weight
# decay 1e-4 on every parameter, which is what that code applies with the README's flags (its optimizer
# overwrites the decay per 4-D tensor and keeps the last value for the tensors after it, so `--wd 5.` never
# takes effect; docs/fidelity.md). The flags read literally (5e-4) are each method's `readme-flags` preset.
SGD_RECIPE: dict[str, Any] = {
    "epochs": 120,
    "lr": 0.1,
    "optimizer": "sgd",
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "milestones": [80 / 120, 100 / 120],
    "gamma": 0.1,
    "batch_size": 128,
}
README_FLAGS = {"weight_decay": 5e-4}  # the residual-adapters README's `--wd 5.`, as it reads
# What a search varies in that recipe (`vdd sweep --trials`): the lr over two decades either side of the
# SGD baselines' usual values, the weight decay around the recipe's 1e-4.
SGD_SEARCH: dict[str, Distribution] = {"lr": LogUniform(1e-3, 0.3), "weight_decay": LogUniform(1e-5, 1e-3)}


@dataclass(frozen=True)
class Phase:
    """One stage of training with its own optimizer; milestones are fractions of the phase's epochs."""

    name: str
    epochs: int
    lr: float
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[float, ...] = ()
    gamma: float = 0.1
    batch_size: int = 128

    @classmethod
    def of(
        cls, name: str, hp: dict[str, Any], epochs: int, lr: float, milestones: list[float] | None = None
    ) -> Phase:
        """A phase with the optimizer settings a method's hyper-parameters share (`optimizer`, `momentum`,
        `weight_decay`, `gamma`, `batch_size`, and `milestones` unless given)."""
        return cls(
            name=name,
            epochs=epochs,
            lr=lr,
            optimizer=hp.get("optimizer", cls.optimizer),
            momentum=hp["momentum"],
            weight_decay=hp["weight_decay"],
            milestones=tuple(hp["milestones"] if milestones is None else milestones),
            gamma=hp["gamma"],
            batch_size=hp["batch_size"],
        )

    def lr_at(self, epoch: int) -> float:
        passed = sum(1 for m in self.milestones if epoch >= round(m * self.epochs))
        return self.lr * self.gamma**passed


@dataclass
class TaskContext:
    task: str
    num_classes: int
    spec: BackboneSpec
    pretrained: dict[str, torch.Tensor] | None  # state dict of the pre-trained backbone
    pretrained_classes: int
    hparams: dict[str, Any]
    input_size: int
    inputs: dict[str, Path] = field(default_factory=dict)  # name -> folder of a finished run this one reads


PRESET = "preset"  # the override key that names a preset


def resolve_hparams(
    defaults: dict[str, Any],
    overrides: dict[str, Any],
    method: str,
    presets: dict[str, dict[str, Any]] | None = None,
    converters: dict[str, Callable[[Any], Any]] | None = None,
) -> dict[str, Any]:
    """Defaults, then the named preset's values (`overrides["preset"]`), then the other overrides.

    Unknown keys and values of the wrong type are refused; a value is brought to the type of its default,
    or through the method's converter for keys that take more than one plain type. The preset's name is not
    kept: a run is a function of the values, so the same values reached another way are the same run."""
    overrides = dict(overrides)
    layers = [overrides]
    if PRESET in overrides:
        name, known = overrides.pop(PRESET), presets or {}
        if name not in known:
            choices = ", ".join(sorted(known)) or "none"
            raise VddError(f"unknown preset {name!r} for method {method}: its presets are {choices}")
        layers.insert(0, known[name])
    resolved = dict(defaults)
    for layer in layers:
        for key, value in layer.items():
            if key not in defaults:
                raise VddError(
                    f"unknown hyper-parameter {key!r} for method {method}: known are {sorted(defaults)}"
                )
            convert = (converters or {}).get(key)
            resolved[key] = convert(value) if convert else coerce(value, defaults[key], f"{method}.{key}")
    for key, value in resolved.items():
        check_range(key, value, f"{method}.{key}")
    return resolved


# The range of each shared hyper-parameter, also under a prefix (teacher_lr, retrain_epochs, warmup_lr...):
# (test, what the value must be). A method's own plain numbers must at least be finite.
_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "lr": (lambda v: v > 0, "a positive number"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "weight_decay": (lambda v: v >= 0, "zero or positive"),
    "gamma": (lambda v: 0 < v <= 1, "in (0, 1] (the factor the lr is multiplied by at a milestone)"),
    "batch_size": (lambda v: v >= 1, "at least 1"),
    "milestones": (
        lambda v: all(0 < m <= 1 for m in v) and list(v) == sorted(v),
        "increasing fractions of the phase in (0, 1], e.g. 0.5,0.75",
    ),
}


def check_range(key: str, value: Any, name: str) -> None:
    """Refuse a value a run could not train with sensibly, before it starts: NaN or infinity anywhere, a
    phase's `epochs` under 1 (another phase's `*_epochs` under 0), and the ranges of `_RANGES`."""
    numbers = value if isinstance(value, list) else [value]
    if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
        raise VddError(f"bad value {value!r} for {name}: it must be a finite number")
    if key == "epochs" or key.endswith("_epochs"):
        least = 1 if key == "epochs" else 0
        if isinstance(value, int) and not isinstance(value, bool) and value < least:
            raise VddError(f"bad value {value!r} for {name}: it must be at least {least}")
        return
    rule = next((r for suffix, r in _RANGES.items() if key == suffix or key.endswith(f"_{suffix}")), None)
    if rule is None:
        return
    if isinstance(value, (int, float, list)) and not isinstance(value, bool) and not rule[0](value):
        raise VddError(f"bad value {value!r} for {name}: it must be {rule[1]}")


def coerce(value: Any, like: Any, name: str) -> Any:
    """Bring a value (often a string from the command line) to the type of the default it replaces."""
    try:
        if isinstance(like, bool):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if isinstance(like, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if isinstance(like, float):
            return float(value)
        if isinstance(like, list):
            items = value.split(",") if isinstance(value, str) else list(value)
            item_like = like[0] if like else 0.0
            return [coerce(v, item_like, name) for v in items if v != ""]
        if isinstance(like, str):
            if not isinstance(value, str):
                raise ValueError(value)
            return value
    except (TypeError, ValueError):
        raise VddError(f"bad value {value!r} for {name}: expected a {type(like).__name__}") from None
    return value


class Method:
    """Base class. The default is plain supervised training of every trainable parameter."""

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = SGD_RECIPE
    # Named sets of hyper-parameters (e.g. the authors' script a default comes from, or a paper's values);
    # `--set preset=NAME` applies one under the user's other overrides; `vdd methods --preset` lists them.
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    # The hyper-parameters a search may vary and how (`vdd_bench.search`); trial 0 of a search is `defaults`.
    search_space: ClassVar[dict[str, Distribution]] = {}
    # Keys whose value is not one plain type: a function that checks and normalises the value.
    converters: ClassVar[dict[str, Callable[[Any], Any]]] = {}
    # The hyper-parameters that are lengths of the training schedule in epochs: `--epoch-scale` scales
    # these (and nothing else).
    schedule_lengths: ClassVar[tuple[str, ...]] = ("epochs",)
    uses_pretrained: ClassVar[bool] = True
    # True for a method whose one network learns the tasks one after another (`continual.SequentialMethod`).
    sequential: ClassVar[bool] = False
    # False for the internal steps of another method (e.g. NetTailor's student and candidates): sweeps of
    # "all" methods skip them and the leaderboard hides their runs.
    listed: ClassVar[bool] = True

    @classmethod
    def resolve(cls, overrides: dict[str, Any], name: str) -> dict[str, Any]:
        """This method's hyper-parameters with `overrides` (and the preset they name) applied."""
        return resolve_hparams(cls.defaults, overrides, name, cls.presets, cls.converters)

    @classmethod
    def fixed_by(cls, overrides: dict[str, Any]) -> set[str]:
        """The keys `overrides` sets, itself or through the preset it names: a search leaves them as set."""
        return set(overrides) | set(cls.presets.get(overrides.get(PRESET), {}))

    @classmethod
    def scaled(cls, hparams: dict[str, Any], epoch_scale: float) -> dict[str, Any]:
        """`hparams` with each schedule length multiplied by `epoch_scale` and rounded; a phase keeps at
        least one epoch, and one of 0 epochs (no warm-up) stays 0."""
        if epoch_scale == 1.0:
            return hparams
        return {
            k: max(1, round(v * epoch_scale)) if k in cls.schedule_lengths and v > 0 else v
            for k, v in hparams.items()
        }

    def dependencies(self, hparams: dict[str, Any], plan: Planner) -> dict[str, RunRequest]:
        """Runs this one reads (e.g. a fine-tuned teacher), planned with `plan(method, overrides)` on the same
        benchmark, task, backbone, seed and protocol (`config.Planner`). They run first (locally, or as SLURM
        dependencies) and their folders reach `build` as `ctx.inputs[name]`; their ids are part of this
        run's config."""
        return {}

    def plan_runs(self, tasks: list[str], plan: TaskPlanner) -> list[RunRequest]:
        """The runs that learn `tasks` for one seed: by default one independent run per task; a sequential
        method plans a chain (`continual.SequentialMethod`)."""
        return [plan(task) for task in tasks]

    def execute_run(
        self, request: RunRequest, results: Path, device: Any, progress: bool, on_epoch_end: Any
    ) -> RunRecord | None:
        """Train, evaluate and record a run in the method's own loop and return its record; None (the
        default) lets the harness's engine train it. The Avalanche bridge trains in Avalanche's loop."""
        return None

    def after_run(self, request: RunRequest, results: Path, device: Any) -> None:
        """Work on a finished run before it counts as complete (a chain step's accuracy-matrix row)."""

    def complete(self, run_dir: Path) -> bool:
        """Whether the done run in `run_dir` has what `after_run` adds (launchers redo `after_run` if not)."""
        return True

    def serving_runs(
        self, records: list[RunRecord], tasks: list[str]
    ) -> tuple[list[RunRecord], RunRecord | None]:
        """The runs a deployment of this method reads (`vdd export`), one per task in `tasks` order, and the
        run whose one network serves them all; by default each task has its own network (None)."""
        by_task: dict[str, RunRecord] = {}
        for record in records:
            by_task.setdefault(record.task, record)
        return [by_task[t] for t in tasks if t in by_task], None

    def build(self, ctx: TaskContext) -> nn.Module:
        raise NotImplementedError

    def phases(self, ctx: TaskContext) -> list[Phase]:
        return [Phase.of("train", ctx.hparams, ctx.hparams["epochs"], ctx.hparams["lr"])]

    def param_groups(self, model: nn.Module, phase: Phase, ctx: TaskContext) -> list[dict[str, Any]]:
        """Groups for the optimizer; a group may set its own "lr" / "weight_decay", else the phase's apply."""
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    def train_mode(self, model: nn.Module) -> None:
        model.train()

    def loss(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, ctx: TaskContext
    ) -> torch.Tensor:
        return F.cross_entropy(model(images), labels)

    def end_phase(self, model: nn.Module, phase: Phase, ctx: TaskContext) -> nn.Module:
        """Surgery between phases (pruning, ...); the returned model continues training."""
        return model

    def structure(self, model: nn.Module) -> dict[str, Any]:
        """What `restore_structure` needs to rebuild a model changed by surgery (JSON-safe)."""
        return {}

    def restore_structure(self, model: nn.Module, structure: dict[str, Any], ctx: TaskContext) -> nn.Module:
        return model

    def inference_model(self, ctx: TaskContext, structure: dict[str, Any]) -> nn.Module:
        """An untrained model of a finished run's `structure`, for its saved weights to be loaded into
        (`vdd export` bundles). It must not read `ctx.inputs`: a bundle has no run folders. The default
        builds the model and restores the structure; a method whose `build` reads other runs overrides it."""
        return self.restore_structure(self.build(ctx), structure, ctx)

    def account(self, model: nn.Module, ctx: TaskContext) -> dict[str, Any]:
        """Parameters and storage of the task's network; by default decided by content (`parameter_split`).
        A method whose stored model holds tensors in another form than it needs per task overrides this."""
        return parameter_split(model, ctx.pretrained or {})

    def measure(
        self, model: nn.Module, ctx: TaskContext, test_images: Callable[[], Iterator[torch.Tensor]]
    ) -> dict[str, Any]:
        """Facts the trained network shows on the test images (JSON-safe; they join `report`'s in the record),
        such as how a routing network (SpotTune) sends them. ``test_images()`` yields the test split in the
        test transform, in batches on the CPU; it is read only when called. None by default."""
        return {}

    def report(self, model: nn.Module, ctx: TaskContext) -> dict[str, Any]:
        """Method-specific facts for the record (e.g. the kept architecture), JSON-safe. Only what the run
        computes: two runs of the same config give the same report."""
        return {}

    def timings(self, model: nn.Module, ctx: TaskContext) -> dict[str, Any]:
        """Method-specific wall-clock measurements (e.g. a speed-up), JSON-safe; they go to the record's
        `timing` section with the training and evaluation times, apart from what the run computes."""
        return {}


def pretrained_network(ctx: TaskContext) -> Backbone:
    """The pre-trained network with its own classifier (the source task's)."""
    if ctx.pretrained is None:
        raise VddError(
            f"task {ctx.task}: this method needs a pre-trained backbone; pass --backbone-checkpoint"
        )
    model = build_backbone(ctx.spec, ctx.pretrained_classes)
    model.load_state_dict(ctx.pretrained)
    return model


def source_task_network(ctx: TaskContext, key: str) -> Backbone:
    """The pre-trained network with its own classifier, for a run whose hyper-parameter `key` says its task
    is the backbone's source task (refused when the class counts disagree)."""
    if ctx.num_classes != ctx.pretrained_classes:
        raise VddError(
            f"{key}: task {ctx.task} has {ctx.num_classes} classes, the backbone's source task "
            f"{ctx.pretrained_classes}: it is not the source task, set {key}=false"
        )
    return pretrained_network(ctx)


def pretrained_backbone(ctx: TaskContext) -> Backbone:
    """The pre-trained network with a fresh classifier for the task."""
    model = pretrained_network(ctx)
    model.reset_classifier(ctx.num_classes)
    return model


def get_method(name: str) -> Method:
    return METHODS.get(name)()
