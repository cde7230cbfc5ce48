"""The semantic configuration of a run and its content-derived id.

A run is a pure function of its semantic config: what data (by content fingerprint), which task and method,
the resolved hyper-parameters, the seed and the backbone (by checkpoint content). Paths, devices and
launcher settings are not part of it, so the same run gets the same id on every machine.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from vdd_bench.benchmark import Benchmark
from vdd_bench.errors import VddError

BACKBONE_NAMES: tuple[str, ...] = ("resnet26", "resnet18", "resnet34", "resnet50")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")


def check_name(kind: str, value: str) -> str:
    """Task and method names end up in directory names: refuse anything that could escape a folder."""
    if not isinstance(value, str) or not _SAFE_NAME.fullmatch(value) or ".." in value:
        raise VddError(f"invalid {kind} name {value!r}: use letters, digits, '-', '_', '.' or ':' only")
    return value


def read_yaml(path: Path, what: str) -> Any:
    """A sweep file or SLURM profile, parsed with yaml.safe_load (plain data only, never objects); a file
    that cannot be read or parsed is refused in one line naming it and the line at fault."""
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise VddError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise VddError(f"cannot read {what} {path}: not valid YAML{where} ({problem}); fix it") from None


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class BackboneSpec:
    """Architecture of a backbone: family name, channel multiplier, and ResNet-26's two ReLU options.

    ``stem_relu``: Rebuffi et al.'s ResNet-26 has no ReLU after the stem BN; NetTailor's code adds one.
    ``head_relu``: Rebuffi et al.'s head is BN + ReLU before the pooling; NetTailor's has no ReLU there
    (``False``). NetTailor's decathlon network is ``stem_relu=True, head_relu=False``.
    """

    name: str
    width: float = 1.0
    stem_relu: bool = False
    head_relu: bool = True

    def __post_init__(self) -> None:
        if self.name not in BACKBONE_NAMES:
            raise VddError(f"unknown backbone {self.name!r}; known: {', '.join(BACKBONE_NAMES)}")
        if not (isinstance(self.width, int | float) and math.isfinite(self.width) and self.width > 0):
            raise VddError(f"backbone width must be a positive number, got {self.width!r}")
        if self.stem_relu and self.name != "resnet26":
            raise VddError(f"stem_relu is a ResNet-26 option; {self.name} always has a ReLU after its stem")
        if not self.head_relu and self.name != "resnet26":
            raise VddError(f"head_relu is a ResNet-26 option; {self.name} has no BN + ReLU head")

    def to_dict(self) -> dict:
        """As a dict; `head_relu` only when it is not the default, so that the ids of runs (which hash this
        dict) made before the option existed stay the same."""
        d = asdict(self)
        if self.head_relu:
            del d["head_relu"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> BackboneSpec:
        unknown = set(d) - {"name", "width", "stem_relu", "head_relu"}
        if unknown or "name" not in d:
            raise VddError(f"not a backbone spec: {d!r}")
        try:
            width = float(d.get("width", 1.0))
        except (TypeError, ValueError) as e:
            raise VddError(f"not a backbone spec (bad width): {d!r}") from e
        return cls(
            name=d["name"],
            width=width,
            stem_relu=bool(d.get("stem_relu", False)),
            head_relu=bool(d.get("head_relu", True)),
        )

    def __str__(self) -> str:
        relu = (", stem_relu" if self.stem_relu else "") + ("" if self.head_relu else ", no head_relu")
        return f"{self.name}(width={self.width:g}{relu})"


@dataclass(frozen=True)
class RunConfig:
    benchmark: str  # fingerprint of the benchmark's annotation files
    benchmark_kind: str  # "decathlon" | "toy" | "custom"
    task: str
    method: str
    hparams: dict[str, Any]
    backbone: dict[str, Any]  # spec dict + checkpoint fingerprint ("scratch" when none)
    resolution: int  # stored image size; the network sees the recipe's crop of it
    recipe: str = "residual_adapters"
    protocol: str = "train"  # "train": fit on train; "trainval": fit on train+val (test numbers only)
    seed: int = 0
    inputs: dict[str, str] = field(
        default_factory=dict
    )  # name -> run id of a run whose results this one reads
    extra: dict[str, Any] = field(default_factory=dict)
    trial: int = 0  # the trial of a hyper-parameter search (`vdd_bench.search`); 0: the method's defaults

    def __post_init__(self) -> None:
        check_name("task", self.task)
        check_name("method", self.method)
        if not isinstance(self.trial, int) or isinstance(self.trial, bool) or self.trial < 0:
            raise VddError(f"bad trial {self.trial!r}: a trial is a whole number, 0 for the defaults")

    def to_dict(self) -> dict[str, Any]:
        """As a dict; `trial` only when it is not 0, so that a search's trial 0 is the run of the defaults
        (the same id as before searches existed, and as a sweep without `--trials`)."""
        d = asdict(self)
        if not self.trial:
            del d["trial"]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        return cls(**data)

    def digest(self) -> str:
        return hashlib.sha256(canonical_json(self.to_dict()).encode()).hexdigest()[:12]

    @property
    def backbone_spec(self) -> BackboneSpec:
        """The architecture of the run's network (the `backbone` dict without its checkpoint fingerprint)."""
        return BackboneSpec.from_dict({k: v for k, v in self.backbone.items() if k != "checkpoint"})

    @property
    def run_id(self) -> str:
        method = self.method.replace(":", "_")
        return f"{method}--{self.task}--{self.digest()}"


@dataclass(frozen=True)
class RunRequest:
    """A semantic config plus where its inputs live on this machine (paths never enter the run id)."""

    config: RunConfig
    root: Path
    backbone_checkpoint: Path | None
    test_labels: Path | None = None
    inputs: dict[str, RunRequest] = field(default_factory=dict)  # runs to finish before this one


def closure(requests: list[RunRequest]) -> list[RunRequest]:
    """The sweep's runs and every input they read, once each, inputs before the runs that read them."""
    seen: dict[str, RunRequest] = {}

    def visit(request: RunRequest) -> None:
        if request.config.run_id in seen:
            return
        for needed in request.inputs.values():
            visit(needed)
        seen[request.config.run_id] = request

    for request in requests:
        visit(request)
    return list(seen.values())


RECIPES = ("residual_adapters", "nettailor")
PROTOCOLS = ("train", "trainval")
MIN_RESOLUTION = 8  # smaller images leave nothing for the network's strided stages


@dataclass(frozen=True)
class RunSettings:
    """What a run needs besides its method, task, hyper-parameters and seed: where the benchmark and its
    test labels are, the backbone, the stored image size, the recipe, the protocol and the epoch scale.

    Built once per command (by the shared options of run / chain / sweep / pretrain, or by a sweep file) and
    taken by every planner; the benchmark is opened once, on first use (`benchmark`)."""

    root: Path
    test_labels: Path | None = None
    backbone_checkpoint: Path | None = None
    backbone: BackboneSpec | None = None  # the architecture when no checkpoint gives it
    resolution: int | None = None  # stored image size; None: the benchmark's native one
    recipe: str = "residual_adapters"
    protocol: str = "train"
    epoch_scale: float = 1.0

    def __post_init__(self) -> None:
        if not (isinstance(self.epoch_scale, int | float) and math.isfinite(self.epoch_scale)):
            raise VddError(f"bad epoch scale {self.epoch_scale}: give a positive number (0.1: a tenth)")
        if self.epoch_scale <= 0:
            raise VddError(f"bad epoch scale {self.epoch_scale}: give a positive number (0.1: a tenth)")
        if self.resolution is not None and self.resolution < MIN_RESOLUTION:
            raise VddError(
                f"bad resolution {self.resolution}: the stored image size must be at least {MIN_RESOLUTION} "
                "px (the decathlon's is 72, the toy's 36)"
            )
        if self.protocol not in PROTOCOLS:
            raise VddError(f"unknown protocol {self.protocol!r}: use {' or '.join(PROTOCOLS)}")
        if self.recipe not in RECIPES:
            raise VddError(f"unknown recipe {self.recipe!r}: use {' or '.join(RECIPES)}")

    @classmethod
    def of(cls, bench: Benchmark, **values: Any) -> RunSettings:
        """Settings for an already opened benchmark (it is not opened again)."""
        settings = cls(Path(bench.root), bench.test_labels, **values)
        settings.__dict__["benchmark"] = bench
        return settings

    @cached_property
    def benchmark(self) -> Benchmark:
        return Benchmark.open(self.root, self.test_labels)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (for other processes) without the opened benchmark: the receiver opens its own."""
        return {k: v for k, v in self.__dict__.items() if k != "benchmark"}

    def but(self, **changes: Any) -> RunSettings:
        """A copy with other values, sharing the opened benchmark when root and labels are the same."""
        copy = replace(self, **changes)
        if "benchmark" in self.__dict__ and (copy.root, copy.test_labels) == (self.root, self.test_labels):
            copy.__dict__["benchmark"] = self.__dict__["benchmark"]
        return copy


@dataclass(frozen=True)
class Planner:
    """How a method's `dependencies` plans the runs it reads: `plan(method, overrides)` is a run on the same
    benchmark, task, backbone, seed and protocol; `plan(method, overrides, protocol="train")` one fitted
    under another protocol (e.g. a selection made on validation before a train+val refit). `protocol` and
    `spec` are those of the run being planned."""

    _plan: Callable[[str, dict[str, Any], str], RunRequest]
    protocol: str
    spec: BackboneSpec

    def __call__(self, method: str, overrides: dict[str, Any], protocol: str | None = None) -> RunRequest:
        return self._plan(method, overrides, protocol or self.protocol)


@dataclass(frozen=True)
class TaskPlanner:
    """How a method's `plan_runs` plans its runs for one seed: `plan(task)` is the method's run on `task`
    with the user's hyper-parameters (`overrides`), `plan(task, step, inputs)` one with more of them (`step`)
    and runs it reads (`inputs`). `source_task` is the task the benchmark's backbone is pre-trained on."""

    _plan: Callable[[str, dict[str, Any], dict[str, RunRequest]], RunRequest]
    source_task: str
    overrides: dict[str, Any]

    def __call__(
        self, task: str, step: dict[str, Any] | None = None, inputs: dict[str, RunRequest] | None = None
    ) -> RunRequest:
        return self._plan(task, step or {}, inputs or {})
