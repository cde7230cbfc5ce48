"""The leaderboard's groups as text: markdown, a paper-style LaTeX table, CSV and JSON.

Every format shows the same numbers: per-task accuracy (mean, ± the sample standard deviation when a cell
averages more than one seed), the mean over tasks and the score (± the sample standard deviation of the
per-seed mean and score, over the seeds every task has, when there are two or more), parameters and MACs;
a run a row should have and does not reads `missing`, and the table lists each with its run id or the
command that would run it.
The LaTeX table is booktabs style with the best value of each column in bold (on the printed values:
highest accuracy, mean and score; fewest parameters and MACs), ready to paste into a paper.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from typing import Any

from tabulate import tabulate

from vdd_bench.chains import ChainResult
from vdd_bench.errors import VddError
from vdd_bench.leaderboard import FORMATS, Group, Row, row_mean, row_mean_std
from vdd_bench.selection import REFIT, SPLIT_OF_RULE, Choice
from vdd_bench.tasks.decathlon import DECATHLON

MISSING = "missing"
NONE = "–"
FLAG = " †"  # marks a cell at or below chance or the majority class (`Row.learned_nothing`)
HEADERS_TAIL = ["Mean", "Score", "Params (M)", "Task-specific (M)", "GMACs"]
_LATEX_SPECIAL = {c: "\\" + c for c in "&%$#_{}"} | {"~": r"\textasciitilde{}", "^": r"\^{}"}


def render_groups(
    groups: list[Group], fmt: str = "markdown", split: str = "test", show_choice: bool = False
) -> str:
    """The groups in `fmt`; `show_choice` lists under each table the setting chosen for every cell."""
    if fmt not in FORMATS:
        raise VddError(f"unknown leaderboard format {fmt!r}: use one of {', '.join(FORMATS)}")
    if fmt == "json":
        return json.dumps([as_json(g) for g in groups], indent=2)
    if fmt == "csv":
        return "\n\n".join(_csv(g) for g in groups)
    render_one = _latex if fmt == "latex" else _markdown
    return "\n\n".join(render_one(g, split, show_choice) for g in groups)


def selecting(group: Group) -> bool:
    """Whether the group's cells were chosen among settings by a rule (`val` or `oracle`)."""
    return group.rule in SPLIT_OF_RULE


def rule_lines(group: Group) -> list[str]:
    """The sentences under a table that say how its cells were chosen (none for a plain table)."""
    lines = _rule_sentence(group)
    if group.trial_budget is not None and selecting(group):
        lines.append(
            f"budget: each search read as its first {group.trial_budget} trial(s), trials 0 to "
            f"{group.trial_budget - 1} (`--trials {group.trial_budget}`); later trials in the store left out"
        )
    return lines


def _rule_sentence(group: Group) -> list[str]:
    if group.rule == "val":
        return [
            "selection (val): each cell is the test accuracy of the method's setting with the best "
            "validation accuracy on that task and seed, among the settings that differ only in searched "
            "hyper-parameters (Trials: how many); a chain method's chain is one setting, chosen on its final "
            "network's mean validation accuracy; ties go to the lower trial; seeds averaged after selection"
        ]
    if group.rule == "oracle":
        return [
            "selection (oracle): each cell is the BEST TEST accuracy among the method's settings (Trials: "
            "how many): an upper bound on what the search can find, not a result to report"
        ]
    if group.rule == REFIT:
        return [
            "refit: each cell is the test accuracy of the setting selected on validation in this benchmark's "
            "train-protocol table, trained again on train+val (`vdd sweep --refit`)"
        ]
    if group.hidden_trials:
        return [
            f"selection (default): trial 0 only, each setting its own row; {group.hidden_trials} search "
            "trial run(s) left out (`--select val` chooses among them)"
        ]
    return []


def choice_lines(group: Group, prefix: str = "") -> list[str]:
    """Under a selected table: the setting chosen for each cell (a chain's once per seed)."""
    lines, seen = [], set()
    for row in group.rows:
        for choice in row.choices:
            record = choice.record
            chain = record.chain_end
            if chain and (row.label, record.seed, chain) in seen:
                continue
            seen.add((row.label, record.seed, chain))
            where = f"its chain, seed {record.seed}" if chain else f"{record.task}, seed {record.seed}"
            values = ", ".join(f"{k}={v}" for k, v in choice.values.items())
            lines.append(
                f"{prefix}- {row.label} on {where}: trial {record.config.trial} of {choice.candidates} "
                f"({chain or record.run_id}), {SPLIT_OF_RULE[group.rule]} {choice.score:.2f}: {values}"
            )
    return [f"{prefix}chosen settings:", *lines] if lines else []


def columns(group: Group) -> list[str]:
    """Task column labels: the papers' short names on the real decathlon, task names elsewhere."""
    if group.kind == "decathlon":
        return [DECATHLON[t].short if t in DECATHLON else t for t in group.tasks]
    return list(group.tasks)


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


def _note(split: str) -> str:
    return (
        f"accuracy: top-1 % on the {split} split, mean ± sample standard deviation over seeds (Seeds: how "
        "many a cell averages); Params: all parameters a task's network uses; Task-specific: its own "
        "storage in float32 equivalents; GMACs per image"
    )


def _summary(group: Group, row: Row) -> list[float | None]:
    """Mean, score, params (M), task-specific (M), GMACs of a row; None where there is no value."""
    mean = row_mean(group, row)

    def average(values: dict[str, float], scale: float) -> float | None:
        return sum(values.values()) / len(values) / scale if values else None

    return [
        mean,
        row.score_total,
        average(row.params, 1e6),
        average(row.task_params, 1e6),
        average(row.macs, 1e9),
    ]


_DIGITS = [2, 0, 3, 3, 4]  # mean, score, params, task-specific, GMACs
_BEST: list[Callable[[list[float]], float]] = [max, max, min, min, min]


def _fmt(value: float | None, digits: int) -> str:
    return NONE if value is None else f"{value:.{digits}f}"


def _spreads(group: Group, row: Row) -> list[float | None]:
    """The std beside each summary value: of the per-seed mean and score (None elsewhere)."""
    return [row_mean_std(group, row), row.score_std, None, None, None]


def _summary_cells(
    group: Group, row: Row, bold: Callable[[int, str], str] = lambda i, v: v, pm: str = " ± "
) -> list[str]:
    cells = []
    values = zip(_summary(group, row), _spreads(group, row), _DIGITS, strict=True)
    for i, (value, std, digits) in enumerate(values):
        text = bold(i, _fmt(value, digits)) if value is not None else NONE
        cells.append(text + (pm + _fmt(std, digits) if value is not None and std is not None else ""))
    return cells


def _acc_parts(row: Row, task: str) -> tuple[str, str | None] | None:
    """(mean, std or None) as printed, or None when the row has no accuracy for the task."""
    if task not in row.accs:
        return None
    std = row.stds.get(task)
    return f"{row.accs[task]:.2f}", (f"{std:.2f}" if std is not None else None)


def _acc_cell(
    row: Row, task: str, bold: Callable[[str], str] = str, pm: str = " ± ", flag: str = FLAG
) -> str:
    parts = _acc_parts(row, task)
    if parts is None:
        return MISSING if task in row.missing_tasks() else NONE
    mean, std = parts
    return (
        bold(mean) + (pm + std if std is not None else "") + (flag if task in row.learned_nothing() else "")
    )


def _flag_lines(group: Group, flag: str = FLAG) -> list[str]:
    """The note under a table with flagged cells: which, and the accuracy that learning nothing gets."""
    flagged = [
        f"{row.label} on {task} ({row.accs[task]:.2f} <= {row.floors[task]:.2f})"
        for row in group.rows
        for task in row.learned_nothing()
    ]
    if not flagged:
        return []
    return [
        f"{flag.strip()} at or below chance or the share of the split's most common class: the network "
        f"learned nothing usable there: {'; '.join(flagged)}"
    ]


def _missing_lines(group: Group, prefix: str = "") -> list[str]:
    lines = []
    for row in group.rows:
        for m in row.missing:
            where = f"run {m.run_id}: " if m.run_id else ""
            lines.append(f"{prefix}- {row.label} on {m.task}, seed {m.seed}: {where}`{m.command}`")
    if not lines:
        return []
    header = "missing runs (each with what would produce it"
    if any(m.run_id is None for row in group.rows for m in row.missing):
        header += "; ROOT: the benchmark root, CKPT: the row's backbone checkpoint, same hyper-parameters"
    return [f"{prefix}{header}):", *lines]


def _markdown(group: Group, split: str, show_choice: bool = False) -> str:
    trials = ["Trials"] if selecting(group) else []
    headers = ["Method", *columns(group), *HEADERS_TAIL, "Seeds", *trials]
    rows = []
    for row in group.rows:
        summary = _summary_cells(group, row)
        counts = [row.trial_range() or NONE] if trials else []
        rows.append(
            [
                row.label,
                *(_acc_cell(row, t) for t in group.tasks),
                *summary,
                row.seed_range() or NONE,
                *counts,
            ]
        )
    table = tabulate(rows, headers, tablefmt="github", disable_numparse=True)
    parts = [title(group), table, *rule_lines(group), _note(split), *_flag_lines(group)]
    for lines in (_missing_lines(group), choice_lines(group) if show_choice else []):
        if lines:
            parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(c, c) for c in text)


def _latex(group: Group, split: str, show_choice: bool = False) -> str:
    """booktabs tabular; the best printed value per column in bold (only where two or more rows compare)."""
    summaries = [_summary(group, row) for row in group.rows]
    best_acc = {}
    for task in group.tasks:
        printed = [p[0] for row in group.rows if (p := _acc_parts(row, task))]
        if len(printed) > 1:
            best_acc[task] = max(printed, key=float)
    best_tail = []
    for i, (digits, pick) in enumerate(zip(_DIGITS, _BEST, strict=True)):
        printed = [_fmt(s[i], digits) for s in summaries if s[i] is not None]
        best_tail.append(pick(printed, key=float) if len(printed) > 1 else None)

    def emph(value: str, best: str | None) -> str:
        return rf"\textbf{{{value}}}" if best is not None and value == best else value

    body = []
    for row in group.rows:
        cells = [_escape(row.label)]
        for task in group.tasks:
            cell = _acc_cell(row, task, lambda v, t=task: emph(v, best_acc.get(t)), r" $\pm$ ", r"$^\dagger$")
            cells.append({MISSING: r"\emph{missing}", NONE: "--"}.get(cell, cell))
        tail = _summary_cells(group, row, lambda i, text: emph(text, best_tail[i]), r" $\pm$ ")
        cells += ["--" if cell == NONE else cell for cell in tail]
        cells += [row.trial_range() or "--"] if selecting(group) else []
        body.append(cells)
    trials = ["Trials"] if selecting(group) else []
    headers = [_escape(h) for h in ["Method", *columns(group), *HEADERS_TAIL, *trials]]
    raw = tabulate(
        body,
        headers,
        tablefmt="latex_raw",
        disable_numparse=True,
        colalign=["left"] + ["right"] * (len(headers) - 1),
    )
    rules = iter([r"\toprule", r"\midrule", r"\bottomrule"])
    table = "\n".join(next(rules) if line == r"\hline" else line for line in raw.splitlines())
    notes = [*rule_lines(group), _note(split).replace("±", "+-"), *_flag_lines(group, "dagger:")]
    notes += [*_missing_lines(group), *(choice_lines(group) if show_choice else [])]
    comments = [*title(group).splitlines(), *notes]
    head = "\n".join(f"% {line}" for line in title(group).splitlines())
    tail = "\n".join(f"% {line}" for line in comments[len(title(group).splitlines()) :])
    return f"{head}\n{table}\n{tail}"


def _csv(group: Group) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    task_headers = [h for c in columns(group) for h in (c, f"{c} std", f"{c} seeds")]
    trials = ["Trials"] if selecting(group) else []
    tail_headers = [*HEADERS_TAIL, "Mean std", "Score std", "Missing runs", "Learned nothing", *trials]
    writer.writerow(["group", "Method", *task_headers, *tail_headers])
    name = f"{group.name}/{group.key['benchmark']}"
    for row in group.rows:
        cells: list[Any] = [name, row.label]
        for task in group.tasks:
            parts = _acc_parts(row, task)
            if parts is None:
                cells += [MISSING if task in row.missing_tasks() else "", "", row.seeds.get(task, 0)]
            else:
                cells += [parts[0], parts[1] or "", row.seeds.get(task, "")]
        cells += ["" if v is None else _fmt(v, d) for v, d in zip(_summary(group, row), _DIGITS, strict=True)]
        cells += [
            "" if v is None else _fmt(v, d)
            for v, d in zip(_spreads(group, row)[:2], _DIGITS[:2], strict=True)
        ]
        cells.append("; ".join(f"{m.task} seed {m.seed}: {m.run_id or m.command}" for m in row.missing))
        cells.append("; ".join(row.learned_nothing()))
        cells += [row.trial_range()] if trials else []
        writer.writerow(cells)
    return buffer.getvalue().rstrip("\n")


def as_json(group: Group) -> dict[str, Any]:
    selection = {"selection": {"rule": group.rule, "note": rule_lines(group)}} if rule_lines(group) else {}
    return {
        "benchmark": {"name": group.name, "kind": group.kind, **group.key},
        **selection,
        "tasks": group.tasks,
        "baseline_note": group.baseline_note,
        "baselines": group.baselines,
        "rows": [
            {
                "method": row.method,
                "label": row.label,
                "published": row.published,
                "accuracy": row.accs,
                "std": row.stds,
                "seeds": row.seeds,
                "seed_ids": row.seed_ids,
                "mean": row_mean(group, row),
                "mean_std": row_mean_std(group, row),
                "score": row.score,
                "score_total": row.score_total,
                "score_std": row.score_std,
                "params": row.params,
                "task_specific_params": row.task_params,
                "macs": row.macs,
                "learned_nothing": {t: row.floors[t] for t in row.learned_nothing()},
                "missing": [
                    {"task": m.task, "seed": m.seed, "run_id": m.run_id, "command": m.command}
                    for m in row.missing
                ],
                **({"choices": [_choice_json(c) for c in row.choices]} if row.choices else {}),
            }
            for row in group.rows
        ],
    }


def _choice_json(choice: Choice) -> dict[str, Any]:
    record = choice.record
    return {
        "task": record.task,
        "seed": record.seed,
        "run_id": record.run_id,
        "trial": record.config.trial,
        "trials": choice.candidates,
        "selected_on": choice.score,
        "values": choice.values,
    }


def render_continual(chains: list[ChainResult], fmt: str = "markdown", split: str = "test") -> str:
    """Chains (`continual.chain_results`): each one's accuracy matrix, final accuracy and forgetting per
    task."""
    if fmt == "json":
        return json.dumps([chain.to_json() for chain in chains], indent=2)
    tablefmt = {"markdown": "github", "latex": "latex_booktabs", "csv": "tsv"}[fmt]
    out = []
    for chain in chains:

        def cells(values: list[float | None]) -> list[float | None]:
            return [None if v is None else round(v, 2) for v in values]

        rows = [[f"after {task}", *cells(row)] for task, row in zip(chain.tasks, chain.matrix, strict=True)]
        rows.append(["final", *cells(list(chain.final.values()))])
        rows.append(["forgetting", *cells([chain.forgetting.get(t) for t in chain.tasks])])
        mean_final = "–" if chain.mean_final is None else f"{chain.mean_final:.2f}"
        mean_forgetting = "–" if chain.mean_forgetting is None else f"{chain.mean_forgetting:.2f}"
        out.append(
            f"{chain.method}: {' -> '.join(chain.tasks)} (last run {chain.run_ids[-1]})\n"
            f"{split} accuracy R[i][j] on task j after learning task i; mean final {mean_final}, "
            f"mean forgetting {mean_forgetting} (plain means over tasks)\n\n"
            + tabulate(rows, ["", *chain.tasks], tablefmt=tablefmt, missingval="–")
        )
    return "\n\n".join(out)
