"""A run whose training diverges is a settled outcome, not a failure: a search trial whose lr was drawn too
high diverges again on every attempt, so relaunches leave it (and every run reading it), `vdd status`
counts it, the leaderboard never chooses it and says so, and `--retry-diverged` runs it again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from vdd_bench.cli import main
from vdd_bench.execution import run_request
from vdd_bench.local_launcher import LocalLauncher
from vdd_bench.method import METHODS
from vdd_bench.search import LogUniform
from vdd_bench.store import RunStore
from vdd_bench.sweep import SweepSpec

DIVERGING_LR = 1e4  # SGD at this lr makes the weights non-finite within the first epoch on the toy


@pytest.fixture
def finetune_search_that_diverges(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fine-tuning's search space with every drawn lr far too high: trial 0 (the defaults) trains,
    every other trial diverges."""
    cls = METHODS.get("finetune")
    monkeypatch.setattr(cls, "search_space", {"lr": LogUniform(DIVERGING_LR, 10 * DIVERGING_LR)})


def test_a_diverged_search_trial_is_settled_counted_and_never_chosen(
    toy_root: Path, toy_backbone: Path, tmp_path: Path, finetune_search_that_diverges: None, monkeypatch
) -> None:
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"benchmark: {toy_root}\nbackbone_checkpoint: {toy_backbone}\nmethods: [finetune]\ntasks: [colors]\n"
        "search: {trials: 2}\nhparams:\n  finetune: {epochs: 2, batch_size: 32}\n"
    )
    results = ["--results", str(tmp_path / "results")]
    cli = CliRunner()
    ran = cli.invoke(main, ["sweep", "--file", str(sweep), *results])
    assert ran.exit_code == 0, ran.output  # a diverged trial is an outcome, not a failed sweep
    assert "2 runs: 0 already done, 1 completed, 0 failed, 1 diverged (settled" in ran.output
    store = RunStore(tmp_path / "results")
    [diverged] = list(store.diverged_configs())
    assert diverged.trial == 1 and not store.is_done(diverged.run_id)
    why = (store.run_dir(diverged.run_id) / "diverged").read_text()
    assert "became non-finite at epoch 1" in why and not (store.run_dir(diverged.run_id) / "failed").exists()

    def no_training(*args, **kwargs):
        raise AssertionError("a relaunch trained a settled run")

    monkeypatch.setattr("vdd_bench.local_launcher.run_request", no_training)
    again = cli.invoke(main, ["sweep", "--file", str(sweep), *results])
    assert again.exit_code == 0, again.output
    assert "2 runs: 1 already done, 0 completed, 0 failed, 1 diverged" in again.output
    listed = cli.invoke(main, ["sweep", "--file", str(sweep), *results, "--dry-run"]).output
    assert f"diverged\t{diverged.run_id}\ttrial 1" in listed
    status = cli.invoke(main, ["status", "--sweep", str(sweep), *results])
    assert status.output.rstrip().endswith(
        "2 runs: 1 done, 0 running, 0 pending, 0 failed, 1 diverged, 0 todo"
    )

    board = cli.invoke(main, ["leaderboard", *results, "--show-choice", "--format", "json"])
    assert board.exit_code == 0, board.output
    note = (
        f"1 run(s) settled as diverged, without a result: finetune/colors seed 0 trial 1 ({diverged.run_id})"
    )
    assert note in board.stderr
    [row] = json.loads(board.stdout)[0]["rows"]
    [done] = list(store.done_records())  # the one trial with a result, the defaults, is the cell
    assert (
        done.config.trial == 0 and row["accuracy"] == {"colors": done.accuracy("test")} and not row["missing"]
    )

    monkeypatch.setattr("vdd_bench.local_launcher.run_request", run_request)  # --retry-diverged trains it
    retried = cli.invoke(main, ["sweep", "--file", str(sweep), *results, "--retry-diverged"])
    assert "1 run(s) settled as diverged will run again" in retried.output
    assert "0 completed, 0 failed, 1 diverged" in retried.output


def test_the_runs_reading_a_diverged_run_are_settled_with_it(
    toy_root: Path, toy_backbone: Path, tmp_path: Path, one_thread
) -> None:
    """NetTailor whose student diverges (two workers) and an LwF chain whose first step diverges (one
    process): the runs downstream are settled as diverged, naming the input, and nothing is failed."""
    spec = SweepSpec(
        benchmark=str(toy_root),
        methods=["nettailor", "lwf"],
        tasks=["colors", "shapes"],
        backbone_checkpoint=str(toy_backbone),
        epoch_scale=0.02,
        hparams={
            "all": {"batch_size": 32},
            "nettailor": {"candidates": [1], "teacher_lr": DIVERGING_LR},
            "lwf": {"lr": DIVERGING_LR},
        },
    )
    requests = spec.expand()
    nettailor = [r for r in requests if r.config.method == "nettailor"]
    chain = [r for r in requests if r.config.method == "lwf"]
    parallel = LocalLauncher(tmp_path / "two", progress=False, jobs=2, threads=1).launch(nettailor)
    sequential = LocalLauncher(tmp_path / "one", progress=False).launch(chain)
    for summary, asked in ((parallel, nettailor), (sequential, chain)):
        assert not summary.failed and summary.completed == 0
        assert sorted(run_id for run_id, _ in summary.diverged) == sorted(r.config.run_id for r in asked)
    selection = nettailor[0]  # its teacher trains at lr 1e4 and answers with logits the student cannot follow
    student = selection.inputs["candidate_1"].inputs["student"].config.run_id
    store = RunStore(tmp_path / "two")
    assert "loss became nan" in (store.run_dir(student) / "diverged").read_text()
    candidate = selection.inputs["candidate_1"].config.run_id
    assert (store.run_dir(candidate) / "diverged").read_text() == f"input student ({student}) diverged\n"
    second_step = dict(sequential.diverged)[chain[1].config.run_id]
    assert second_step == f"input previous ({chain[0].config.run_id}) diverged"
    relaunch = LocalLauncher(tmp_path / "two", progress=False, jobs=2, threads=1).launch(nettailor)
    assert relaunch.diverged_before == len(nettailor) and not relaunch.diverged and not relaunch.completed


def test_a_diverged_run_a_sweep_expects_reads_missing_with_the_command_that_runs_it_again(
    toy_root: Path, toy_backbone: Path, tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"benchmark: {toy_root}\nbackbone_checkpoint: {toy_backbone}\nmethods: [finetune]\ntasks: [colors]\n"
        f"hparams:\n  finetune: {{epochs: 1, batch_size: 32, lr: {DIVERGING_LR}}}\n"
    )
    results = ["--results", str(tmp_path / "results")]
    cli = CliRunner()
    assert "1 diverged" in cli.invoke(main, ["sweep", "--file", str(sweep), *results]).output
    board = cli.invoke(main, ["leaderboard", *results, "--sweep", str(sweep)])
    assert board.exit_code == 0, board.output
    [run_id] = [c.run_id for c in RunStore(tmp_path / "results").diverged_configs()]
    assert f"run {run_id}: `vdd sweep --file {sweep} --retry-diverged`" in board.stdout
