"""Rules for any benchmark root in the decathlon format, official or not."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from vdd_bench.tasks.decathlon import DECATHLON, NATIVE_RESOLUTION, SOURCE_TASK, TaskFacts

if TYPE_CHECKING:
    from vdd_bench.benchmark import Benchmark


def task_facts(task: str) -> TaskFacts | None:
    """The official facts when `task` is one of the ten decathlon tasks, else None."""
    return DECATHLON.get(task)


def source_task(benchmark: Benchmark) -> str:
    """The task the shared network is pre-trained on.

    imagenet12 for the decathlon, the toy's own source for the toy, and for any other root the task with
    the most training images (first in task order on a tie), e.g. tinyimagenet100 for the mini-decathlon.
    """
    if benchmark.kind == "decathlon":
        return SOURCE_TASK
    if benchmark.kind == "toy":
        return importlib.import_module("vdd_bench.tasks.toy").TOY_SOURCE
    names = benchmark.task_names()
    sizes = [len(benchmark.split(t, "train")) for t in names]
    return names[sizes.index(max(sizes))]


def native_resolution(benchmark: Benchmark) -> int:
    """Shorter side of the benchmark's images: 72 px for the decathlon and other roots, the toy's own size."""
    if benchmark.kind == "toy":
        return importlib.import_module("vdd_bench.tasks.toy").TOY_RESOLUTION
    return NATIVE_RESOLUTION
