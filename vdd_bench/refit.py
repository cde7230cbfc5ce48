"""`vdd sweep --refit`: train each setting a search selected on validation again on train+val.

What the decathlon papers report is a network fitted on train+val with the setting chosen on val. For
every method, task and seed of a finished sweep, the `val` rule (`vdd_bench.selection`) picks the setting;
its refit is the same method with the same values under protocol `trainval`, recording in its config which
run it refits (`refit_of`), so that the leaderboard shows it in the train+val table as the refit of the
current choice. A chain method's refit is its chosen chain, refitted step by step.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from vdd_bench.chains import PREVIOUS, setting, with_final_accuracies
from vdd_bench.config import RunRequest, RunSettings, TaskPlanner
from vdd_bench.errors import VddError
from vdd_bench.method import get_method
from vdd_bench.record import RunRecord
from vdd_bench.runner import plan_run
from vdd_bench.selection import REFIT_OF, Choice, select, selection_key
from vdd_bench.store import RunStore
from vdd_bench.tasks.generic import source_task


def plan_refits(requests: list[RunRequest], store: RunStore) -> list[RunRequest]:
    """The refits of the settings `requests` (a sweep's runs, protocol train) select on validation; every
    one of those runs must be done, since one more trial can change a choice."""
    todo = [r.config.run_id for r in requests if not store.is_done(r.config.run_id)]
    if todo:
        raise VddError(
            f"--refit needs the whole search done: {len(todo)} of its {len(requests)} runs are not "
            f"(e.g. {todo[0]}); run the sweep without --refit first"
        )
    if any(r.config.protocol != "train" for r in requests):
        raise VddError("--refit selects on validation: give the sweep with protocol train (the default)")
    by_id = {r.config.run_id: r for r in requests}
    records = with_final_accuracies([store.record(run_id) for run_id in by_id])
    by_key: dict[str, list[RunRecord]] = defaultdict(list)
    for record in records:
        by_key[selection_key(record.config)].append(record)
    refits: list[RunRequest] = []
    for candidates in by_key.values():
        choices = select(candidates, "val")
        chains: dict[str, list[Choice]] = defaultdict(list)
        for choice in choices:
            if choice.record.chain_end:
                chains[choice.record.chain_end].append(choice)
            else:
                refits.append(_refit(choice.record, by_id[choice.record.run_id]))
        for steps in chains.values():
            refits += _refit_chain([c.record for c in steps], by_id)
    return refits


def _settings(request: RunRequest) -> RunSettings:
    """The settings of `request` under protocol trainval, its values taken as they are (already scaled)."""
    config = request.config
    return RunSettings(
        root=request.root,
        test_labels=request.test_labels,
        backbone_checkpoint=request.backbone_checkpoint,
        backbone=config.backbone_spec,
        resolution=config.resolution,
        recipe=config.recipe,
        protocol="trainval",
    )


def _refit(record: RunRecord, request: RunRequest) -> RunRequest:
    config = record.config
    return plan_run(
        _settings(request), config.task, config.method, config.hparams, config.seed, {REFIT_OF: record.run_id}
    )


def _refit_chain(steps: list[RunRecord], by_id: dict[str, RunRequest]) -> list[RunRequest]:
    """The chosen chain again under trainval, in its order, each step recording the step it refits."""
    first = by_id[steps[0].run_id]
    settings = _settings(first)
    of_task = {r.task: r.run_id for r in steps}
    order = [r.task for r in sorted(steps, key=lambda r: len(_ancestors(r, by_id)))]
    chosen: dict[str, Any] = setting(steps[0].config.hparams)
    method, seed = steps[0].method, steps[0].seed

    def plan(task: str, step: dict[str, Any], inputs: dict[str, RunRequest]) -> RunRequest:
        extra = {REFIT_OF: of_task[task]}
        return plan_run(settings, task, method, {**chosen, **step}, seed, extra, inputs)

    planner = TaskPlanner(plan, source_task(settings.benchmark), chosen)
    return get_method(method).plan_runs(order, planner)


def _ancestors(record: RunRecord, by_id: dict[str, RunRequest]) -> list[str]:
    """The run ids of the chain steps before `record`, nearest first."""
    out, current = [], by_id[record.run_id]
    while PREVIOUS in current.inputs:
        current = current.inputs[PREVIOUS]
        out.append(current.config.run_id)
    return out
