"""Leaderboard rows from finished run records: grouping, means and spreads over seeds, missing runs, score.

Records are grouped by what makes numbers comparable: the benchmark (by content), the backbone
architecture, the resolution, the augmentation recipe and the protocol. Within a group a row is a method
with its hyper-parameters and backbone checkpoint; seeds are averaged (mean and sample standard deviation,
n - 1 in the denominator, over the seeds a task has). The decathlon score uses the official baselines on the
real decathlon; on any other benchmark (the toy, the mini-decathlon) its baselines are the fine-tuning row
of the same group, and the table says so. Published rows are shown for the real decathlon only.

A run a row should have but does not is *missing*. With the runs a sweep expects (`Expected`), every
expected run that is not done is missing, by run id. Without them a row expects, on every task of its
group, the seeds it has on any task; a task without them is missing (with the command that would run it).
A chain method's entry for a task (PackNet, LwF) is the accuracy of the network at the end of its chain on
that task (`vdd_bench.chains`), as a user of the method gets it.

Rendering lives in `vdd_bench.tables`.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from vdd_bench.chains import PREVIOUS, setting, with_final_accuracies
from vdd_bench.config import RunConfig, canonical_json
from vdd_bench.errors import VddError
from vdd_bench.record import BenchmarkInfo, RunRecord
from vdd_bench.reference import published_rows
from vdd_bench.score import (
    MAX_SCORED_ACC,
    accuracy_floor,
    decathlon_score,
    learned_nothing,
    official_baselines,
)
from vdd_bench.selection import (
    REFIT,
    REFIT_OF,
    RULES,
    SPLIT_OF_RULE,
    Choice,
    fixed_setting,
    searched_keys,
    selection_key,
)
from vdd_bench.selection import select as select_runs
from vdd_bench.store import internal_runs

FORMATS = ("markdown", "latex", "csv", "json")
BASELINE_METHOD = "finetune"


@dataclass
class Missing:
    """A run a row should have and does not: by run id when a sweep names it, else by the command."""

    task: str
    seed: int
    run_id: str | None
    command: str


@dataclass
class Expected:
    """A run a sweep expects: its id, its semantic config, and its benchmark as records describe it."""

    config: RunConfig
    benchmark: BenchmarkInfo
    command: str  # the command that runs it (e.g. `vdd sweep --file FILE`)

    @property
    def run_id(self) -> str:
        return self.config.run_id


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
    stds: dict[str, float | None] = field(default_factory=dict)  # task -> sample std (None for 1 seed)
    seed_ids: dict[str, list[int]] = field(default_factory=dict)  # task -> the seeds averaged
    missing: list[Missing] = field(default_factory=list)
    config: RunConfig | None = None  # the config of one of its runs (for commands); None: published
    all_seeds: list[int] = field(default_factory=list)  # every seed the row has on any task
    by_seed: dict[str, dict[int, float]] = field(default_factory=dict)  # task -> seed -> accuracy
    score_std: float | None = None  # sample std of the per-seed scores (seeds every task has, 2 or more)
    inputs_only: int = 0  # how many of its runs other runs read as inputs (e.g. NetTailor's teacher)
    floors: dict[str, float] = field(default_factory=dict)  # task -> accuracy without learning (score.py)
    runs: list[RunRecord] = field(default_factory=list)  # the runs its cells average
    choices: list[Choice] = field(default_factory=list)  # under a selecting rule: each cell's choice
    searched: list[RunRecord] = field(default_factory=list)  # under a selecting rule: every candidate run

    def trial_range(self) -> str:
        """How many settings each selected cell chose among: "5", or "3–5" where cells differ."""
        counts = sorted({c.candidates for c in self.choices})
        if not counts:
            return ""
        return str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"

    def learned_nothing(self) -> list[str]:
        """Tasks whose accuracy is at or below chance or the majority class's share: flagged in tables."""
        return [
            t for t, acc in self.accs.items() if t in self.floors and learned_nothing(acc, self.floors[t])
        ]

    def missing_tasks(self) -> list[str]:
        """Tasks with no accuracy at all because their runs are missing."""
        return sorted({m.task for m in self.missing if m.task not in self.accs})

    def seed_range(self) -> str:
        counts = sorted(set(self.seeds.values()))
        if not counts:
            return ""
        return str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"


@dataclass
class Group:
    key: dict[str, Any]
    kind: str
    name: str
    tasks: list[str]
    rows: list[Row]
    baseline_note: str
    benchmark_tasks: int  # how many tasks the benchmark has; `tasks` may be fewer
    baselines: dict[str, float] = field(default_factory=dict)  # task -> baseline accuracy the score used
    rule: str = "default"  # how each cell's run was chosen among a method's settings (`vdd_bench.selection`)
    hidden_trials: int = 0  # under the default rule: the search trials (trial > 0) left out
    trial_budget: int | None = None  # searches read as if they had drawn only their first N trials


def _group_key(config: RunConfig) -> str:
    backbone = {k: v for k, v in config.backbone.items() if k != "checkpoint"}
    return canonical_json(
        {
            "benchmark": config.benchmark,
            "backbone": backbone,
            "resolution": config.resolution,
            "recipe": config.recipe,
            "protocol": config.protocol,
        }
    )


def _row_key(config: RunConfig) -> str:
    return canonical_json([config.method, setting(config.hparams), config.backbone.get("checkpoint")])


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def build_groups(
    records: Iterable[RunRecord],
    split: str = "test",
    expected: list[Expected] | None = None,
    entry_ids: set[str] | None = None,
    select: str | None = None,
    trials: int | None = None,
) -> list[Group]:
    """Groups of rows; `expected` (the runs of a sweep) makes every one of them that is not done missing;
    `entry_ids` (`RunStore.entry_ids`) leaves out the runs that exist only as another run's input; `select`
    is the rule that picks among a method's settings (`vdd_bench.selection`): None picks `val` where a
    group has several settings of a method or search trials, else `default`. `trials` keeps trials 0 to
    trials - 1 only: a trial's draw does not depend on how many trials the search has, so they are the search
    that `vdd sweep --trials N` would have run (a smaller, equal budget read from a larger search's store)."""
    if select is not None and select not in RULES:
        raise VddError(f"unknown selection rule {select!r}: use {', '.join(RULES)}")
    if trials is not None:
        records = [r for r in records if r.config.trial < trials]
        expected = [e for e in expected if e.config.trial < trials] if expected is not None else None
    by_group: dict[str, list[RunRecord]] = defaultdict(list)
    benches: dict[str, BenchmarkInfo] = {}
    records = with_final_accuracies(list(records))  # a chain's entries are its final network's
    done = {record.run_id for record in records}
    read_as_inputs = {i for r in records for i in r.config.inputs.values()}
    internal = internal_runs(records, entry_ids)
    for record in records:
        if record.run_id in internal:
            continue
        gkey = _group_key(record.config)
        by_group[gkey].append(record)
        benches.setdefault(gkey, record.benchmark)
    wanted: dict[str, list[Expected]] = defaultdict(list)
    for entry in expected or []:
        if entry.run_id in done:
            continue
        gkey = _group_key(entry.config)
        wanted[gkey].append(entry)
        benches.setdefault(gkey, entry.benchmark)
    chosen: set[str] = set()  # the runs selected in train-protocol groups, whose refits trainval groups show
    groups = []
    for gkey in sorted(set(by_group) | set(wanted), key=lambda k: json.loads(k)["protocol"] == "trainval"):
        bench, key = benches[gkey], json.loads(gkey)
        group_records, group_wanted = by_group.get(gkey, []), wanted.get(gkey, [])
        rule = _rule(select, group_records, key["protocol"])
        rows = _rows(group_records, group_wanted, rule, split, chosen)
        # the columns are the tasks this group has runs on or expects (a sweep may cover a subset)
        present = {t for row in rows for t in [*row.params, *(m.task for m in row.missing)]}
        tasks = [t for t in bench.tasks if t in present]
        _finish_rows(rows, tasks, read_as_inputs, infer_missing=expected is None)
        group = Group(key, bench.kind, bench.name, tasks, rows, "", len(bench.tasks), rule=rule)
        group.trial_budget = trials
        if rule == "default":
            group.hidden_trials = sum(1 for r in group_records if r.config.trial)
        _score(group)
        if group.kind == "decathlon":
            group.rows += _published(tasks)
        groups.append(group)
    return sorted(groups, key=lambda g: canonical_json(g.key))


def _finish_rows(rows: list[Row], tasks: list[str], read_as_inputs: set[str], infer_missing: bool) -> None:
    """Labels, the count of runs read as others' inputs, and missing runs in the order of the columns."""
    _label_rows(rows)
    for row in rows:
        row.inputs_only = sum(r.run_id in read_as_inputs for r in row.runs)
        if any(REFIT_OF in r.config.extra for r in row.runs):
            row.label += " (refit on train+val)"
        if infer_missing:
            row.missing = _inferred_missing(row, tasks)
        row.missing.sort(key=lambda m: (tasks.index(m.task), m.seed))


def _rule(select: str | None, records: list[RunRecord], protocol: str) -> str:
    """The group's rule: a train+val group shows the refits of the settings selected on validation (its own
    runs have no validation accuracy) when it has refits, else its runs as they are."""
    if protocol == "trainval":
        return REFIT if any(REFIT_OF in r.config.extra for r in records) else "default"
    if select is not None:
        return select
    several = defaultdict(set)
    for record in records:
        several[record.method].add(_row_key(record.config))
    searched = any(r.config.trial for r in records) or any(len(keys) > 1 for keys in several.values())
    return "val" if searched else "default"


def searched_by_method(records: list[RunRecord], wanted: list[Expected]) -> dict[str, list[str]]:
    """Per method, every key that any of its runs was searched over: the keys its records name (the method
    registry's for an older record without them, and for a run still to be made), so that runs made before
    its search space grew stay in one row with the trials made after."""
    keys: dict[str, set[str]] = defaultdict(set)
    for record in records:
        method = record.config.method
        keys[method] |= set(searched_keys(method) if record.searched is None else record.searched)
    for entry in wanted:
        keys[entry.config.method] |= searched_keys(entry.config.method)
    return {method: sorted(names) for method, names in keys.items()}


def _rows(
    records: list[RunRecord], wanted: list[Expected], rule: str, split: str, chosen: set[str]
) -> list[Row]:
    """The rows of one group under `rule`; `chosen` collects the selected runs (a train group's) or gives
    them (a refit group's: the refits of the chosen runs are rows, stale refits are left out, and the
    group's other runs are rows as under `default`)."""
    if rule == REFIT:
        refits = [r for r in records if r.config.extra.get(REFIT_OF) in chosen]
        plain = [r for r in records if REFIT_OF not in r.config.extra]
        return _rows(plain, wanted, "default", split, chosen) + _rows(refits, [], "refits", split, chosen)
    if rule == "default":
        records = [r for r in records if not r.config.trial]
        wanted = [e for e in wanted if not e.config.trial]

    searched_of = searched_by_method(records, wanted) if rule != "default" else {}

    def key(config: RunConfig) -> str:
        return _row_key(config) if rule == "default" else selection_key(config, searched_of[config.method])

    by_key: dict[str, list[RunRecord]] = defaultdict(list)
    for record in records:
        by_key[key(record.config)].append(record)
    missing_by_key: dict[str, list[Expected]] = defaultdict(list)
    for entry in wanted:
        missing_by_key[key(entry.config)].append(entry)
    rows = []
    for rkey in list(by_key) + [k for k in missing_by_key if k not in by_key]:
        runs = by_key.get(rkey, [])
        config = runs[0].config if runs else missing_by_key[rkey][0].config
        searched: list[RunRecord] = []
        choices = select_runs(runs, rule) if rule in SPLIT_OF_RULE else []
        if rule in SPLIT_OF_RULE:  # a candidate without the rule's accuracy (a chain still running) is none
            searched, runs = runs, [c.record for c in choices]
            chosen.update(r.run_id for r in runs)
        row = _row(runs, split) if runs else _empty_row(config)
        row.searched, row.choices = searched, choices
        if rule != "default":
            row.hparams = fixed_setting(row.config, searched_of[row.config.method])
        row.missing = [
            Missing(e.config.task, e.config.seed, e.run_id, e.command) for e in missing_by_key.get(rkey, [])
        ]
        rows.append(row)
    return rows


def _row(runs: list[RunRecord], split: str) -> Row:
    per_task: dict[str, list[RunRecord]] = defaultdict(list)
    for run in runs:
        per_task[run.task].append(run)
    # a chain step that follows another tells the row is sequential (its missing runs need `vdd chain`)
    row = _empty_row(next((r.config for r in runs if PREVIOUS in r.config.inputs), runs[0].config))
    for task, task_runs in per_task.items():
        scored = [r for r in task_runs if r.accuracy(split) is not None]
        values = [r.accuracy(split) for r in scored]
        if values:
            row.accs[task] = _mean(values)
            row.seeds[task] = len(values)
            row.stds[task] = statistics.stdev(values) if len(values) > 1 else None
            row.seed_ids[task] = sorted(r.seed for r in scored)
            row.by_seed[task] = {r.seed: r.accuracy(split) for r in scored}
            floors = [
                accuracy_floor(r.num_classes, r.metrics.get(f"{split}_majority_acc"))
                for r in scored
                if r.num_classes
            ]
            if floors:
                row.floors[task] = max(floors)
        row.params[task] = _mean([r.accounting.params_total for r in task_runs])
        row.task_params[task] = _mean([r.accounting.params_task_equiv for r in task_runs])
        row.macs[task] = _mean([r.accounting.macs for r in task_runs])
    row.seed_ids = {t: row.seed_ids[t] for t in sorted(row.seed_ids)}
    row.all_seeds = sorted({r.seed for r in runs})
    row.runs = list(runs)
    return row


def _empty_row(config: RunConfig) -> Row:
    return Row(config.method, config.method, {}, {}, {}, {}, {}, setting(config.hparams), config=config)


def _inferred_missing(row: Row, tasks: list[str]) -> list[Missing]:
    """Without a sweep: on every task of the group, the seeds the row has on any of its tasks."""
    seeds = row.all_seeds
    out = []
    for task in tasks:
        have = set(row.seed_ids.get(task, []))
        out += [
            Missing(task, s, None, run_command(row.config, task, s, tasks)) for s in seeds if s not in have
        ]
    return out


def run_command(config: RunConfig, task: str, seed: int, tasks: list[str]) -> str:
    """The command that would produce a missing run; ROOT and CKPT are the row's benchmark root and
    backbone checkpoint (named by content in the config, so their paths are the user's to fill in). A
    sequential row's runs come from its chain over the group's tasks, which a relaunch continues."""
    sequential = PREVIOUS in config.inputs
    words = ["vdd", "chain" if sequential else "run", "--method", config.method]
    words += ["--order", ",".join(tasks)] if sequential else ["--task", task]
    words += ["--seed", str(seed), "--benchmark", "ROOT"]
    if config.backbone.get("checkpoint") not in (None, "scratch"):
        words += ["--backbone-checkpoint", "CKPT"]
    for option, default in (("recipe", "residual_adapters"), ("protocol", "train")):
        if getattr(config, option) != default:
            words += [f"--{option}", getattr(config, option)]
    return " ".join(words)


def shown_runs(groups: list[Group]) -> set[str]:
    """The run ids the groups' cells are made of (under a selecting rule, the chosen runs only)."""
    return {record.run_id for group in groups for row in group.rows for record in row.runs}


def row_mean(group: Group, row: Row) -> float | None:
    """Mean accuracy over the group's tasks; None unless the row has every one of them."""
    return _mean([row.accs[t] for t in group.tasks]) if all(t in row.accs for t in group.tasks) else None


def common_seeds(group: Group, row: Row) -> list[int]:
    """The seeds every task of the group has a run of (what a per-seed mean or score can be taken over)."""
    if not all(t in row.by_seed for t in group.tasks):
        return []
    return sorted(set.intersection(*(set(row.by_seed[t]) for t in group.tasks)))


def row_mean_std(group: Group, row: Row) -> float | None:
    """Sample std of the per-seed means over the tasks, over the seeds every task has (2 or more)."""
    seeds = common_seeds(group, row)
    if len(seeds) < 2:
        return None
    return statistics.stdev([_mean([row.by_seed[t][s] for t in group.tasks]) for s in seeds])


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
        group.baselines = {t: baselines[t] for t in group.tasks if t in baselines}
    else:
        candidates = [r for r in group.rows if r.method == BASELINE_METHOD and r.accs]
        if not candidates:
            group.baseline_note = (
                "score: no fine-tuning runs on this benchmark, so no baselines to score against"
            )
            return
        # the fine-tuning row with the most tasks; among those, the one least used as another method's input
        # (a NetTailor teacher is fine-tuning with the teacher's recipe, not the baseline's)
        base = max(candidates, key=lambda r: (len(r.accs), -r.inputs_only))
        baselines = {t: min(a, MAX_SCORED_ACC) for t, a in base.accs.items()}
        group.baselines = dict(baselines)
        which = BASELINE_METHOD if len(candidates) == 1 else base.label
        group.baseline_note = (
            f"score: baselines are this group's {which} accuracies (not the official decathlon "
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
        seeds = common_seeds(group, row)
        if row.score_total is not None and len(seeds) > 1:
            totals = []
            for seed in seeds:
                accs = {t: row.by_seed[t][seed] for t in group.tasks}
                if group.kind != "decathlon":
                    accs = {t: min(a, MAX_SCORED_ACC) for t, a in accs.items()}
                totals.append(decathlon_score(accs, {t: baselines[t] for t in accs})["total"])
            row.score_std = statistics.stdev(totals)


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
