"""Leaderboard tables from finished run records.

Records are grouped by what makes numbers comparable: the benchmark (by content), the backbone
architecture, the resolution, the augmentation recipe and the protocol. Within a group a row is a method
with its hyper-parameters and backbone checkpoint; seeds are averaged. The decathlon score uses the official
baselines on the real decathlon; on any other benchmark (the toy, the mini-decathlon) its baselines are the
fine-tuning row of the same group, and the table says so. Published rows are shown for the real decathlon
only.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tabulate import tabulate

from tasks.decathlon import DECATHLON
from vdd_bench.config import canonical_json
from vdd_bench.errors import VddError
from vdd_bench.reference import published_rows
from vdd_bench.score import decathlon_score, official_baselines

FORMATS = ("markdown", "latex", "csv", "json")
BASELINE_METHOD = "finetune"
# A perfect baseline leaves no error to scale by (Emax = 0). On benchmarks scored against their own
# fine-tuning runs, accuracies are capped for scoring, which keeps fine-tuning at exactly 250 per task.
MAX_SCORED_ACC = 99.5


@dataclass
class Row:
    method: str
    label: str
    accs: dict[str, float]  # task -> mean accuracy over seeds (percent)
    seeds: dict[str, int]  # task -> number of seeds averaged
    params: dict[str, float]  # task -> total parameters used at inference
    task_params: dict[str, float]  # task -> task-specific storage in float32 equivalents
    macs: dict[str, float]
    hparams: dict[str, Any] = field(default_factory=dict)
    published: bool = False
    score: dict[str, float] = field(default_factory=dict)
    score_total: float | None = None


@dataclass
class Group:
    key: dict[str, Any]
    kind: str
    name: str
    tasks: list[str]
    rows: list[Row]
    baseline_note: str
    benchmark_tasks: int  # how many tasks the benchmark has; `tasks` may be fewer


def _group_key(record: dict[str, Any]) -> str:
    config = record["config"]
    backbone = {k: v for k, v in config["backbone"].items() if k != "checkpoint"}
    return canonical_json(
        {
            "benchmark": config["benchmark"],
            "backbone": backbone,
            "resolution": config["resolution"],
            "recipe": config["recipe"],
            "protocol": config["protocol"],
        }
    )


def _row_key(record: dict[str, Any]) -> str:
    config = record["config"]
    return canonical_json([config["method"], config["hparams"], config["backbone"].get("checkpoint")])


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def build_groups(records: Iterable[dict[str, Any]], split: str = "test") -> list[Group]:
    by_group: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        if record["config"].get("extra", {}).get("role") == "pretrain" or record.get("internal"):
            continue  # backbone pre-training and the internal steps of a method are not entries
        by_group[_group_key(record)][_row_key(record)].append(record)
    groups = []
    for gkey, rows_by_key in sorted(by_group.items()):
        first = next(iter(rows_by_key.values()))[0]
        bench = first["benchmark"]
        rows = [_row(runs, split) for runs in rows_by_key.values()]
        _label_rows(rows)
        # the columns are the tasks this group has runs on (a sweep may cover a subset of the benchmark)
        tasks = [t for t in bench["tasks"] if any(t in row.params for row in rows)]
        group = Group(json.loads(gkey), bench["kind"], bench["name"], tasks, rows, "", len(bench["tasks"]))
        _score(group)
        if group.kind == "decathlon":
            group.rows += _published(tasks)
        groups.append(group)
    return groups


def _row(runs: list[dict[str, Any]], split: str) -> Row:
    per_task: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        per_task[run["task"]].append(run)
    accs, seeds, params, task_params, macs = {}, {}, {}, {}, {}
    for task, task_runs in per_task.items():
        values = [r["metrics"].get(f"{split}_acc") for r in task_runs]
        values = [v for v in values if v is not None]
        if values:
            accs[task] = _mean(values)
            seeds[task] = len(values)
        params[task] = _mean([r["accounting"]["params_total"] for r in task_runs])
        task_params[task] = _mean([r["accounting"]["params_task_equiv"] for r in task_runs])
        macs[task] = _mean([r["accounting"]["macs"] for r in task_runs])
    method = runs[0]["config"]["method"]
    return Row(method, method, accs, seeds, params, task_params, macs, runs[0]["config"]["hparams"])


def _label_rows(rows: list[Row]) -> None:
    """Rows of the same method with other settings are labelled with the hyper-parameters that differ."""
    by_method: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_method[row.method].append(row)
    for same in by_method.values():
        if len(same) < 2:
            continue
        keys = sorted({k for row in same for k in row.hparams})
        differing = [k for k in keys if len({canonical_json(row.hparams.get(k)) for row in same}) > 1]
        for number, row in enumerate(same, start=1):
            settings = ", ".join(f"{k}={row.hparams.get(k)}" for k in differing)
            row.label = f"{row.method} [{settings}]" if settings else f"{row.method} #{number}"


def _score(group: Group) -> None:
    if group.kind == "decathlon":
        baselines = official_baselines()
        group.baseline_note = "score: official decathlon baselines"
    else:
        candidates = [r for r in group.rows if r.method == BASELINE_METHOD]
        if not candidates:
            group.baseline_note = (
                "score: no fine-tuning runs on this benchmark, so no baselines to score against"
            )
            return
        base = max(candidates, key=lambda r: len(r.accs))
        baselines = {t: min(a, MAX_SCORED_ACC) for t, a in base.accs.items()}
        group.baseline_note = (
            f"score: baselines are this group's {BASELINE_METHOD} accuracies (not the official decathlon "
            f"baselines), so fine-tuning earns 250 per task; accuracies above {MAX_SCORED_ACC}% count as "
            f"{MAX_SCORED_ACC}% so that a saturated task keeps the formula defined"
        )
    for row in group.rows:
        scored = {t: a for t, a in row.accs.items() if t in baselines}
        if group.kind != "decathlon":
            scored = {t: min(a, MAX_SCORED_ACC) for t, a in scored.items()}
        if not scored:
            continue
        result = decathlon_score(scored, {t: baselines[t] for t in scored})
        row.score = result["per_task"]
        row.score_total = result["total"] if len(scored) == len(group.tasks) else None


def _published(tasks: list[str]) -> list[Row]:
    rows = []
    for entry in published_rows():
        accs = {t: a for t, a in entry.get("accuracies", {}).items() if t in tasks}
        if not accs:
            continue
        row = Row(entry["method"], f"{entry['method']} (published)", accs, {}, {}, {}, {}, published=True)
        row.score_total = entry.get("score")
        params, gflops = entry.get("params"), entry.get("gflops")
        row.params = {t: params * 1e6 for t in tasks} if params is not None else {}
        row.macs = {t: gflops * 1e9 for t in tasks} if gflops is not None else {}
        rows.append(row)
    return rows


def _columns(group: Group) -> list[str]:
    if group.kind == "decathlon":
        return [DECATHLON[t].short if t in DECATHLON else t for t in group.tasks]
    return list(group.tasks)


def _cells(group: Group, row: Row) -> list[Any]:
    complete = len(row.accs) == len(group.tasks)
    cells: list[Any] = [row.label]
    cells += [round(row.accs[t], 2) if t in row.accs else None for t in group.tasks]
    cells.append(round(_mean(list(row.accs.values())), 2) if complete else None)
    cells.append(round(row.score_total) if row.score_total is not None else None)
    cells.append(round(_mean(list(row.params.values())) / 1e6, 3) if row.params else None)
    cells.append(round(_mean(list(row.task_params.values())) / 1e6, 3) if row.task_params else None)
    cells.append(round(_mean(list(row.macs.values())) / 1e9, 4) if row.macs else None)
    return cells


HEADERS_TAIL = ["Mean", "Score", "Params (M)", "Task-specific (M)", "GMACs"]


def title(group: Group) -> str:
    key = group.key
    backbone = key["backbone"]
    toy = (
        " — TOY benchmark: synthetic data, not comparable to the real decathlon"
        if group.kind == "toy"
        else ""
    )
    subset = len(group.tasks) < group.benchmark_tasks
    coverage = f", {len(group.tasks)} of its {group.benchmark_tasks} tasks run" if subset else ""
    return (
        f"{group.name} [{group.kind}, {key['benchmark']}]{toy}{coverage}\n"
        f"backbone {backbone['name']} (width {backbone['width']}), images {key['resolution']} px, "
        f"recipe {key['recipe']}, protocol {key['protocol']}; {group.baseline_note}"
    )


def render(groups: list[Group], fmt: str = "markdown", split: str = "test") -> str:
    if fmt not in FORMATS:
        raise VddError(f"unknown leaderboard format {fmt!r}: use one of {', '.join(FORMATS)}")
    if fmt == "json":
        return json.dumps([_as_json(g) for g in groups], indent=2)
    out = []
    for group in groups:
        headers = ["Method", *_columns(group), *HEADERS_TAIL]
        rows = [_cells(group, row) for row in group.rows]
        if fmt == "csv":
            buffer = io.StringIO()
            writer = csv.writer(buffer)
            writer.writerow(["group", *headers])
            name = f"{group.name}/{group.key['benchmark']}"
            writer.writerows([[name, *("" if c is None else c for c in r)] for r in rows])
            out.append(buffer.getvalue().rstrip("\n"))
            continue
        table = tabulate(
            rows, headers, tablefmt="github" if fmt == "markdown" else "latex_booktabs", missingval="–"
        )
        prefix = "% " if fmt == "latex" else ""
        out.append("\n".join(prefix + line for line in title(group).splitlines()) + "\n\n" + table)
        out.append(
            f"{prefix}accuracy: top-1 % on the {split} split, mean over seeds; "
            "Params: all parameters a task's "
            "network uses; Task-specific: its own storage in float32 equivalents; GMACs per image"
        )
    return "\n\n".join(out)


def _as_json(group: Group) -> dict[str, Any]:
    return {
        "benchmark": {"name": group.name, "kind": group.kind, **group.key},
        "tasks": group.tasks,
        "baseline_note": group.baseline_note,
        "rows": [
            {
                "method": row.method,
                "label": row.label,
                "published": row.published,
                "accuracy": row.accs,
                "seeds": row.seeds,
                "score": row.score,
                "score_total": row.score_total,
                "params": row.params,
                "task_specific_params": row.task_params,
                "macs": row.macs,
            }
            for row in group.rows
        ],
    }
