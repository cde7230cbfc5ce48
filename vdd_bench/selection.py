"""Model selection: which of a method's settings (search trials, or settings run by hand) a table reports.

The settings of a method that differ only in hyper-parameters its search space varies compete for one row
(`selection_key`); their other values (the budget: epochs, batch size...) and the backbone checkpoint
stay apart. For each task and seed the rule picks one run, whose test accuracy is the cell; seeds are then
averaged as usual. A sequential method's unit is its whole chain (one network serves every task), so for
each seed the rule picks one chain, by its final network's mean over the tasks.

- ``val``: the best validation accuracy. It never reads a test accuracy: permuting the test labels cannot
  change a choice (tests/test_selection.py).
- ``oracle``: the best test accuracy: an upper bound on what a search can find, never a result.
- ``default``: trial 0 only (the method's defaults, or the values set by hand), every setting its own row.

Ties go to the lower trial number, then the smaller run id, so the same records always give the same
choice. Pure functions over records; the search spaces come from the method registry, which the caller
loads only when some cell has more than one setting to choose from.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from vdd_bench.chains import setting
from vdd_bench.config import RunConfig, canonical_json
from vdd_bench.errors import VddError
from vdd_bench.record import RunRecord

RULES = ("val", "oracle", "default")
SPLIT_OF_RULE = {"val": "val", "oracle": "test"}  # the accuracy each selecting rule compares
REFIT = "refit"  # a train+val group's rule: the refits of the settings selected on validation
REFIT_OF = "refit_of"  # the config `extra` key of a refit: the run id of the selected run it refits


def searched_keys(method: str) -> frozenset[str]:
    """The keys a method's search varies; none for a method this installation does not have."""
    from vdd_bench.method import METHODS

    try:
        return frozenset(METHODS.get(method).search_space)
    except VddError:
        return frozenset()


def fixed_setting(config: RunConfig, searched: list[str] | None = None) -> dict[str, Any]:
    """A run's values of the keys its method's search does not vary (its budget, its constants); `searched`
    as its record says, else from the method registry."""
    keys = searched_keys(config.method) if searched is None else frozenset(searched)
    return {k: v for k, v in setting(config.hparams).items() if k not in keys}


def selection_key(config: RunConfig, searched: list[str] | None = None) -> str:
    """What the settings competing for one row share: the method, the backbone checkpoint and every value
    its search does not vary."""
    fixed = fixed_setting(config, searched)
    return canonical_json([config.method, fixed, config.backbone.get("checkpoint")])


@dataclass(frozen=True)
class Choice:
    """The run chosen for one task and seed, what it was chosen on, and among how many settings."""

    record: RunRecord
    score: float  # the accuracy the rule compared (validation for `val`)
    candidates: int

    @property
    def values(self) -> dict[str, Any]:
        """The chosen run's values of its method's searched keys."""
        record = self.record
        searched = searched_keys(record.method) if record.searched is None else frozenset(record.searched)
        return {k: v for k, v in sorted(record.config.hparams.items()) if k in searched}


def select(records: list[RunRecord], rule: str) -> list[Choice]:
    """One choice per task and seed among `records` (the runs of one selection key): the run the rule
    prefers, or for a chain method every step of the chain it prefers. A unit where no candidate has the
    rule's accuracy (a train+val run has no validation accuracy) gets no choice."""
    if rule not in SPLIT_OF_RULE:
        raise VddError(f"unknown selection rule {rule!r}: use {', '.join(SPLIT_OF_RULE)}")
    split = SPLIT_OF_RULE[rule]
    # the candidates of each unit: (task, seed) for independent runs, (seed,) for chains, one a chain
    units: dict[tuple[Any, ...], dict[str, list[RunRecord]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        unit = (record.seed,) if record.chain_end else (record.task, record.seed)
        units[unit][record.chain_end or record.run_id].append(record)
    choices = []
    for candidates in units.values():
        ranked, longest = [], max(len(runs) for runs in candidates.values())
        for name, runs in candidates.items():
            values = [r.accuracy(split) for r in runs]
            if len(runs) == longest and None not in values:  # a chain still running does not compete
                # best accuracy first, then the lower trial, then the smaller id
                ranked.append((-sum(values) / len(values), runs[0].config.trial, name, runs))
        if ranked:
            score, _, _, runs = min(ranked, key=lambda entry: entry[:3])
            choices += [Choice(r, -score, len(ranked)) for r in runs]  # the settings that competed
    return choices
