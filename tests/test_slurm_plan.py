"""Submission planning of the SLURM launcher, without a cluster: a fake submitit executor counts sbatch
calls (one per `executor.batch()`), so the grouping into job arrays and their dependencies are checked."""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from vdd_bench.config import RunConfig, closure
from vdd_bench.errors import VddError
from vdd_bench.runner import RunRequest
from vdd_bench.slurm.launcher import SlurmLauncher, read_submission
from vdd_bench.slurm.profile import SlurmProfile
from vdd_bench.store import RunStore, atomic_write_bytes

TASKS = [f"task{k}" for k in range(10)]
PARALLEL = ["finetune", "feature", "scratch", "adapters_series", "adapters_parallel", "piggyback", "dan"]


def request(
    method: str, task: str, seed: int = 0, extra: dict | None = None, **inputs: RunRequest
) -> RunRequest:
    config = RunConfig(
        benchmark="b" * 12,
        benchmark_kind="toy",
        task=task,
        method=method,
        hparams={},
        backbone={"name": "resnet26", "checkpoint": "c" * 12},
        resolution=36,
        seed=seed,
        inputs={name: r.config.run_id for name, r in inputs.items()},
        extra=extra or {},
    )
    return RunRequest(config, Path("root"), None, None, dict(inputs))


def nettailor(task: str) -> RunRequest:
    """NetTailor's run graph: teacher -> student -> two pruned candidates -> the selected one."""
    teacher = request("finetune", task)  # the same run as the sweep's finetune run: submitted once
    student = request("nettailor_student", task, teacher=teacher)
    candidates = {
        f"candidate_{k}": request("nettailor_prune", task, extra={"k": k}, teacher=teacher, student=student)
        for k in (2, 4)
    }
    return request("nettailor", task, teacher=teacher, **candidates)


def chain(method: str, tasks: list[str]) -> list[RunRequest]:
    steps: list[RunRequest] = []
    for task in tasks:
        steps.append(request(method, task, **({"previous": steps[-1]} if steps else {})))
    return steps


@dataclass
class FakeJob:
    job_id: str

    @property
    def paths(self) -> Any:
        return type("Paths", (), {"stdout": f"/logs/{self.job_id}.out", "stderr": f"/logs/{self.job_id}.err"})


class FakeExecutor:
    """Records what submitit's SlurmExecutor would be asked: one sbatch per batch() context."""

    ids = itertools.count(1000)

    def __init__(self, folder: Path, profile: SlurmProfile) -> None:
        self.folder = folder
        self.parameters: dict[str, Any] = dict(profile.executor_parameters())
        self.sbatch_calls: list[dict[str, Any]] = []
        self._batch: list[Any] | None = None

    def update_parameters(self, **kwargs: Any) -> None:
        self.parameters.update(kwargs)

    @contextmanager
    def batch(self):
        self._batch = []
        yield
        array = next(self.ids)
        jobs = self._batch
        for index, job in enumerate(jobs):
            job.job_id = f"{array}_{index}" if len(jobs) > 1 else str(array)
        self.sbatch_calls.append({**self.parameters, "jobs": [j.job_id for j in jobs]})
        self._batch = None

    def submit(self, fn: Any) -> FakeJob:
        assert self._batch is not None, "every submission goes through an array"
        job = FakeJob("?")
        job.function = fn
        self._batch.append(job)
        return job


def launch(tmp_path: Path, requests: list[RunRequest]) -> tuple[Any, list[FakeExecutor]]:
    executors: list[FakeExecutor] = []

    def factory(folder: Path, profile: SlurmProfile) -> FakeExecutor:
        executors.append(FakeExecutor(folder, profile))
        return executors[-1]

    launcher = SlurmLauncher(tmp_path, SlurmProfile(), executor_factory=factory)
    return launcher.launch(requests), executors


@pytest.fixture(autouse=True)
def no_scheduler(monkeypatch: pytest.MonkeyPatch) -> None:
    from vdd_bench.slurm import scheduler

    monkeypatch.setattr(scheduler, "queue", lambda: {})


def test_eight_methods_on_ten_tasks_take_a_handful_of_job_arrays(tmp_path: Path) -> None:
    sweep = [request(m, t) for m in PARALLEL for t in TASKS] + [nettailor(t) for t in TASKS]
    summary, [executor] = launch(tmp_path, sweep)
    calls = executor.sbatch_calls
    # 7 methods in one array each (NetTailor's teachers are the finetune runs), then student, candidates
    # and selection one level after the other: 10 sbatch calls for 8 methods x 10 tasks (110 runs)
    assert len(calls) == 10
    assert summary.submitted == 7 * 10 + 10 + 20 + 10 == 110
    sizes = {(g.method, g.level): len(g.requests) for g in summary.groups}
    assert sizes[("finetune", 0)] == 10 and sizes[("nettailor_prune", 2)] == 20
    by_name = {call["job_name"]: call for call in calls}
    student = by_name["vdd-nettailor_student-L1"]
    finetune_jobs = by_name["vdd-finetune-L0"]["jobs"]
    dependency = student["additional_parameters"]["dependency"]
    assert dependency.startswith("afterany:") and set(dependency[9:].split(":")) == set(finetune_jobs)
    assert "dependency" not in by_name["vdd-feature-L0"]["additional_parameters"]
    # every job's submission is recorded in its run folder (job id and log files, for vdd status)
    store = RunStore(tmp_path)
    run = sweep[0].config.run_id
    assert (store.run_dir(run) / "slurm.json").read_text().count(finetune_jobs[0]) == 3


def test_a_chain_is_one_job_per_step_each_after_the_previous(tmp_path: Path) -> None:
    steps = chain("packnet", TASKS[:3])
    summary, [executor] = launch(tmp_path, steps)
    calls = executor.sbatch_calls
    assert [c["job_name"] for c in calls] == [f"vdd-packnet-L{k}" for k in range(3)]
    assert "dependency" not in calls[0]["additional_parameters"]
    for before, after in itertools.pairwise(calls):
        assert after["additional_parameters"]["dependency"] == f"afterany:{before['jobs'][0]}"
        assert "kill-on-invalid-dep" not in after["additional_parameters"]


def test_relaunch_skips_done_and_queued_runs_and_submits_failed_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vdd_bench.slurm import scheduler

    sweep = [request(m, t) for m in ("finetune", "feature") for t in TASKS[:3]]
    launch(tmp_path, sweep)
    store = RunStore(tmp_path)
    jobs = {r.config.run_id: read_submission(store.run_dir(r.config.run_id))["job_id"] for r in sweep}
    done, failed, queued = sweep[0], sweep[1], sweep[2]
    atomic_write_bytes(store.run_dir(done.config.run_id) / "done", b"")
    atomic_write_bytes(store.run_dir(failed.config.run_id) / "failed", b"boom\n")
    still = {jobs[queued.config.run_id]: "PENDING"}
    monkeypatch.setattr(scheduler, "queue", lambda: still)
    # every job but `queued` left the queue; the others (never finished) count as lost: submitted again
    summary, [executor] = launch(tmp_path, sweep)
    assert summary.done_before == 1 and summary.active == {queued.config.run_id: jobs[queued.config.run_id]}
    assert summary.submitted == 4 and len(executor.sbatch_calls) == 2

    for request_ in sweep:
        atomic_write_bytes(store.run_dir(request_.config.run_id) / "done", b"")
    summary, executors = launch(tmp_path, sweep)
    assert summary.done_before == 6 and summary.submitted == 0 and executors == []


def test_without_a_scheduler_the_slurm_launcher_refuses(tmp_path: Path, monkeypatch) -> None:
    from vdd_bench.slurm import scheduler

    monkeypatch.setattr(scheduler, "queue", lambda: None)
    with pytest.raises(VddError, match="no SLURM controller answers"):
        SlurmLauncher(tmp_path, SlurmProfile()).launch([request("finetune", "a")])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("partition: gpu\ngpu: 1\n", "unknown key 'gpu'"),
        ("cpus: many\n", "cpus must be int"),
        ("cpus: 0\n", "cpus must be >= 1"),
        ("gpus: true\n", "gpus must be int"),
        ("sbatch: {dependency: 'afterok:1'}\n", "sbatch.dependency: a reserved flag, set by the harness"),
        ("sbatch: {job_name: x}\n", "sbatch.job_name: a reserved flag"),
        ("sbatch: {--constraint: a100}\n", "without dashes"),
        ("setup: [1]\n", "setup must be a list of shell lines"),
        ("- a\n", "must be a mapping"),
        ("time_min: [\n", "cannot read SLURM profile"),
    ],
)
def test_bad_profiles_are_refused_in_one_line_naming_the_file(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "profile.yaml"
    path.write_text(text)
    with pytest.raises(VddError, match=message) as info:
        SlurmProfile.from_file(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_the_shipped_profiles_are_valid() -> None:
    root = Path(__file__).resolve().parents[1] / "slurm" / "profiles"
    profiles = {p.stem: SlurmProfile.from_file(p) for p in root.glob("*.yaml")}
    assert {"generic-gpu", "local-test"} <= set(profiles)
    assert profiles["generic-gpu"].executor_parameters()["gpus_per_node"] == 1
    assert profiles["local-test"].partition == "debug"


def test_status_reads_the_store_and_the_scheduler(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import socket

    from vdd_bench.slurm import scheduler
    from vdd_bench.status import render_status, run_statuses

    store = RunStore(tmp_path)
    names = ["done", "running", "pending", "failed", "lost", "todo"]
    folders = {n: store.run_dir(request("finetune", n).config.run_id) for n in names}
    for name, job in [("running", "7_0"), ("pending", "7_1"), ("failed", "7_2"), ("lost", "7_3")]:
        record = {"job_id": job, "stdout": f"/logs/{job}.out", "stderr": f"/logs/{job}.err"}
        atomic_write_bytes(folders[name] / "slurm.json", json.dumps(record).encode())
    atomic_write_bytes(folders["done"] / "done", b"")
    claim = {"job_id": "7_0", "host": socket.gethostname(), "pid": 1}
    atomic_write_bytes(folders["running"] / "claim.json", json.dumps(claim).encode())
    atomic_write_bytes(folders["failed"] / "failed", b"Traceback ...\nVddError: loss became nan\n")
    folders["todo"].mkdir(parents=True)
    monkeypatch.setattr(scheduler, "queue", lambda: {"7_0": "RUNNING", "7_1": "PENDING"})
    monkeypatch.setattr(scheduler, "final_states", lambda ids: {j: "NODE_FAIL" for j in ids})
    statuses = {s.task: s for s in run_statuses(tmp_path)}
    assert {task: s.state for task, s in statuses.items()} == {
        "done": "done",
        "running": "running",
        "pending": "pending",
        "failed": "failed",
        "lost": "failed",
        "todo": "todo",
    }
    assert (
        statuses["failed"].error == "VddError: loss became nan" and statuses["failed"].log == "/logs/7_2.err"
    )
    assert statuses["lost"].error == "job 7_3 ended NODE_FAIL without finishing the run"
    table = render_status(list(statuses.values()))
    assert "6 runs: 1 done, 1 running, 1 pending, 2 failed, 0 diverged, 1 todo" in table


def test_the_cli_needs_a_profile_and_status_lists_a_sweeps_runs(make_root, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from vdd_bench.cli import main

    root = make_root()
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"benchmark: {root}\nmethods: [scratch]\nbackbone: {{name: resnet26, width: 0.25}}\nseeds: [0, 1]\n"
    )
    results = ["--results", str(tmp_path / "results")]
    refused = CliRunner().invoke(main, ["sweep", "--file", str(sweep), "--launcher", "slurm", *results])
    assert refused.exit_code == 2 and "--launcher slurm needs --profile FILE" in refused.output
    shown = CliRunner().invoke(main, ["status", "--sweep", str(sweep), *results])
    assert shown.exit_code == 0, shown.output
    assert "4 runs: 0 done, 0 running, 0 pending, 0 failed, 0 diverged, 4 todo" in shown.output
    rows = [line.split() for line in shown.output.splitlines() if line.startswith("todo")]
    assert sorted((r[1], r[2], r[3]) for r in rows) == [
        ("scratch", task, seed) for task in ("alpha", "beta") for seed in ("0", "1")
    ]


def test_a_searchs_trials_share_the_job_arrays_and_a_relaunch_submits_nothing(
    toy_root: Path, toy_backbone: Path, tmp_path: Path
) -> None:
    """Three trials of two methods on two tasks: one array per method and dependency level, as without a
    search (NetTailor's trials each with their own teacher, in the fine-tuning array); done, none again."""
    from vdd_bench.sweep import SweepSpec

    spec = SweepSpec.from_mapping(
        {"benchmark": str(toy_root), "backbone_checkpoint": str(toy_backbone),
         "methods": ["feature", "nettailor"], "tasks": ["colors", "shapes"], "search": {"trials": 3},
         "hparams": {"nettailor": {"candidates": [1]}}},
        "test",
    )  # fmt: skip
    requests = spec.expand()
    summary, [executor] = launch(tmp_path, requests)
    sizes = {(g.method, g.level): len(g.requests) for g in summary.groups}
    assert sizes == {
        ("feature", 0): 6, ("finetune", 0): 6, ("nettailor_student", 1): 6, ("nettailor_prune", 2): 6,
        ("nettailor", 3): 6,
    }  # fmt: skip
    assert len(executor.sbatch_calls) == 5
    store = RunStore(tmp_path)
    for run_id in {g_request.config.run_id for g in summary.groups for g_request in g.requests}:
        atomic_write_bytes(store.run_dir(run_id) / "done", b"")
    summary, executors = launch(tmp_path, requests)
    assert summary.submitted == 0 and executors == [] and summary.done_before == 30


def test_a_job_whose_input_did_not_finish_marks_its_run_blocked_and_status_says_why(tmp_path: Path) -> None:
    """Dependants start after their inputs' jobs end, whatever the outcome (`afterany`): a job whose input
    failed writes its run's `failed` naming that input and runs nothing; the run reads failed, with why."""
    from vdd_bench.slurm.job import RunJob
    from vdd_bench.status import run_statuses

    teacher = request("finetune", "task0")
    student = request("nettailor_student", "task0", teacher=teacher)
    store = RunStore(tmp_path)
    store.run_dir(teacher.config.run_id).mkdir(parents=True)
    atomic_write_bytes(store.run_dir(teacher.config.run_id) / "failed", b"CUDA out of memory\n")
    said = RunJob(student, str(tmp_path))()
    cause = f"blocked: input teacher ({teacher.config.run_id}) failed: relaunch the sweep once it is fixed"
    assert said == f"{student.config.run_id}: {cause}"
    [status] = run_statuses(tmp_path, [student.config.run_id])
    assert status.state == "failed" and status.error == cause
    other = request("nettailor_student", "task1", teacher=request("finetune", "task1"))  # never ran
    assert RunJob(other, str(tmp_path))().endswith(
        "ended without finishing: relaunch the sweep once it is fixed"
    )


def test_the_accountings_row_for_an_arrays_unstarted_elements_is_expanded(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """sacct keeps one row for the elements of an array that never started (`1234_[1-2%2] CANCELLED`): each
    of them reads failed, not todo."""
    from vdd_bench.slurm import scheduler
    from vdd_bench.status import run_statuses

    rows = "1234_0|COMPLETED\n1234_[1-2%2]|CANCELLED by 0\n"
    monkeypatch.setattr(scheduler, "_run", lambda args, timeout=30.0: rows if args[0] == "sacct" else "")
    assert scheduler.final_states(["1234_0", "1234_1", "1234_2"]) == {
        "1234_0": "COMPLETED", "1234_1": "CANCELLED", "1234_2": "CANCELLED"
    }  # fmt: skip
    runs = [request("feature", task) for task in ("task0", "task1", "task2")]
    store = RunStore(tmp_path)
    for index, run in enumerate(runs):
        folder = store.run_dir(run.config.run_id)
        folder.mkdir(parents=True)
        stdout, stderr = f"/logs/1234_{index}.out", f"/logs/1234_{index}.err"
        atomic_write_bytes(
            folder / "slurm.json",
            f'{{"job_id": "1234_{index}", "stdout": "{stdout}", "stderr": "{stderr}"}}'.encode(),
        )
    states = {s.run_id: s for s in run_statuses(tmp_path, [r.config.run_id for r in runs])}
    assert [states[r.config.run_id].state for r in runs] == ["todo", "failed", "failed"]
    assert states[runs[2].config.run_id].error == "job 1234_2 ended CANCELLED without finishing the run"


def test_a_summary_line_names_a_few_jobs_and_counts_the_rest() -> None:
    from vdd_bench.cli import _job_list

    assert _job_list(["1_0", "1_1"]) == "1_0,1_1"
    assert _job_list([f"7_{k}" for k in range(4500)]) == "7_0,7_1,7_2 and 4497 more jobs"


def test_the_runs_reading_a_diverged_run_are_settled_without_a_job(tmp_path: Path) -> None:
    """A teacher settled as diverged (a search trial's lr drawn too high): its student, candidates and
    selection are settled as diverged at planning, no job is submitted for them, and `vdd status` says
    diverged, naming the input; a job already queued for a reader settles it the same way."""
    from vdd_bench.slurm.job import RunJob
    from vdd_bench.status import run_statuses

    diverging, healthy = nettailor("task0"), nettailor("task1")
    teacher = diverging.inputs["teacher"].config.run_id
    store = RunStore(tmp_path)
    store.diverge(teacher, "finetune/task0: loss became nan at epoch 3 in phase train")
    student = diverging.inputs["candidate_2"].inputs["student"]
    said = RunJob(student, str(tmp_path))()
    assert said == f"{student.config.run_id}: settled as diverged: input teacher ({teacher}) diverged"
    summary, [executor] = launch(tmp_path, [diverging, healthy])
    assert summary.diverged == 5  # the teacher, its student, 2 candidates and the selection
    submitted = {r.config.run_id for g in summary.groups for r in g.requests}
    assert submitted == {r.config.run_id for r in closure([healthy])}
    states = {s.run_id: s for s in run_statuses(tmp_path, [r.config.run_id for r in closure([diverging])])}
    assert {s.state for s in states.values()} == {"diverged"}
    assert states[diverging.config.run_id].error == f"input teacher ({teacher}) diverged"
    summary, executors = launch(tmp_path, [diverging])  # a relaunch: nothing to submit
    assert executors == [] and summary.diverged == 5 and summary.submitted == 0
