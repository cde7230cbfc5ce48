"""`vdd bench`: the harness's speed as ratios against baselines measured in the same process.

Sections (each a list of rows with a value, its baseline and their ratio):
- ``data``: images per second of one training epoch through the harness's read path (HDF5 cache read +
  batched crop, flip and normalise) against the usual loader (PIL JPEG decode + torchvision per-image
  transforms in a DataLoader with the same number of workers) over the same images, and against copying
  the same bytes in memory (the physical limit); also the block-shuffle reader for splits beyond memory.
- ``methods``: training step time of each method relative to fine-tuning (``method_costs.py``, also run as
  ``python bench/method_costs.py``).
- ``tailored``: each NetTailor model's inference latency ratio against its fine-tuned teacher next to its
  MACs ratio (finished ``nettailor`` runs; randomly pruned students when there are none).
- ``bundle``: `vdd export` bundles of the finished runs: size against separately fine-tuned networks and
  the task-switch time.
- ``harness``: `vdd leaderboard` over 10,000 run records, a sweep dry-run of 80 runs, `import vdd_bench`.

Nothing here asserts a timing; the numbers depend on the machine and its load, which the report states.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from vdd_bench.bench.bundle import bench_bundle
from vdd_bench.bench.common import BenchOptions
from vdd_bench.bench.data import bench_data
from vdd_bench.bench.harness import bench_harness
from vdd_bench.bench.methods import bench_methods
from vdd_bench.bench.tailored import bench_tailored
from vdd_bench.errors import VddError

__all__ = ["SECTIONS", "BenchOptions", "render", "run_benchmarks"]

SECTIONS = ("data", "methods", "tailored", "bundle", "harness")


def run_benchmarks(options: BenchOptions) -> dict[str, Any]:
    sections = options.sections or list(SECTIONS)
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise VddError(f"unknown bench sections {sorted(unknown)}: choose from {', '.join(SECTIONS)}")
    rows: list[dict] = []
    setup: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
        + ("GPU: " + torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"),
        "load average": " ".join(f"{v:.1f}" for v in os.getloadavg()),
        "torch": torch.__version__,
        "quick": options.quick,
    }
    with tempfile.TemporaryDirectory(prefix="vdd-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for section in sections:
            start = time.perf_counter()
            if section == "data":
                found, notes = bench_data(options, tmp / "data")
            elif section == "methods":
                found, notes = bench_methods(options)
            elif section == "tailored":
                found, notes = bench_tailored(options)
            elif section == "bundle":
                found, notes = bench_bundle(options, tmp / "bundle")
            else:
                found, notes = bench_harness(options, tmp / "harness")
            rows += found
            setup.update(notes)
            setup[f"{section} took s"] = round(time.perf_counter() - start, 1)
    setup["load average after"] = " ".join(f"{v:.1f}" for v in os.getloadavg())
    return {"setup": setup, "rows": rows}


def render(report: dict[str, Any]) -> str:
    from tabulate import tabulate

    lines = [f"{k}: {v}" for k, v in report["setup"].items()]
    table = [
        [
            r["section"],
            r["measure"],
            _fmt(r["value"]),
            r["baseline"],
            _fmt(r["baseline_value"]) if r["baseline"] else "",
            f"{r['ratio']:.3g}" if r["baseline"] else "",
            r["goal"],
        ]
        for r in report["rows"]
    ]
    headers = ["section", "measure", "value", "baseline", "baseline value", "ratio", "goal (ratio)"]
    return "\n".join(lines) + "\n\n" + tabulate(table, headers, tablefmt="github")


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"
