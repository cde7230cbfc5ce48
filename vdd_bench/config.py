"""The semantic configuration of a run and its content-derived id.

A run is a pure function of its semantic config: what data (by content fingerprint), which task and method,
the resolved hyper-parameters, the seed and the backbone (by checkpoint content). Paths, devices and
launcher settings are not part of it, so the same run gets the same id on every machine.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vdd_bench.errors import VddError

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

    def __post_init__(self) -> None:
        check_name("task", self.task)
        check_name("method", self.method)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        return cls(**data)

    def digest(self) -> str:
        return hashlib.sha256(canonical_json(self.to_dict()).encode()).hexdigest()[:12]

    @property
    def run_id(self) -> str:
        method = self.method.replace(":", "_")
        return f"{method}--{self.task}--{self.digest()}"
