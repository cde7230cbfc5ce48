"""A chain's leaderboard entries are its final network's accuracies, never the steps' own."""

from __future__ import annotations

from dataclasses import replace

import pytest

from vdd_bench.chains import chain_ends, longest_chain, with_final_accuracies
from vdd_bench.config import RunConfig
from vdd_bench.errors import VddError
from vdd_bench.leaderboard import build_groups
from vdd_bench.record import Accounting, BenchmarkInfo, RunRecord


def step(
    run_id: str, task: str, acc: float, previous: str | None, final: dict[str, float] | None = None
) -> RunRecord:
    config = RunConfig(
        benchmark="b",
        benchmark_kind="custom",
        task=task,
        method="lwf",
        hparams={},
        backbone={"name": "resnet26", "width": 0.25, "stem_relu": False, "checkpoint": "c"},
        resolution=36,
        inputs={"previous": previous} if previous else {},
    )
    return RunRecord(
        run_id=run_id,
        config=config,
        benchmark=BenchmarkInfo("custom", "b", "b", ["x", "y", "z"]),
        num_classes=10,
        metrics={"val_acc": acc, "test_acc": acc},
        accounting=Accounting(params_total=1, params_shared=0, params_task=1, params_task_equiv=1, macs=1),
        chain_step=True,
        continual=None if final is None else {"accuracy": {"val": final, "test": final}},
    )


def test_every_step_reads_the_end_of_the_longest_chain_that_continues_it() -> None:
    a = step("a", "x", 90.0, None, {"x": 90.0})
    b = step("b", "y", 80.0, "a", {"x": 70.0, "y": 80.0})
    c = step("c", "z", 60.0, "b", {"x": 30.0, "y": 40.0, "z": 60.0})
    branch = step("d", "z", 65.0, "a", {"x": 50.0, "z": 65.0})  # a second chain from the same first step
    ends = chain_ends([a, b, c, branch])
    assert {k: v.run_id for k, v in ends.items()} == {"a": "c", "b": "c", "c": "c", "d": "d"}
    final = {r.run_id: r for r in with_final_accuracies([a, b, c, branch])}
    assert final["a"].metrics["test_acc"] == 30.0 and final["a"].metrics_at_step["test_acc"] == 90.0
    assert final["b"].metrics["val_acc"] == 40.0 and final["c"].metrics["test_acc"] == 60.0
    assert final["d"].metrics["test_acc"] == 65.0 and final["a"].chain_end == "c"


def test_a_chain_whose_end_is_not_evaluated_has_no_accuracy_in_the_leaderboard() -> None:
    a = step("a", "x", 90.0, None, {"x": 90.0})
    b = step("b", "y", 80.0, "a")  # finished, not evaluated yet
    [group] = build_groups([a, b])
    [row] = group.rows
    assert row.accs == {}  # not the steps' own 90 and 80
    [group] = build_groups([a, replace(b, continual={"accuracy": {"test": {"x": 70.0, "y": 80.0}}})])
    assert group.rows[0].accs == {"x": 70.0, "y": 80.0}


def test_a_bundle_reads_the_longest_chain_in_order_and_refuses_two_of_the_same_length() -> None:
    a, b, c = step("a", "x", 90.0, None), step("b", "y", 80.0, "a"), step("c", "z", 60.0, "b")
    branch = step("d", "z", 65.0, "a")
    assert [r.run_id for r in longest_chain([c, branch, a, b])] == ["a", "b", "c"]
    with pytest.raises(VddError, match="several chains of the same length end in"):
        longest_chain([a, b, branch])
