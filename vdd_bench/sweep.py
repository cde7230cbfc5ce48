"""A sweep: methods x tasks x seeds on one benchmark, read from a YAML file or the command line."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vdd_bench.backbones import BackboneSpec
from vdd_bench.benchmark import Benchmark
from vdd_bench.config import RunRequest, RunSettings, read_yaml
from vdd_bench.errors import VddError
from vdd_bench.method import METHODS, PRESET, get_method
from vdd_bench.runner import task_planner
from vdd_bench.search import free_keys


@dataclass
class SweepSpec:
    benchmark: str
    methods: list[str] | str = "all"
    tasks: list[str] | str = "all"
    seeds: list[int] = field(default_factory=lambda: [0])
    backbone_checkpoint: str | None = None
    backbone: dict[str, Any] | None = (
        None  # spec for methods without pre-training when no checkpoint is given
    )
    test_labels: str | None = None
    resolution: int | None = None
    recipe: str = "residual_adapters"
    protocol: str = "train"
    epoch_scale: float = 1.0
    hparams: dict[str, dict[str, Any]] = field(default_factory=dict)  # per method; "all" for every method
    search: dict[str, Any] = field(default_factory=dict)  # {trials: N}: trials 0..N-1 of every method

    @classmethod
    def from_mapping(cls, data: Any, source: str) -> SweepSpec:
        """Validate a parsed sweep file: unknown keys and wrong types are refused with the file named."""
        if not isinstance(data, dict):
            raise VddError(f"{source}: a sweep file must be a mapping of keys to values")
        known = {f.name: f for f in fields(cls)}
        for key in data:
            if key not in known:
                raise VddError(f"{source}: unknown key {key!r}; known keys are {', '.join(sorted(known))}")
        checks = {
            "benchmark": (str,),
            "methods": (list, str),
            "tasks": (list, str),
            "seeds": (list,),
            "backbone_checkpoint": (str, type(None)),
            "backbone": (dict, type(None)),
            "test_labels": (str, type(None)),
            "resolution": (int, type(None)),
            "recipe": (str,),
            "protocol": (str,),
            "epoch_scale": (int, float),
            "hparams": (dict,),
            "search": (dict,),
        }
        for key, value in data.items():
            if not isinstance(value, checks[key]) or isinstance(value, bool):
                expected = " or ".join(t.__name__ for t in checks[key])
                raise VddError(f"{source}: {key} must be {expected}, got {value!r}")
        if "seeds" in data and not all(isinstance(s, int) and not isinstance(s, bool) for s in data["seeds"]):
            raise VddError(f"{source}: seeds must be a list of integers, got {data['seeds']!r}")
        if "benchmark" not in data:
            raise VddError(f"{source}: the key 'benchmark' (a decathlon-format root) is required")
        for method, values in data.get("hparams", {}).items():
            if not isinstance(values, dict):
                raise VddError(f"{source}: hparams.{method} must be a mapping of hyper-parameters to values")
        search = data.get("search", {})
        if set(search) - {"trials"}:
            raise VddError(
                f"{source}: search takes one key, trials (how many per method and task): {search!r}"
            )
        trials = search.get("trials", 1)
        if not isinstance(trials, int) or isinstance(trials, bool) or trials < 1:
            raise VddError(f"{source}: search.trials must be a whole number of at least 1, got {trials!r}")
        return cls(**data)

    @property
    def trials(self) -> int:
        return self.search.get("trials", 1)

    @classmethod
    def from_file(cls, path: Path) -> SweepSpec:
        return cls.from_mapping(read_yaml(path, "sweep file"), str(path))

    def method_names(self) -> list[str]:
        if self.methods == "all":
            return [name for name in METHODS.names() if METHODS.get(name).listed]
        return [self.methods] if isinstance(self.methods, str) else list(self.methods)

    def overrides_for(self, method: str) -> dict[str, Any]:
        """The "all" section applies the keys a method knows; a key that no method of the sweep knows is
        an error."""
        common = self.hparams.get("all", {})

        def knows(name: str, key: str, value: Any) -> bool:
            cls = METHODS.get(name)
            return value in cls.presets if key == PRESET else key in cls.defaults

        for key, value in common.items():
            if not any(knows(m, key, value) for m in self.method_names()):
                what = f"preset {value!r} is one" if key == PRESET else f"{key} is a hyper-parameter"
                raise VddError(f"hparams.all.{key}: {what} of none of the sweep's methods")
        for name in self.hparams:
            if name != "all" and name not in self.method_names():
                raise VddError(
                    f"hparams.{name}: {name} is not one of the sweep's methods {self.method_names()}"
                )
        shared = {k: v for k, v in common.items() if knows(method, k, v)}
        return {**shared, **self.hparams.get(method, {})}

    def settings(self, base: Path | None = None) -> RunSettings:
        """The run settings the file gives, its paths relative to `base` (default: the current folder)."""
        base = base or Path.cwd()
        return RunSettings(
            root=base / self.benchmark,
            test_labels=base / self.test_labels if self.test_labels else None,
            backbone_checkpoint=base / self.backbone_checkpoint if self.backbone_checkpoint else None,
            backbone=BackboneSpec.from_dict(self.backbone) if self.backbone else None,
            resolution=self.resolution,
            recipe=self.recipe,
            protocol=self.protocol,
            epoch_scale=self.epoch_scale,
        )

    def task_names(self, bench: Benchmark) -> list[str]:
        if self.tasks == "all":
            return bench.task_names()
        return [self.tasks] if isinstance(self.tasks, str) else list(self.tasks)

    def expand(self, base: Path | None = None) -> list[RunRequest]:
        """Every run of the sweep, planned (ids computed, inputs checked) but not executed: per method, seed
        and trial (trial 0 only for a method whose searchable keys the sweep fixes all of)."""
        settings = self.settings(base)
        tasks = self.task_names(settings.benchmark)
        requests = []
        for method in self.method_names():
            overrides = self.overrides_for(method)
            method_cls = METHODS.get(method)
            trials = self.trials if free_keys(method_cls.search_space, method_cls.fixed_by(overrides)) else 1
            chain = tasks if method_cls.sequential else None  # one chain over the tasks, in their order
            for trial in range(trials):
                for seed in self.seeds:
                    planner = task_planner(settings, method, overrides, seed, trial, chain)
                    requests += get_method(method).plan_runs(tasks, planner)
        return requests
