"""Minimal run records for tests that exercise the store and its readers without training."""

from __future__ import annotations

from typing import Any

from vdd_bench.config import RunConfig
from vdd_bench.record import Accounting, BenchmarkInfo, RunRecord


def make_record(config: RunConfig, metrics: dict[str, Any] | None = None, **fields: Any) -> RunRecord:
    """A complete record of `config` with the given metrics; `fields` set any other record field."""
    values: dict[str, Any] = {
        "benchmark": BenchmarkInfo(config.benchmark_kind, "bench", config.benchmark, [config.task]),
        "num_classes": 10,
        "accounting": Accounting(
            params_total=1000, params_shared=0, params_task=1000, params_task_equiv=1000.0, macs=10_000
        ),
        **fields,
    }
    return RunRecord(run_id=config.run_id, config=config, metrics=metrics or {}, **values)
