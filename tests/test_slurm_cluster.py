"""Sweeps through a real SLURM cluster (slurm/cluster/start.sh; `.ci/run` starts one): the same leaderboard
as the local launcher, a failed run shown by `vdd status` and resubmitted alone, a chain run in order
through dependencies, a requeued job resuming to the same record, and a finished sweep submitting nothing.

Skipped when no cluster answers (SLURM_CONF unset or `sinfo` failing)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from vdd_bench.cli import main
from vdd_bench.config import RunSettings
from vdd_bench.record import RunRecord
from vdd_bench.runner import execute, plan_run
from vdd_bench.slurm import scheduler
from vdd_bench.slurm.launcher import SlurmLauncher, read_submission, wait_for
from vdd_bench.slurm.profile import SlurmProfile
from vdd_bench.store import RunStore

PROFILE = Path(__file__).resolve().parents[1] / "slurm" / "profiles" / "local-test.yaml"

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(
        not os.environ.get("SLURM_CONF") or not scheduler.reachable(),
        reason="no SLURM cluster reachable (start one: slurm/cluster/start.sh, then source its env.sh)",
    ),
]


def comparable(record: RunRecord) -> dict:
    return {k: v for k, v in record.to_json().items() if k != "timing"}


def sacct_times(job_id: str) -> tuple[str, str]:
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "Start,End", "-j", job_id], capture_output=True, text=True
    ).stdout
    start, _, end = out.strip().splitlines()[-1].partition("|")
    return start, end


def test_a_toy_sweep_through_slurm(toy_root: Path, toy_backbone: Path, tmp_path: Path, one_thread) -> None:
    args = [
        "sweep",
        "--benchmark",
        str(toy_root),
        "--methods",
        "finetune,feature,packnet",
        "--tasks",
        "colors,shapes",
        "--backbone-checkpoint",
        str(toy_backbone),
        "--epoch-scale",
        "0.02",
        "--set",
        "batch_size=32",
        "--no-progress",
    ]
    cli = CliRunner()
    local, cluster = tmp_path / "local", tmp_path / "slurm"
    done = cli.invoke(main, [*args, "--results", str(local)])
    assert done.exit_code == 0, done.output

    on_slurm = [*args, "--results", str(cluster), "--launcher", "slurm", "--profile", str(PROFILE), "--wait"]
    ids = [line.split("\t")[1] for line in cli.invoke(main, [*on_slurm, "--dry-run"]).output.splitlines()]
    [broken] = [run_id for run_id in ids if run_id.startswith("feature--shapes--")]
    folder = RunStore(cluster).run_dir(broken)
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"not a checkpoint")  # a corrupted input of one run

    first = cli.invoke(main, on_slurm)
    assert first.exit_code == 1, first.output
    assert "6 runs (inputs included): 0 already done, 0 queued or running, 6 submitted in 4 job array(s)" in (
        first.output
    )
    # the chain: step 2 waits for step 1 (afterany) and starts after it ended
    [step1] = re.findall(r"job (\d+): packnet level 0", first.output)
    assert re.search(rf"job \d+: packnet level 1, 1 run\(s\) after {step1}\b", first.output)
    steps = [read_submission(RunStore(cluster).run_dir(i))["job_id"] for i in ids if i.startswith("packnet")]
    assert sacct_times(steps[1])[0] >= sacct_times(steps[0])[1]

    status = json.loads(cli.invoke(main, ["status", "--results", str(cluster), "--json"]).output)
    states = {s["run_id"]: s for s in status}
    assert [s["state"] for s in status].count("done") == 5
    assert states[broken]["state"] == "failed"
    assert states[broken]["error"].endswith("to restart the run from its first epoch")  # "no readable ..."
    assert Path(states[broken]["log"]).exists() and states[broken]["log"].endswith("_log.err")
    table = cli.invoke(main, ["status", "--results", str(cluster)]).output
    assert "6 runs: 5 done, 0 running, 0 pending, 1 failed, 0 diverged, 0 todo" in table

    (folder / "checkpoint.pt").unlink()  # fixed: the relaunch submits that run alone
    second = cli.invoke(main, on_slurm)
    assert second.exit_code == 0, second.output
    assert "5 already done, 0 queued or running, 1 submitted in 1 job array(s)" in second.output

    store_local, store_slurm = RunStore(local), RunStore(cluster)
    for run_id in ids:
        assert comparable(store_slurm.record(run_id)) == comparable(store_local.record(run_id)), run_id
    boards = [
        cli.invoke(main, ["leaderboard", "--results", str(r), "--format", "json"]).output
        for r in (local, cluster)
    ]
    assert boards[0] == boards[1]
    chains = [
        cli.invoke(main, ["leaderboard", "--results", str(r), "--continual"]).output for r in (local, cluster)
    ]
    assert chains[0] == chains[1] and "packnet" in chains[0]

    third = cli.invoke(main, on_slurm)
    assert (
        third.exit_code == 0 and "6 already done, 0 queued or running, 0 submitted in 0 job" in third.output
    )


def test_a_preempted_and_requeued_job_resumes_to_the_same_record(
    toy_root: Path, toy_backbone: Path, tmp_path: Path, one_thread
) -> None:
    """SIGUSR2 (what SLURM sends before a time limit or a preemption) makes submitit checkpoint and requeue
    the job; `scontrol requeue` kills and restarts it. Both times the run resumes from its last epoch-end
    checkpoint, and ends with the record of an uninterrupted run. Long enough (40 toy epochs) that the
    requeue, which SLURM takes seconds to carry out, lands before the run ends."""
    epochs = 40
    settings = RunSettings(toy_root, backbone_checkpoint=toy_backbone)
    request = plan_run(settings, "shapes", "finetune", {"epochs": epochs, "batch_size": 32})
    run_id = request.config.run_id
    straight = execute(request, tmp_path / "local", progress=False)

    results = tmp_path / "slurm"
    summary = SlurmLauncher(results, SlurmProfile.from_file(PROFILE)).launch([request])
    [job_id] = summary.job_ids()
    folder = RunStore(results).run_dir(run_id)
    log = Path(read_submission(folder)["stdout"])

    def wait_until(what: str, ready) -> None:
        deadline = time.monotonic() + 300
        while not ready():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.2)

    def trained_an_epoch() -> bool:
        try:
            return torch.load(folder / "checkpoint.pt", weights_only=True)["epoch"] >= 1
        except (FileNotFoundError, RuntimeError, EOFError):
            return False

    def resumed(times: int) -> bool:
        return log.exists() and log.read_text().count("resuming from its checkpoint") >= times

    wait_until("a first epoch-end checkpoint", trained_an_epoch)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, capture_output=True)
    wait_until("the job to come back after SIGUSR2", lambda: resumed(1))
    assert not RunStore(results).is_done(run_id)
    subprocess.run(["scontrol", "requeue", job_id], check=True, capture_output=True)
    wait_for([job_id], timeout_s=400)

    record = RunStore(results).record(run_id)
    assert record is not None and comparable(record) == comparable(straight)
    text = log.read_text()
    assert text.count("Starting with JobEnvironment") == 3, text
    assert "Caught signal SIGUSR2" in text + Path(read_submission(folder)["stderr"]).read_text()
    found = re.findall(r"resuming from its checkpoint \(phase (\d+), epoch (\d+)\)", text)
    points = [(int(phase), int(epoch)) for phase, epoch in found]
    # the second resume point is the first's or later: an epoch of phase 0, or the end of that phase
    assert len(points) == 2 and (0, 1) <= points[0] <= points[1] <= (1, 0), text
    assert not (folder / "claim.json").exists() and not (folder / "checkpoint.pt").exists()


def test_an_sbatch_refusal_is_one_line(toy_root: Path, toy_backbone: Path, tmp_path: Path) -> None:
    profile = tmp_path / "bad.yaml"
    profile.write_text("partition: no-such-partition\ntime_min: 5\n")
    args = ["sweep", "--benchmark", str(toy_root), "--methods", "feature", "--tasks", "shapes"]
    args += ["--backbone-checkpoint", str(toy_backbone), "--results", str(tmp_path / "results")]
    refused = CliRunner().invoke(main, [*args, "--launcher", "slurm", "--profile", str(profile)])
    assert refused.exit_code == 2, refused.output
    [line] = refused.output.splitlines()
    assert line.startswith("error: sbatch failed for feature (level 0): sbatch: error: invalid partition")


def test_a_failed_chain_step_blocks_the_next_instead_of_leaving_it_pending(
    toy_root: Path, toy_backbone: Path, tmp_path: Path
) -> None:
    args = ["sweep", "--benchmark", str(toy_root), "--methods", "packnet", "--tasks", "colors,shapes"]
    args += ["--backbone-checkpoint", str(toy_backbone), "--epoch-scale", "0.02", "--set", "batch_size=32"]
    args += ["--results", str(tmp_path), "--launcher", "slurm", "--profile", str(PROFILE), "--wait"]
    cli = CliRunner()
    first, second = [
        line.split("\t")[1] for line in cli.invoke(main, [*args, "--dry-run"]).output.splitlines()
    ]
    folder = RunStore(tmp_path).run_dir(first)
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"not a checkpoint")
    launched = cli.invoke(main, args)
    assert launched.exit_code == 1 and "2 submitted in 2 job array(s)" in launched.output, launched.output
    states = {
        s["run_id"]: s
        for s in json.loads(cli.invoke(main, ["status", "--results", str(tmp_path), "--json"]).output)
    }
    assert states[first]["state"] == "failed" and states[first]["error"].endswith(
        "to restart the run from its first epoch"
    )
    assert states[second]["state"] == "failed"
    assert states[second]["error"] == (
        f"blocked: input previous ({first}) failed: relaunch the sweep once it is fixed"
    )


def test_one_failed_teacher_blocks_only_its_own_tasks_nettailor_runs(
    toy_root: Path, toy_backbone: Path, tmp_path: Path
) -> None:
    """NetTailor on two tasks, one task's teacher broken: the other task's student, candidate and selection
    finish; the broken task's are blocked, each naming its unfinished input (with afterok, one failed
    element cancelled every student of the array)."""
    args = ["sweep", "--benchmark", str(toy_root), "--methods", "nettailor", "--tasks", "colors,shapes"]
    args += ["--backbone-checkpoint", str(toy_backbone), "--epoch-scale", "0.02", "--set", "batch_size=32"]
    args += ["--set", "candidates=1", "--launcher", "slurm", "--profile", str(PROFILE), "--wait"]
    cli = CliRunner()
    launched = cli.invoke(main, [*args, "--results", str(tmp_path)])
    assert "8 runs (inputs included): 0 already done" in launched.output, launched.output
    statuses = json.loads(cli.invoke(main, ["status", "--results", str(tmp_path), "--json"]).output)
    assert len(statuses) == 8 and all(s["state"] == "done" for s in statuses)  # the runs work

    broken = tmp_path / "broken"
    teacher = next(s["run_id"] for s in statuses if s["method"] == "finetune" and s["task"] == "shapes")
    folder = RunStore(broken).run_dir(teacher)
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(b"not a checkpoint")
    launched = cli.invoke(main, [*args, "--results", str(broken)])
    assert launched.exit_code == 1, launched.output
    statuses = json.loads(cli.invoke(main, ["status", "--results", str(broken), "--json"]).output)
    by_task = {task: {s["method"]: s for s in statuses if s["task"] == task} for task in ("colors", "shapes")}
    assert {s["state"] for s in by_task["colors"].values()} == {"done"}
    assert by_task["shapes"]["finetune"]["state"] == "failed"
    for method in ("nettailor_student", "nettailor_prune", "nettailor"):
        assert by_task["shapes"][method]["state"] == "failed"
        assert by_task["shapes"][method]["error"].startswith("blocked: input "), by_task["shapes"][method]
