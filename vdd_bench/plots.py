"""Figures researchers publish, from the leaderboard's groups and the run records (matplotlib, Agg).

- accuracy against task-specific parameters, one panel per task, one marker per method;
- decathlon score against average MACs per method (published rows hollow, on the real decathlon);
- NetTailor's tailored architectures: a tasks x blocks grid of what each task kept (the pre-trained block,
  only proxies, or nothing), like the paper's figure, from the selection runs' `method_report.blocks`;
- TAPS's adapted layers: a tasks x convs grid of the layers each task adapted (`method_report`);
- a hyper-parameter search: validation accuracy against trial, one panel per method, one colour per task,
  each trial a point and the best so far a step line (how much the search found, and when);
- with `--curves`: training curves from each run's `metrics.csv`, one panel per method, one colour per task:
  the training loss and, where the method's output gives it, the training accuracy against the epoch.

matplotlib is imported here only, when a figure is drawn, so the rest of the harness never pays for it.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from vdd_bench.architectures import tailored_records
from vdd_bench.curves import read_curves
from vdd_bench.leaderboard import Group, Row, shown_runs
from vdd_bench.record import RunRecord
from vdd_bench.store import RunStore

FIGURE_FORMATS = ("png", "pdf")
# block states in the NetTailor grid: value, label, colour
KEPT, PROXIES, REMOVED, BOTH = 3, 1, 0, 2
_STATES = [
    (REMOVED, "removed", "#f2f2f2"),
    (PROXIES, "proxies only", "#f4a259"),
    (BOTH, "pre-trained block + proxies", "#5b8e7d"),
    (KEPT, "pre-trained block", "#264653"),
]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-")


def group_stem(group: Group) -> str:
    return _slug(f"{group.name}-{group.key['benchmark']}")


def _save(fig: Any, out: Path, stem: str, formats: tuple[str, ...]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out / f"{stem}.{fmt}"
        # a fixed creation date keeps PDFs byte-identical between runs
        metadata = {"CreationDate": None} if fmt == "pdf" else {"Software": None}
        fig.savefig(path, dpi=150, bbox_inches="tight", metadata=metadata)
        paths.append(path)
    _pyplot().close(fig)
    return paths


def short_label(label: str) -> str:
    """A row label with long floats shortened (0.6666666666666666 -> 0.667), for legends."""
    return re.sub(r"\d+\.\d{4,}", lambda m: f"{float(m.group()):.3g}", label)


def _markers(labels: list[str]) -> dict[str, tuple[str, Any]]:
    plt = _pyplot()
    colours = plt.get_cmap("tab10" if len(labels) <= 10 else "tab20").colors
    shapes = "osD^vP*Xhp<>"
    return {label: (shapes[i % len(shapes)], colours[i % len(colours)]) for i, label in enumerate(labels)}


MEAN_PANEL = "__mean__"


def _task_point(row: Row, task: str) -> tuple[float, float, float | None] | None:
    """(task-specific params, accuracy, std over seeds) of a row on one task; None where it has no run."""
    if task not in row.accs or task not in row.task_params:
        return None
    return row.task_params[task], row.accs[task], row.stds.get(task)


def _mean_point(row: Row, tasks: list[str]) -> tuple[float, float, None] | None:
    """A row's mean task-specific params and mean accuracy over the tasks; None unless it has them all."""
    if any(t not in row.accs or t not in row.task_params for t in tasks):
        return None
    return (
        sum(row.task_params[t] for t in tasks) / len(tasks),
        sum(row.accs[t] for t in tasks) / len(tasks),
        None,
    )


def accuracy_vs_params(group: Group, out: Path, formats: tuple[str, ...] = FIGURE_FORMATS) -> list[Path]:
    """One panel per task and a last one for the mean: test accuracy against task-specific parameters (log
    scale), one point per method; a method's mean point needs every task of the group."""
    from matplotlib.ticker import NullFormatter

    plt = _pyplot()
    rows = [r for r in group.rows if not r.published and r.accs]
    panels = [*group.tasks, MEAN_PANEL]
    cols = min(5, len(panels))
    lines = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(lines, cols, figsize=(3.1 * cols, 2.7 * lines + 0.8), squeeze=False)
    style = _markers([r.label for r in rows])
    for ax, panel in zip(axes.flat, panels, strict=False):
        for row in rows:
            point = _mean_point(row, group.tasks) if panel == MEAN_PANEL else _task_point(row, panel)
            if point is None:
                continue
            params, acc, std = point
            marker, colour = style[row.label]
            ax.errorbar(
                params / 1e6, acc, yerr=std if std else None, marker=marker, color=colour, linestyle="none",
                markersize=6, capsize=2, label=short_label(row.label),
            )  # fmt: skip
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"mean over the {len(group.tasks)} tasks" if panel == MEAN_PANEL else panel, fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.supxlabel("task-specific parameters (M, float32 equivalents, log scale)", fontsize=9)
    fig.supylabel("top-1 accuracy (%)", fontsize=9)
    handles = {h.get_label(): h for ax in axes.flat for h in ax.get_legend_handles_labels()[0]}
    fig.suptitle(f"{group.name}: accuracy vs task-specific parameters")
    fig.tight_layout()
    fig.legend(handles.values(), handles.keys(), loc="upper center", ncol=min(3, len(handles)), fontsize=7,
               bbox_to_anchor=(0.5, 0.0), frameon=False)  # fmt: skip
    return _save(fig, out, f"{group_stem(group)}-accuracy-vs-params", formats)


def score_vs_macs(group: Group, out: Path, formats: tuple[str, ...] = FIGURE_FORMATS) -> list[Path] | None:
    """Decathlon score against average GMACs per task, per method; None when no row has a score.

    Published scores are totals over the whole benchmark: they are drawn only when the group covers it."""
    whole = len(group.tasks) == group.benchmark_tasks
    rows = [r for r in group.rows if r.score_total is not None and r.macs and (whole or not r.published)]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    style = _markers([r.label for r in rows])
    for i, row in enumerate(rows):
        marker, colour = style[row.label]
        macs = sum(row.macs.values()) / len(row.macs) / 1e9
        face = "none" if row.published else colour
        ax.scatter(macs, row.score_total, marker=marker, s=50, edgecolors=colour, facecolors=face)
        ax.annotate(
            short_label(row.label),
            (macs, row.score_total),
            fontsize=6,
            xytext=(5, 2 if i % 2 else -8),
            textcoords="offset points",
        )
    ax.set_xlabel("average GMACs per task (multiply-accumulates, the papers' GFLOPs)")
    ax.set_ylabel("decathlon score")
    coverage = "" if whole else f" ({len(group.tasks)} of {group.benchmark_tasks} tasks)"
    ax.set_title(f"{group.name}: score vs compute{coverage}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(x=0.25, y=0.08)
    fig.tight_layout()
    return _save(fig, out, f"{group_stem(group)}-score-vs-macs", formats)


def block_states(record: RunRecord) -> list[tuple[int, int]]:
    """Per block of a NetTailor selection run: (state, number of proxies kept)."""
    states = []
    for block in sorted(record.method_report["blocks"], key=lambda b: b["block"]):
        proxies = len(block.get("proxies", []))
        main = bool(block.get("main"))
        state = (BOTH if proxies else KEPT) if main else (PROXIES if proxies else REMOVED)
        states.append((state, proxies))
    return states


def nettailor_blocks(
    records: list[RunRecord], out: Path, formats: tuple[str, ...] = FIGURE_FORMATS
) -> list[Path] | None:
    """Per benchmark, a tasks x blocks grid of NetTailor's kept architecture; None when there are no runs.

    One line per task and seed (the lowest seed first); the number in a cell is how many proxies it kept."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    tailored = [r for r in tailored_records(records) if r.method_report.get("blocks")]
    if not tailored:
        return None
    plt = _pyplot()
    paths: list[Path] = []
    for fingerprint in sorted({r.config.benchmark for r in tailored}):
        chosen = [r for r in tailored if r.config.benchmark == fingerprint]
        order = chosen[0].benchmark.tasks
        chosen.sort(key=lambda r: (order.index(r.task) if r.task in order else 0, r.seed))
        grid = [block_states(r) for r in chosen]
        width = max(len(g) for g in grid)
        values = [[s for s, _ in g] + [REMOVED] * (width - len(g)) for g in grid]
        fig, ax = plt.subplots(figsize=(0.42 * width + 2.4, 0.38 * len(grid) + 1.6))
        cmap = ListedColormap([colour for _, _, colour in _STATES])
        ax.imshow(values, cmap=cmap, vmin=-0.5, vmax=3.5, aspect="auto")
        for y, g in enumerate(grid):
            for x, (state, proxies) in enumerate(g):
                if proxies:
                    colour = "white" if state in (KEPT, BOTH) else "black"
                    ax.text(x, y, str(proxies), ha="center", va="center", fontsize=7, color=colour)
        seeds = {r.seed for r in chosen}
        repeated = {t for t in (r.task for r in chosen) if sum(r.task == t for r in chosen) > 1}
        labels = [
            r.task
            + (f" (seed {r.seed})" if len(seeds) > 1 else "")
            + (f" [{r.run_id[-6:]}]" if r.task in repeated and len(seeds) == 1 else "")
            for r in chosen
        ]
        ax.set_yticks(range(len(chosen)), labels, fontsize=8)
        ax.set_xticks(range(width), [str(i + 1) for i in range(width)], fontsize=7)
        ax.set_xticks([x - 0.5 for x in range(1, width)], minor=True)
        ax.set_yticks([y - 0.5 for y in range(1, len(grid))], minor=True)
        ax.grid(which="minor", color="white", linewidth=1.5)
        ax.tick_params(which="minor", length=0)
        ax.set_xlabel("residual block (number in a cell: proxies kept)")
        name = chosen[0].benchmark.name
        ax.set_title(f"NetTailor: tailored architectures, {name}", fontsize=10)
        legend = [Patch(facecolor=c, edgecolor="#999999", label=label) for _, label, c in reversed(_STATES)]
        ax.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
        fig.tight_layout()
        paths += _save(fig, out, _slug(f"{name}-{fingerprint}-nettailor-blocks"), formats)
    return paths


def adapted_layers(
    records: list[RunRecord], out: Path, formats: tuple[str, ...] = FIGURE_FORMATS
) -> list[Path] | None:
    """Per benchmark, a tasks x convs grid of the layers TAPS adapted (dark) or shared (light); None when
    there are no such runs. One line per task and seed, the convs in the network's order."""
    from matplotlib.colors import ListedColormap

    gated = [r for r in records if r.method_report.get("layers") and "adapted_layers" in r.method_report]
    if not gated:
        return None
    plt = _pyplot()
    paths: list[Path] = []
    for fingerprint in sorted({r.config.benchmark for r in gated}):
        chosen = [r for r in gated if r.config.benchmark == fingerprint]
        order = chosen[0].benchmark.tasks
        chosen.sort(key=lambda r: (r.method, order.index(r.task) if r.task in order else 0, r.seed))
        grid = [
            [int(layer in r.method_report["adapted_layers"]) for layer in r.method_report["layers"]]
            for r in chosen
        ]
        width = max(len(g) for g in grid)
        fig, ax = plt.subplots(figsize=(0.3 * width + 2.6, 0.38 * len(grid) + 1.6))
        ax.imshow(
            [g + [0] * (width - len(g)) for g in grid],
            cmap=ListedColormap(["#f2f2f2", "#264653"]),
            vmin=0,
            vmax=1,
            aspect="auto",
        )
        seeds = {r.seed for r in chosen}
        labels = [
            f"{r.task} ({sum(g)}/{len(g)})" + (f" seed {r.seed}" if len(seeds) > 1 else "")
            for r, g in zip(chosen, grid, strict=True)
        ]
        ax.set_yticks(range(len(chosen)), labels, fontsize=8)
        ax.set_xticks(range(width), [str(i + 1) for i in range(width)], fontsize=6)
        ax.set_xlabel("conv layer, in the network's order (dark: adapted, light: the shared weight)")
        name = chosen[0].benchmark.name
        ax.set_title(f"TAPS: adapted layers per task, {name}", fontsize=10)
        fig.tight_layout()
        paths += _save(fig, out, _slug(f"{name}-{fingerprint}-taps-layers"), formats)
    return paths


def search_trials(group: Group, out: Path, formats: tuple[str, ...] = FIGURE_FORMATS) -> list[Path] | None:
    """Validation accuracy (mean over seeds) of every trial of every searched row; None without a search."""
    rows = [row for row in group.rows if len({r.config.trial for r in row.searched}) > 1]
    if not rows:
        return None
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    colours = _markers(group.tasks)
    width = min(3, len(rows))
    height = math.ceil(len(rows) / width)
    fig, axes = plt.subplots(height, width, figsize=(4.2 * width, 3.2 * height), squeeze=False)
    for ax, row in zip(axes.flat, rows, strict=False):
        for task in group.tasks:
            by_trial: dict[int, list[float]] = {}
            for record in row.searched:
                value = record.accuracy("val")
                if record.task == task and value is not None:
                    by_trial.setdefault(record.config.trial, []).append(value)
            if not by_trial:
                continue
            trials = sorted(by_trial)
            values = [sum(by_trial[t]) / len(by_trial[t]) for t in trials]
            best = [max(values[: i + 1]) for i in range(len(values))]
            colour = colours[task][1]
            ax.plot(trials, values, "o", color=colour, markersize=3.5, alpha=0.7)
            ax.step(trials, best, where="post", color=colour, linewidth=1.2, label=task)
        ax.set_title(short_label(row.label), fontsize=9)
        ax.set_xlabel("trial (0: the defaults)", fontsize=8)
        ax.set_ylabel("validation accuracy %", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(rows) :]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=7, frameon=False)
    fig.suptitle(f"Search: validation accuracy by trial (line: best so far), {group.name}", fontsize=10)
    fig.tight_layout()
    return _save(fig, out, f"{group_stem(group)}-search", formats)


def training_curves(
    group: Group, results: Path, out: Path, formats: tuple[str, ...] = FIGURE_FORMATS
) -> list[Path] | None:
    """Per group, the training loss (top) and accuracy (bottom) by epoch of the runs its table shows (seed
    and trial of each cell), one column per method; None when no run has curves."""
    rows = [row for row in group.rows if not row.published and row.runs]
    curves = {
        row.label: [(r.task, read_curves(RunStore(results).run_dir(r.run_id))) for r in row.runs]
        for row in rows
    }
    curves = {label: [(t, c) for t, c in runs if c] for label, runs in curves.items()}
    curves = {label: runs for label, runs in curves.items() if runs}
    if not curves:
        return None
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    colours = _markers(group.tasks)
    fig, axes = plt.subplots(2, len(curves), figsize=(3.4 * len(curves), 5.6), squeeze=False, sharex="col")
    for column, (label, runs) in enumerate(curves.items()):
        loss_ax, acc_ax = axes[0][column], axes[1][column]
        for task, points in runs:
            colour = colours[task][1]
            epochs = [p["epoch"] for p in points]
            loss_ax.plot(epochs, [p["train_loss"] for p in points], color=colour, linewidth=1, label=task)
            accuracy = [(p["epoch"], p["train_acc"]) for p in points if p["train_acc"] is not None]
            if accuracy:
                acc_ax.plot(*zip(*accuracy, strict=True), color=colour, linewidth=1)
        if not acc_ax.lines:
            acc_ax.text(0.5, 0.5, "no accuracy: several heads\nor outputs per step", ha="center", fontsize=7)
        loss_ax.set_title(short_label(label), fontsize=9)
        loss_ax.set_yscale("log")
        acc_ax.set_xlabel("epoch", fontsize=8)
        for ax in (loss_ax, acc_ax):
            ax.tick_params(which="both", labelsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("training loss", fontsize=8)
    axes[1][0].set_ylabel("training accuracy %", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.95), fontsize=7, frameon=False)
    fig.suptitle(f"Training curves, {group.name}", fontsize=10)
    fig.tight_layout()
    return _save(fig, out, f"{group_stem(group)}-curves", formats)


def plot_all(
    groups: list[Group],
    records: list[RunRecord],
    out: Path,
    formats: tuple[str, ...] = FIGURE_FORMATS,
    curves_of: Path | None = None,
) -> list[Path]:
    """Every figure for every group; the paths written. NetTailor's grid shows the runs the tables show;
    `curves_of` (a results folder) adds each group's training curves."""
    paths: list[Path] = []
    shown = shown_runs(groups)
    records = [r for r in records if r.run_id in shown]
    for group in groups:
        if any(not r.published and r.accs for r in group.rows):
            paths += accuracy_vs_params(group, out, formats)
        paths += score_vs_macs(group, out, formats) or []
        paths += search_trials(group, out, formats) or []
        if curves_of is not None:
            paths += training_curves(group, curves_of, out, formats) or []
    paths += nettailor_blocks(records, out, formats) or []
    paths += adapted_layers(records, out, formats) or []
    return paths
