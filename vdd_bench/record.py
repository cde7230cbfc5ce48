"""`RunRecord`: what a finished run reports, as the runner writes it (`record.json`) and readers read it.

The leaderboard, bundles, plots, submissions, chain tables and the bench's synthetic records all read these
typed fields instead of indexing JSON by string keys. The file format is unchanged (`vdd-record/1`); fields
that older records lack have defaults, and a record missing a required field is refused naming its file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from vdd_bench.benchmark import Benchmark
from vdd_bench.config import RunConfig
from vdd_bench.errors import VddError

RECORD_FORMAT = "vdd-record/1"


@dataclass(frozen=True)
class BenchmarkInfo:
    """The benchmark a run was made on: its kind, name, fingerprint and task order."""

    kind: str
    name: str
    fingerprint: str
    tasks: list[str]

    @classmethod
    def of(cls, bench: Benchmark) -> BenchmarkInfo:
        return cls(bench.kind, bench.name, bench.fingerprint, bench.task_names())


@dataclass(frozen=True)
class Accounting:
    """Parameters and cost of the task's network (`vdd_bench.accounting`; PackNet counts its own)."""

    params_total: int
    params_shared: int
    params_task: int
    params_task_equiv: float  # task-specific storage in float32 parameters (bit masks count 1/32)
    macs: int
    task_bytes: int | None = None  # older records lack it
    input_size: int | None = None  # the crop the network sees; older records lack it


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    config: RunConfig
    benchmark: BenchmarkInfo
    num_classes: int
    metrics: dict[str, Any]  # "{split}_acc", "{split}_majority_acc", losses, ...
    accounting: Accounting
    internal: bool = False  # a method's internal step (NetTailor's student, a candidate): never a result
    chain_step: bool = False  # a step of a sequential method's chain
    official_baseline_acc: float | None = None
    method_report: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    timing: dict[str, Any] = field(default_factory=dict)
    # the keys its method's search varies (`Method.search_space`), so that the leaderboard groups a search's
    # settings without loading the method registry (and torch); older records lack it (None)
    searched: list[str] | None = None
    # Read-side only, never in record.json:
    continual: dict[str, Any] | None = None  # a chain step's accuracy on every task so far (continual.json)
    metrics_at_step: dict[str, Any] | None = None  # a chain step's own metrics, when `metrics` are its end's
    chain_end: str | None = None  # the run id of the chain's last step, when `metrics` are its network's

    @property
    def task(self) -> str:
        return self.config.task

    @property
    def method(self) -> str:
        return self.config.method

    @property
    def seed(self) -> int:
        return self.config.seed

    def accuracy(self, split: str) -> float | None:
        """The run's accuracy on `split` ("val" or "test"); None when the protocol did not measure it."""
        return self.metrics.get(f"{split}_acc")

    def to_json(self) -> dict[str, Any]:
        """The `record.json` content (the read-side fields left out)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _READ_SIDE}
        out["config"] = self.config.to_dict()
        out["benchmark"] = asdict(self.benchmark)
        out["accounting"] = {k: v for k, v in asdict(self.accounting).items() if v is not None}
        return {"format": RECORD_FORMAT, "task": self.task, "method": self.method, **out}

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str) -> RunRecord:
        """A record read from `source` (named in the error when a required field is missing); `continual`
        is the step's `continual.json`, which the store attaches."""
        try:
            return cls(
                config=RunConfig.from_dict(data["config"]),
                benchmark=BenchmarkInfo(**data["benchmark"]),
                accounting=Accounting(**data["accounting"]),
                **{k: v for k, v in data.items() if k in _PLAIN_FIELDS},
            )
        except (KeyError, TypeError) as exc:
            raise VddError(
                f"{source}: not a run record this version reads ({type(exc).__name__}: {exc}); "
                "restore it from a backup or delete the run's folder to run it again"
            ) from None


_READ_SIDE = {"continual", "metrics_at_step", "chain_end"}
_PLAIN_FIELDS = {f.name for f in fields(RunRecord)} - {"config", "benchmark", "accounting"}  # JSON as it is
