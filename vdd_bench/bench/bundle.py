"""The `bundle` section of `vdd bench`: bundle sizes against fine-tuned networks, and the task switch."""

from __future__ import annotations

from pathlib import Path

from vdd_bench.bench.common import BenchOptions, row
from vdd_bench.bundle import Bundle, export
from vdd_bench.errors import VddError
from vdd_bench.method import METHODS
from vdd_bench.store import RunStore


def bench_bundle(options: BenchOptions, tmp: Path) -> tuple[list[dict], dict]:
    """Every listed method with finished runs in the run store, bundled: size and task-switch time."""

    results = options.nettailor_results
    methods = sorted(
        {
            r.method
            for r in (RunStore(results).done_records() if results is not None else [])
            if r.method in METHODS.names()
            and METHODS.get(r.method).listed
            and METHODS.get(r.method).uses_pretrained
        }
    )
    if not methods:
        return [], {"bundle": "no finished runs to bundle (pass --results)"}
    try:
        bench_root = _benchmark_root(results)
    except FileNotFoundError as exc:
        return [], {"bundle": str(exc)}
    rows, notes = [], []
    for method in methods:
        try:
            summary = export(method, results, bench_root, tmp / f"{method}.pt")
        except VddError as exc:
            notes.append(f"{method}: {exc}")
            continue
        switch = Bundle.load(tmp / f"{method}.pt").switch_seconds()
        n = len(summary.tasks)
        rows.append(
            row(
                "bundle",
                f"{method} bundle, {n} tasks, MiB",
                summary.bundle_bytes / 2**20,
                "MiB",
                f"{n} fine-tuned networks",
                summary.finetuned_bytes / 2**20,
            )
        )
        rows[-1]["switch_ms"] = 1000 * switch
        rows.append(row("bundle", f"{method} task switch, ms", 1000 * switch, "ms", "", 0.0))
    return rows, {"bundle": f"finished runs of {results}" + "".join(f"; {n}" for n in notes)}


def _benchmark_root(results: Path) -> Path:
    """The benchmark root of a run store's runs: the toy `vdd demo` leaves in it (or one beside it)."""
    for candidate in (results / "toy" / "data", results / "toy", results.parent / "toy"):
        if (candidate / "annotations").is_dir():
            return candidate
    raise FileNotFoundError(f"no benchmark root found beside {results}")
