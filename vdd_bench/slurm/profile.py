"""A SLURM profile: where and with what resources the jobs of a sweep run (YAML, checked key by key).

partition: gpu          # sbatch --partition
account: my-lab         # --account (omit or null for none)
qos: normal             # --qos
gpus: 1                 # GPUs per job (--gpus-per-node)
cpus: 8                 # CPUs per job (--cpus-per-task); jobs run torch with this many threads
memory: 32G             # --mem
time_min: 240           # time limit per job, minutes (--time)
array_parallelism: 64   # at most this many elements of one job array run at once
signal_delay_s: 120     # SIGUSR2 this long before the time limit: checkpoint and requeue
max_num_timeout: 20     # requeues after a time limit (preemptions do not count) before giving up
sbatch: {constraint: a100}   # any other sbatch flag: name (without --) -> value (true for a bare flag)
setup: ["module load cuda"]  # shell lines run in the job before python
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vdd_bench.config import read_yaml
from vdd_bench.errors import VddError

# sbatch flags the harness sets itself: a profile may not override them through `sbatch`
RESERVED = {"array", "dependency", "output", "error", "job-name", "signal", "open-mode", "wrap"}


@dataclass(frozen=True)
class SlurmProfile:
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpus: int = 0
    cpus: int = 1
    memory: str | None = None
    time_min: int = 60
    array_parallelism: int = 32
    signal_delay_s: int = 120
    max_num_timeout: int = 10
    sbatch: dict[str, Any] = field(default_factory=dict)
    setup: list[str] = field(default_factory=list)

    @classmethod
    def from_mapping(cls, data: Any, source: str) -> SlurmProfile:
        if not isinstance(data, dict):
            raise VddError(f"{source}: a SLURM profile must be a mapping of keys to values")
        checks: dict[str, tuple[type, ...]] = {
            "partition": (str, type(None)),
            "account": (str, type(None)),
            "qos": (str, type(None)),
            "gpus": (int,),
            "cpus": (int,),
            "memory": (str, int, type(None)),
            "time_min": (int,),
            "array_parallelism": (int,),
            "signal_delay_s": (int,),
            "max_num_timeout": (int,),
            "sbatch": (dict,),
            "setup": (list,),
        }
        assert set(checks) == {f.name for f in fields(cls)}
        _check_types(data, checks, source)
        _check_sbatch(data.get("sbatch", {}), source)
        if not all(isinstance(line, str) for line in data.get("setup", [])):
            raise VddError(f"{source}: setup must be a list of shell lines (strings)")
        _check_one_line(data, source)
        if isinstance(data.get("memory"), int):
            data = {**data, "memory": f"{data['memory']}M"}
        return cls(**data)

    @classmethod
    def from_file(cls, path: Path) -> SlurmProfile:
        return cls.from_mapping(read_yaml(path, "SLURM profile"), str(path))

    def executor_parameters(self) -> dict[str, Any]:
        """Parameters of submitit's SlurmExecutor.update_parameters."""
        params: dict[str, Any] = {
            "time": self.time_min,
            "cpus_per_task": self.cpus,
            "ntasks_per_node": 1,
            "array_parallelism": self.array_parallelism,
            "signal_delay_s": self.signal_delay_s,
        }
        optional = {
            "partition": self.partition,
            "account": self.account,
            "qos": self.qos,
            "mem": self.memory,
            "gpus_per_node": self.gpus or None,
        }
        params.update({k: v for k, v in optional.items() if v is not None})
        if self.setup:
            params["setup"] = list(self.setup)
        return params


def _check_types(data: dict[str, Any], checks: dict[str, tuple[type, ...]], source: str) -> None:
    """Known keys only, each of its type, counts in their ranges."""
    for key, value in data.items():
        if key not in checks:
            raise VddError(f"{source}: unknown key {key!r}; known keys are {', '.join(sorted(checks))}")
        if not isinstance(value, checks[key]) or isinstance(value, bool):
            expected = " or ".join("null" if t is type(None) else t.__name__ for t in checks[key])
            raise VddError(f"{source}: {key} must be {expected}, got {value!r}")
    for key in ("gpus", "signal_delay_s", "max_num_timeout"):
        if data.get(key, 0) < 0:
            raise VddError(f"{source}: {key} must be >= 0, got {data[key]}")
    for key in ("cpus", "time_min", "array_parallelism"):
        if data.get(key, 1) < 1:
            raise VddError(f"{source}: {key} must be >= 1, got {data[key]}")


def _check_sbatch(sbatch: dict[str, Any], source: str) -> None:
    """Extra sbatch flags: plain names the harness does not set itself, scalar values."""
    for name, value in sbatch.items():
        if isinstance(name, str) and name.replace("_", "-") in RESERVED:
            raise VddError(
                f"{source}: sbatch.{name}: a reserved flag, set by the harness itself (reserved: "
                f"{', '.join(sorted(RESERVED))}); remove it from the profile"
            )
        if not isinstance(name, str) or name.startswith("-"):
            raise VddError(f"{source}: sbatch.{name}: give the flag's name without dashes (e.g. constraint)")
        if not isinstance(value, str | int | float | bool) or value is False:
            raise VddError(f"{source}: sbatch.{name} must be a string, a number or true, got {value!r}")


def _check_one_line(data: dict[str, Any], source: str) -> None:
    """A line break in a value would start a new line of the generated sbatch script."""
    values = {k: v for k, v in data.items() if k not in ("sbatch", "setup")}
    values.update({f"sbatch.{k}": v for k, v in data.get("sbatch", {}).items()})
    values.update({f"sbatch.{k} (name)": k for k in data.get("sbatch", {})})
    for key, value in values.items():
        if isinstance(value, str) and any(c in value for c in "\r\n\0"):
            raise VddError(f"{source}: {key} holds a line break ({value!r}): give a one-line value")
