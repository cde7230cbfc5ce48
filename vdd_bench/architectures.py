"""The tailored architectures of NetTailor runs, per task: what was kept, what it costs, how fast it runs.

Read from the records (the selection run's `method_report` and the teacher run it names), so the view needs
no model: the leaderboard appends the summary table, `vdd leaderboard --architectures` adds each diagram.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tabulate import tabulate

from vdd_bench.record import RunRecord

TIMING_KEY = "tailored_vs_teacher"  # where a NetTailor record keeps its measured speed-up (methods.nettailor)
HEADERS = [
    "task",
    "val acc (teacher, student)",
    "removed k",
    "kept blocks",
    "proxies",
    "params (task)",
    "MACs vs teacher",
    "speed-up",
    "within tolerance",
    "run",
]


def tailored_records(records: Iterable[RunRecord]) -> list[RunRecord]:
    """The NetTailor selection runs (their report names the kept architecture), by task then seed."""
    found = [r for r in records if {"kept_blocks", "chosen"} <= set(r.method_report)]
    return sorted(found, key=lambda r: (r.config.benchmark, r.task, r.seed))


def _row(record: RunRecord, teacher_macs: int | None) -> list[Any]:
    report, accounting = record.method_report, record.accounting
    macs = accounting.macs
    ratio = f"{macs / 1e6:.2f}M / {teacher_macs / 1e6:.2f}M" if teacher_macs else f"{macs / 1e6:.2f}M"
    return [
        record.task,
        _val(record.accuracy("val"), report),
        report["chosen"],
        f"{report['kept_blocks']}/{report['total_blocks']}",
        report["kept_proxies"],
        f"{accounting.params_total / 1e6:.3f}M ({accounting.params_task / 1e3:.1f}k)",
        ratio,
        record.timing.get(TIMING_KEY, {}).get("speedup"),
        "yes" if report["within_tolerance"] else "no",
        record.run_id,
    ]


def _val(acc: float | None, report: dict[str, Any]) -> str:
    """The tailored network's val accuracy with its teacher's and student's; a refit on train+val has no
    val accuracy of its own and shows the selection's."""
    student = report.get("student_val_acc")
    others = f"{report['teacher_val_acc']:.1f}" + (f", {student:.1f}" if student is not None else "")
    own = f"{acc:.1f}" if acc is not None else "refit"
    return f"{own} ({others})"


def render_architectures(
    records: list[RunRecord], by_id: dict[str, RunRecord], diagrams: bool = False
) -> str:
    """A markdown table of every NetTailor run (`by_id`: run records by run id, to find each teacher)."""
    tailored = tailored_records(records)
    if not tailored:
        return ""
    rows = []
    for record in tailored:
        teacher = by_id.get(record.config.inputs.get("teacher", ""))
        rows.append(_row(record, teacher.accounting.macs if teacher else None))
    parts = [
        "### NetTailor: tailored architectures (selection runs; speed-up measured against the teacher)",
        tabulate(rows, headers=HEADERS, tablefmt="github"),
    ]
    if diagrams:
        for record in tailored:
            parts.append(f"#### {record.task} (seed {record.seed}, run {record.run_id})")
            parts.append(f"```\n{record.method_report['diagram']}\n```")
    return "\n\n".join(parts)
