"""The continual protocol: one network learns the tasks of a benchmark one after another.

A chain is a list of ordinary runs, one per task in the chosen order; run k names run k-1 as its input
"previous" (planned by the method: `sequential.SequentialMethod.plan_runs`), so its id encodes the whole
history. After each step its network is evaluated on every task seen so far (`sequential.evaluate_step`). The
accuracy matrix R[i][j] (accuracy on task j after learning task i), the final accuracy and the forgetting
of each task are read back from those files (`chain_result`).

A killed chain is relaunched with the same command: finished steps are done runs and are skipped, the
interrupted step resumes from its epoch-end checkpoint, and the rest follow.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vdd_bench import chains
from vdd_bench.chains import CONTINUAL_FILE, ChainResult
from vdd_bench.config import RunRequest, RunSettings
from vdd_bench.device import Device, pick_device
from vdd_bench.errors import VddError
from vdd_bench.runner import execute, task_planner
from vdd_bench.sequential import sequential_method
from vdd_bench.store import RunStore


def plan_chain(
    settings: RunSettings,
    method: str,
    order: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    seed: int = 0,
) -> list[RunRequest]:
    """One run per task of `order` (default: the benchmark's task order), each reading the one before."""
    order = list(order or settings.benchmark.task_names())
    return sequential_method(method).plan_runs(order, task_planner(settings, method, overrides or {}, seed))


def run_chain(
    requests: list[RunRequest],
    results: Path,
    device: Device | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[int, int, int], None] | None = None,
) -> ChainResult:
    """Run (or resume) every step in order and evaluate each; `on_epoch_end(step, phase, epoch)`."""
    device = device or pick_device()
    RunStore(results).mark_entries(request.config.run_id for request in requests)
    for step, request in enumerate(requests):
        method = sequential_method(request.config.method)
        hook = None
        if on_epoch_end is not None:

            def hook(phase: int, epoch: int, step: int = step) -> None:
                on_epoch_end(step, phase, epoch)

        execute(request, Path(results), device, progress, hook)  # a step that diverges is settled there
        method.after_run(request, results, device)
    return chain_result(results, requests[-1].config.run_id)


def chain_result(results: Path, last_run_id: str, split: str = "test") -> ChainResult:
    """The accuracy matrix of the chain ending at `last_run_id`, from its steps' `continual.json` files."""
    store = RunStore(results)
    steps: list[dict[str, Any]] = []
    run_id: str | None = last_run_id
    while run_id is not None:
        path = store.run_dir(run_id) / CONTINUAL_FILE
        if not path.exists():
            raise VddError(f"step {run_id} has no {CONTINUAL_FILE}: relaunch the chain to evaluate it")
        step = json.loads(path.read_text())
        steps.append(step)
        run_id = step["previous"]
    steps.reverse()
    tasks = steps[-1]["tasks"]
    matrix = [[step["accuracy"][split].get(task) for task in tasks] for step in steps]
    method = store.record(last_run_id).method
    return ChainResult(method, [s["run_id"] for s in steps], tasks, matrix, split)


def chain_ends(results: Path) -> list[str]:
    """Run ids of the last step of every chain in the store whose last step is evaluated."""
    ends = chains.chain_ends(list(RunStore(results).done_records()))
    return sorted({end.run_id for end in ends.values() if end.continual is not None})


def chain_results(results: Path, split: str = "test") -> list[ChainResult]:
    """Every chain in the store whose last step is evaluated."""
    return [chain_result(results, run_id, split) for run_id in chain_ends(results)]
