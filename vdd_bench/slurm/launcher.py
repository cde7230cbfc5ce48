"""Submit a sweep to SLURM with submitit: one job array per method and dependency level.

A run's level is 0 when all its inputs are done, else one more than the deepest input still to finish, so
NetTailor's student (input: its teacher) lands one level after the teachers, and step k of a PackNet or LwF
chain k levels after the first step. Each (level, method) group is one `executor.batch()` (one sbatch, one
job array over tasks x seeds) whose jobs wait with `afterany` for the jobs producing their inputs, submitted
in this launch or still queued from an earlier one. A job whose own inputs are not done when it starts
marks its run blocked (`slurm.job`) and ends, so one failed input stops only the runs that read it: with
`afterok` a failed element would cancel every element of the dependent array, every task's student for one
task's teacher. A relaunch submits the failed and blocked runs again, but not a run settled as diverged,
nor one reading it (settled too, without a job): `vdd sweep --retry-diverged` makes them plannable again.

Relaunching is idempotent: done runs are skipped, runs whose job is still queued or running (their
`slurm.json` job in squeue, or a live claim) are left alone, everything else (never run, failed, lost) is
submitted. Each launch gets a submitit folder of its own (`<results>/slurm/<time>-<random>/`), so job files
of an earlier launch or cluster can never be read as this one's.
"""

from __future__ import annotations

import contextlib
import io
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vdd_bench.config import RunRequest, closure
from vdd_bench.errors import VddError
from vdd_bench.execution import diverged_input, needs_run
from vdd_bench.slurm import scheduler
from vdd_bench.slurm.job import RunJob
from vdd_bench.slurm.profile import SlurmProfile
from vdd_bench.slurm.scheduler import SUBMISSION_FILE, read_submission
from vdd_bench.store import RunStore, atomic_write_json, claim_is_live, read_claim


@dataclass
class Group:
    level: int
    method: str
    requests: list[RunRequest]
    after: list[str] = field(default_factory=list)  # job ids this array waits for (afterany)
    job_ids: list[str] = field(default_factory=list)


@dataclass
class SlurmSummary:
    runs: int = 0
    done_before: int = 0
    diverged: int = 0  # settled as diverged, by an earlier job or now (an input of theirs diverged)
    active: dict[str, str] = field(default_factory=dict)  # run id -> its queued or running job
    groups: list[Group] = field(default_factory=list)
    folder: Path | None = None

    @property
    def submitted(self) -> int:
        return sum(len(g.requests) for g in self.groups)

    def job_ids(self) -> list[str]:
        return [j for g in self.groups for j in g.job_ids]


def active_job(folder: Path, queued: dict[str, str] | None) -> str | None:
    """The job that holds or will run this run now: a live claim's, or the last submission's if queued."""
    claim = read_claim(folder)
    if claim is not None and claim_is_live(claim, lambda: queued):
        return claim.get("job_id") or f"pid {claim.get('pid')}"
    submission = read_submission(folder)
    if submission is not None and queued is not None and submission["job_id"] in queued:
        return submission["job_id"]
    return None


def plan_groups(
    requests: list[RunRequest],
    results: Path,
    queued: dict[str, str] | None,
    summary: SlurmSummary,
) -> list[Group]:
    """Sort the runs that need a job into (level, method) groups; fills the summary's counts."""
    store = RunStore(results)
    level: dict[str, int] = {}
    groups: dict[tuple[int, str], Group] = {}
    all_runs = closure(requests)
    summary.runs = len(all_runs)
    for request in all_runs:  # inputs come first
        run_id = request.config.run_id
        if store.is_diverged(run_id):
            summary.diverged += 1
            continue
        if not needs_run(request, results):
            summary.done_before += 1
            continue
        reason = diverged_input(request, store)
        if reason is not None:  # settled without a job: it could only repeat what its input did
            store.diverge(run_id, reason)
            summary.diverged += 1
            continue
        waiting = [r.config.run_id for r in request.inputs.values() if r.config.run_id in level]
        level[run_id] = 1 + max((level[i] for i in waiting), default=-1)
        job = active_job(store.run_dir(run_id), queued)
        if job is not None:
            summary.active[run_id] = job
            continue
        key = (level[run_id], request.config.method)
        groups.setdefault(key, Group(level[run_id], request.config.method, []))
        groups[key].requests.append(request)
    return [groups[k] for k in sorted(groups)]


class SlurmLauncher:
    """Submits what is not done, queued or running; returns at once (`wait` follows the jobs)."""

    def __init__(
        self,
        results: Path,
        profile: SlurmProfile,
        device: str | None = None,
        executor_factory: Callable[[Path, SlurmProfile], Any] | None = None,
    ) -> None:
        self.results = Path(results).resolve()
        self.profile = profile
        self.device = device
        self.executor_factory = executor_factory or default_executor

    def launch(self, requests: list[RunRequest]) -> SlurmSummary:
        queued = scheduler.active(scheduler.queue())
        if queued is None and self.executor_factory is default_executor:
            raise VddError(
                "no SLURM controller answers (squeue failed): check SLURM_CONF / the cluster, "
                "or use --launcher local"
            )
        summary = SlurmSummary()
        RunStore(self.results).mark_entries(request.config.run_id for request in requests)
        groups = plan_groups(requests, self.results, queued, summary)
        if not groups:
            return summary
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        summary.folder = self.results / "slurm" / f"{stamp}-{secrets.token_hex(3)}"
        executor = self.executor_factory(summary.folder, self.profile)
        producer: dict[str, str] = dict(summary.active)  # run id -> job id
        producer = {run_id: job for run_id, job in producer.items() if not job.startswith("pid ")}
        for group in groups:
            after = sorted(
                {
                    producer[needed.config.run_id]
                    for request in group.requests
                    for needed in request.inputs.values()
                    if needed.config.run_id in producer
                }
            )
            group.after = after
            extra: dict[str, Any] = {**self.profile.sbatch}
            if after:
                extra["dependency"] = "afterany:" + ":".join(after)
            executor.update_parameters(
                job_name=f"vdd-{group.method.replace(':', '_')}-L{group.level}",
                additional_parameters=extra,
            )
            try:  # submitit prints sbatch's complaints itself: they reach the user in the error below
                with contextlib.redirect_stderr(io.StringIO()), executor.batch():
                    jobs = [
                        executor.submit(RunJob(request, str(self.results), self.device))
                        for request in group.requests
                    ]
            except Exception as exc:  # sbatch refused (bad partition, account, ...): say it in one line
                lines = [line for line in str(exc).splitlines() if line.strip()]
                raise VddError(
                    f"sbatch failed for {group.method} (level {group.level}): "
                    f"{lines[0] if lines else type(exc).__name__}; {len(summary.groups)} job array(s) were "
                    "submitted before it (relaunching after the fix submits the rest)"
                ) from None
            store = RunStore(self.results)
            for request, job in zip(group.requests, jobs, strict=True):
                run_id = request.config.run_id
                producer[run_id] = str(job.job_id)
                group.job_ids.append(str(job.job_id))
                atomic_write_json(
                    store.run_dir(run_id) / SUBMISSION_FILE,
                    {
                        "job_id": str(job.job_id),
                        "folder": str(summary.folder),
                        "stdout": str(job.paths.stdout),
                        "stderr": str(job.paths.stderr),
                        "submitted": time.time(),
                    },
                )
            summary.groups.append(group)
        return summary


def default_executor(folder: Path, profile: SlurmProfile) -> Any:
    import submitit

    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=profile.max_num_timeout)
    executor.update_parameters(**profile.executor_parameters())
    return executor


def wait_for(job_ids: list[str], poll_s: float = 2.0, timeout_s: float | None = None) -> None:
    """Until none of the jobs is queued or running any more (the scheduler's view, polled)."""
    pending = set(job_ids)
    started = time.monotonic()
    while pending:
        queued = scheduler.active(scheduler.queue())
        if queued is None:
            raise VddError("squeue stopped answering while waiting for the jobs")
        pending &= set(queued)
        if not pending:
            return
        if timeout_s is not None and time.monotonic() - started > timeout_s:
            raise VddError(f"jobs still queued or running after {timeout_s:.0f} s: {sorted(pending)}")
        time.sleep(poll_s)
