"""The challenge submission file (one JSON list of {"image_id", "category_id"} for every test image of every
task) from one method's finished runs, checked to cover each test image of the benchmark exactly once.

Each task's predictions are those behind the leaderboard's accuracies: what its run saved (`predictions.npz`:
test image ids, predicted class index, and the task's category ids, so that class i is category
`category_ids[i]`); for a chain (PackNet, LwF) those of the network at the end of the chain
(`continual-predictions.npz` of the chain's last step, see `vdd_bench.chains`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from vdd_bench.benchmark import Benchmark
from vdd_bench.chains import CHAIN_PREDICTIONS_FILE, with_final_accuracies
from vdd_bench.errors import VddError
from vdd_bench.record import RunRecord
from vdd_bench.store import RunStore, atomic_write_bytes, internal_runs


def select_runs(
    records: Iterable[RunRecord],
    bench: Benchmark,
    method: str,
    seed: int = 0,
    run_ids: Iterable[str] = (),
    entry_ids: set[str] | None = None,
) -> dict[str, RunRecord]:
    """One finished run per task of the benchmark: `method` at `seed`, or the runs named in `run_ids`; a run
    that only serves as another run's input (`vdd_bench.store.internal_runs`) only when named."""
    pinned = set(run_ids)
    records = list(records)
    internal = internal_runs(records, entry_ids)
    by_task: dict[str, list[RunRecord]] = defaultdict(list)
    other_benchmarks = set()
    serving: dict[str, int] = defaultdict(int)  # task -> runs that only serve as other runs' inputs
    for record in records:
        config = record.config
        if record.internal or config.method != method or config.seed != seed:
            continue
        if config.benchmark != bench.fingerprint:
            other_benchmarks.add(config.benchmark)
            continue
        if record.run_id in internal and record.run_id not in pinned:
            serving[record.task] += 1
            continue
        if pinned and record.run_id not in pinned:
            continue
        by_task[record.task].append(record)
    chosen = {}
    for task in bench.task_names():
        runs = by_task.get(task, [])
        if not runs:
            hint = (
                f" (its runs are on benchmark(s) {', '.join(sorted(other_benchmarks))}, not "
                f"{bench.fingerprint}: pass --test-labels as given to `vdd run`)"
                if other_benchmarks and not by_task
                else f" (its {serving[task]} run(s) there only serve other methods, e.g. as NetTailor's "
                "teacher: pass --run RUN_ID to submit one)"
                if serving[task]
                else ""
            )
            raise VddError(
                f"no finished run of {method} (seed {seed}) on task {task}{hint}: run "
                f"`vdd run --method {method} --task {task} --seed {seed} ...` or `vdd sweep` first"
            )
        if len(runs) > 1:
            ids = ", ".join(r.run_id for r in runs)
            raise VddError(
                f"task {task} has {len(runs)} finished runs of {method} (seed {seed}) with other settings "
                f"({ids}): pass --run RUN_ID for the one to submit (after a search, `vdd leaderboard "
                "--show-choice` names the run chosen on validation)"
            )
        chosen[task] = runs[0]
    return chosen


def task_predictions(
    bench: Benchmark, task: str, folder: Path, run_id: str, chain_end: Path | None = None
) -> list[dict[str, int]]:
    """The entries of one task (from `chain_end`'s final network for a chain step), checked against the
    benchmark's test images and categories."""
    path = folder / "predictions.npz"
    if not path.is_file():
        raise VddError(f"run {run_id} (task {task}) has no predictions.npz: run it again to save them")
    with np.load(path) as saved:
        ids, preds, categories = saved["test_image_ids"], saved["test_pred"], saved["category_ids"]
    if chain_end is not None:
        final = chain_end / CHAIN_PREDICTIONS_FILE
        if not final.is_file():
            raise VddError(
                f"run {run_id} (task {task}) is a chain step and the chain's last step {chain_end.name} has "
                f"no {CHAIN_PREDICTIONS_FILE}: relaunch the chain to evaluate its final network"
            )
        with np.load(final) as saved:
            ids, preds = saved[f"{task}.test_image_ids"], saved[f"{task}.test_pred"]
    expected_categories = bench.tasks[task].category_ids
    if tuple(int(c) for c in categories) != expected_categories:
        raise VddError(f"run {run_id}: its category ids are not those of task {task} in {bench.root}")
    wanted = bench.split(task, "test").image_ids
    got = [int(i) for i in ids]
    if len(got) != len(set(got)) or set(got) != set(wanted):
        missing, extra = len(set(wanted) - set(got)), len(set(got) - set(wanted))
        raise VddError(
            f"run {run_id} (task {task}) predicts {len(got)} test images, the benchmark has {len(wanted)} "
            f"({missing} missing, {extra} not in the benchmark, {len(got) - len(set(got))} repeated)"
        )
    return [
        {"image_id": image_id, "category_id": int(categories[p])}
        for image_id, p in zip(got, preds.tolist(), strict=True)
    ]


def build_submission(
    bench: Benchmark, results: Path, method: str, seed: int = 0, run_ids: Iterable[str] = ()
) -> tuple[list[dict[str, int]], dict[str, str]]:
    """All entries, in the benchmark's task order, and the run each task's predictions come from."""
    store = RunStore(results)
    records = with_final_accuracies(list(store.done_records()))
    chosen = select_runs(records, bench, method, seed, run_ids, store.entry_ids())
    entries: list[dict[str, int]] = []
    for task, record in chosen.items():
        end = store.run_dir(record.chain_end) if record.chain_end is not None else None
        entries += task_predictions(bench, task, store.run_dir(record.run_id), record.run_id, end)
    ids = [e["image_id"] for e in entries]
    if len(ids) != len(set(ids)):
        raise VddError("two tasks share test image ids: the benchmark's ids are not unique across tasks")
    return entries, {task: record.run_id for task, record in chosen.items()}


def write_submission(entries: list[dict[str, int]], out: Path) -> None:
    """One JSON list, one entry per line (small diffs, still one JSON document), written atomically."""
    body = ",\n".join(json.dumps(e, sort_keys=True) for e in entries)
    atomic_write_bytes(out, f"[\n{body}\n]\n".encode())
