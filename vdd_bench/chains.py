"""Which network a chain step's leaderboard entry is: the one at the end of its chain.

A sequential method (PackNet, LwF, an Avalanche strategy) learns tasks one after another with one network;
each task's step is a run, and after every step that network is evaluated on every task learned so far
(`continual.json` in the step's folder, attached to its record by the run store as `RunRecord.continual`).
What a user of the method gets is the network at the end of the chain, so a step's leaderboard accuracy is
that network's accuracy on the step's task, not the accuracy right after the step (the diagonal of the
accuracy matrix, which `vdd leaderboard --continual` shows). A chain whose last step is not evaluated yet
has no final accuracies: its tasks show as missing, never as the step's own numbers.

Pure functions over records (no torch): the leaderboard and the submission both read them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from vdd_bench.errors import VddError
from vdd_bench.record import RunRecord

CONTINUAL_FILE = "continual.json"
CHAIN_PREDICTIONS_FILE = "continual-predictions.npz"  # test predictions of the step's network, per task
PREVIOUS = "previous"  # the input naming a chain step's previous step


# Hyper-parameters a method's `plan_runs` sets per run (PackNet leaves the chain's last task unpruned;
# `lwf_per_task`'s run on the source task is the pre-trained network): the runs of one setting differ in
# them, so rows and bundles group them without these keys.
STEP_KEYS = ("last_in_chain", "source_task")


def setting(hparams: dict[str, Any]) -> dict[str, Any]:
    """A run's hyper-parameters as one setting of its method: without the per-step keys of a chain."""
    return {k: v for k, v in hparams.items() if k not in STEP_KEYS}


def is_chain_step(record: RunRecord) -> bool:
    return record.chain_step or PREVIOUS in record.config.inputs or record.continual is not None


def _previous(record: RunRecord) -> str | None:
    return record.config.inputs.get(PREVIOUS)


def _chains(records: list[RunRecord]) -> list[list[RunRecord]]:
    """Every chain among the chain steps in `records`, each from its last step back to its first (a step
    continued by two chains, a chain and a branch of it, is in both)."""
    steps = {r.run_id: r for r in records if is_chain_step(r)}
    continued = {_previous(r) for r in steps.values()}
    chains = []
    for run_id, record in steps.items():
        if run_id in continued:
            continue
        chain, current = [], record
        while current is not None:
            chain.append(current)
            current = steps.get(_previous(current) or "")
        chains.append(chain)
    return chains


def chain_ends(records: list[RunRecord]) -> dict[str, RunRecord]:
    """For every chain step among `records`, the record of the last step of its chain (by run id).

    A step continued by two chains (a store holding a chain and a branch of it) belongs to the longer one
    (then the smaller run id), so every step has one final network."""
    owner: dict[str, RunRecord] = {}
    for chain in sorted(_chains(records), key=lambda c: (-len(c), c[0].run_id)):
        for step in chain:
            owner.setdefault(step.run_id, chain[0])
    return owner


def with_final_accuracies(records: list[RunRecord]) -> list[RunRecord]:
    """The records with every chain step's `metrics` replaced by its chain's final network's accuracy on
    its task (None while the chain's end is not evaluated); the step's own metrics move to
    `metrics_at_step` and the chain's last run id to `chain_end`. Other records are returned as they are."""
    ends = chain_ends(records)
    out = []
    for record in records:
        end = ends.get(record.run_id)
        if end is None:
            out.append(record)
            continue
        accuracy = (end.continual or {}).get("accuracy", {})
        final = {f"{split}_acc": accuracy.get(split, {}).get(record.task) for split in ("val", "test")}
        metrics = {**record.metrics, **final}  # the task's other facts (e.g. its majority class) stay
        out.append(replace(record, metrics=metrics, metrics_at_step=record.metrics, chain_end=end.run_id))
    return out


def longest_chain(records: list[RunRecord]) -> list[RunRecord]:
    """The steps of the longest chain among `records`, in chain order (last step last); two chains of that
    length are refused (a store holding two settings of a method: the user chooses one)."""
    chains = sorted(_chains(records), key=len, reverse=True)
    if len(chains) > 1 and len(chains[0]) == len(chains[1]):
        ends = ", ".join(c[0].run_id for c in chains if len(c) == len(chains[0]))
        raise VddError(f"several chains of the same length end in {ends}: choose one with --set KEY=VALUE")
    return chains[0][::-1] if chains else []


@dataclass
class ChainResult:
    """R[i][j]: accuracy (%) on task j after learning task i (None above the diagonal)."""

    method: str
    run_ids: list[str]
    tasks: list[str]
    matrix: list[list[float | None]]
    split: str

    @property
    def final(self) -> dict[str, float | None]:
        return dict(zip(self.tasks, self.matrix[-1], strict=True))

    @property
    def forgetting(self) -> dict[str, float | None]:
        """Per task but the last: best accuracy at any earlier step minus the final one (Chaudhry et al.)."""
        out: dict[str, float | None] = {}
        for j, task in enumerate(self.tasks[:-1]):
            earlier = [row[j] for row in self.matrix[j:-1] if row[j] is not None]
            last = self.matrix[-1][j]
            out[task] = max(earlier) - last if earlier and last is not None else None
        return out

    @property
    def mean_final(self) -> float | None:
        values = list(self.final.values())
        return sum(values) / len(values) if None not in values else None

    @property
    def mean_forgetting(self) -> float | None:
        values = list(self.forgetting.values())
        return sum(values) / len(values) if values and None not in values else None

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "run_ids": self.run_ids,
            "tasks": self.tasks,
            "split": self.split,
            "matrix": self.matrix,
            "final": self.final,
            "forgetting": self.forgetting,
            "mean_final": self.mean_final,
            "mean_forgetting": self.mean_forgetting,
        }
