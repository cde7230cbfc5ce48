"""`vdd sweep --jobs N`: runs at once in worker processes, inputs first, failures contained, claims kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from vdd_bench.execution import live_claim_checker
from vdd_bench.local_launcher import LocalLauncher
from vdd_bench.record import RunRecord
from vdd_bench.store import RunStore, claimed
from vdd_bench.sweep import SweepSpec

SMALL = {"all": {"batch_size": 32}, "nettailor": {"candidates": [1]}}


def _requests(toy_root: Path, toy_backbone: Path, methods: list[str]) -> list:
    spec = SweepSpec(
        benchmark=str(toy_root),
        methods=methods,
        tasks=["colors", "shapes"],
        backbone_checkpoint=str(toy_backbone),
        epoch_scale=0.02,
        hparams={k: v for k, v in SMALL.items() if k == "all" or k in methods},
    )
    return spec.expand()


def comparable(record: RunRecord) -> dict:
    return {k: v for k, v in record.to_json().items() if k != "timing"}


def test_two_jobs_give_the_records_of_one_job_inputs_first(
    toy_root: Path, toy_backbone: Path, tmp_path: Path, one_thread
) -> None:
    """NetTailor's teacher -> student -> candidate -> selection and two plain methods, two workers of one
    thread each: every run done, each record the one the sequential launcher writes with one thread."""
    requests = _requests(toy_root, toy_backbone, ["feature", "finetune", "nettailor"])
    sequential = LocalLauncher(tmp_path / "one", progress=False).launch(requests)
    parallel = LocalLauncher(tmp_path / "two", progress=False, jobs=2, threads=1).launch(requests)
    assert parallel.completed == sequential.completed == len(requests) and not parallel.failed
    one, two = RunStore(tmp_path / "one"), RunStore(tmp_path / "two")
    ids = sorted(p.name for p in one.runs.iterdir())
    assert ids == sorted(p.name for p in two.runs.iterdir()) and len(ids) > len(requests)  # inputs too
    for run_id in ids:
        assert comparable(two.record(run_id)) == comparable(one.record(run_id)), run_id


def test_a_failed_input_blocks_only_the_runs_that_read_it(
    toy_root: Path, toy_backbone: Path, tmp_path: Path
) -> None:
    requests = _requests(toy_root, toy_backbone, ["feature", "nettailor"])
    [selection] = [r for r in requests if r.config.method == "nettailor" and r.config.task == "shapes"]
    teacher = selection.inputs["teacher"].config.run_id
    store = RunStore(tmp_path)
    store.run_dir(teacher).mkdir(parents=True)
    (store.run_dir(teacher) / "checkpoint.pt").write_bytes(b"not a checkpoint")
    summary = LocalLauncher(tmp_path, progress=False, jobs=2, threads=1).launch(requests)
    failed = dict(summary.failed)
    assert list(failed) == [selection.config.run_id]  # the runs asked for: inputs are not counted
    assert failed[selection.config.run_id].startswith("blocked: input ")
    assert summary.completed == len(requests) - 1
    student = selection.inputs["student"].config.run_id
    assert (store.run_dir(student) / "failed").read_text() == (
        f"blocked: input teacher ({teacher}) failed: relaunch the sweep once it is fixed\n"
    )


def test_a_run_another_process_holds_is_skipped(toy_root: Path, toy_backbone: Path, tmp_path: Path) -> None:
    requests = _requests(toy_root, toy_backbone, ["feature"])
    held = requests[0].config.run_id
    with claimed(RunStore(tmp_path).run_dir(held), live_claim_checker()):
        summary = LocalLauncher(tmp_path, progress=False, jobs=2, threads=1).launch(requests)
    assert [run_id for run_id, _ in summary.claimed] == [held] and summary.completed == 1


def test_settings_refuse_zero_jobs(tmp_path: Path) -> None:
    from vdd_bench.errors import VddError

    with pytest.raises(VddError, match="--jobs 0: give at least 1"):
        LocalLauncher(tmp_path, jobs=0)
    assert LocalLauncher(tmp_path, jobs=2).threads >= 1
