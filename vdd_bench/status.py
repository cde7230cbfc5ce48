"""`vdd status`: the state of every run of a sweep (or of a results folder), from the run store and the
scheduler's view.

  done      the run has its `done` marker
  running   a live claim holds it (a local process, or a SLURM job that squeue shows RUNNING)
  pending   its last SLURM job is queued (waiting for resources, for its inputs, or requeued)
  failed    its last attempt failed (`failed` file), or its job ended without a result (sacct says
            FAILED, CANCELLED, TIMEOUT, NODE_FAIL, OUT_OF_MEMORY, ...)
  diverged  settled: its training met a non-finite loss or weight, or an input of it did (`diverged` file);
            a relaunch leaves it (a search trial whose lr was drawn too high), `--retry-diverged` does not
  todo      never started (or its job vanished without a trace)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vdd_bench.config import RunConfig
from vdd_bench.slurm import scheduler
from vdd_bench.slurm.scheduler import read_submission
from vdd_bench.store import RunStore, claim_is_live, read_claim

STATES = ("done", "running", "pending", "failed", "diverged", "todo")


@dataclass
class RunStatus:
    run_id: str
    method: str
    task: str
    seed: int | None
    state: str
    job_id: str | None = None
    log: str | None = None
    error: str | None = None
    trial: int | None = None  # its search trial (0: the method's defaults)


def last_error_line(path: Path) -> str | None:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except FileNotFoundError:
        return None
    return lines[-1] if lines else None


def run_statuses(
    results: Path, run_ids: list[str] | None = None, configs: dict[str, RunConfig] | None = None
) -> list[RunStatus]:
    """One status per run id (default: every run folder under results/runs), scheduler asked once;
    `configs` names the runs not started yet (method, task, seed)."""
    store = RunStore(results)
    if run_ids is None:
        run_ids = sorted(p.name for p in store.runs.iterdir() if p.is_dir()) if store.runs.is_dir() else []
    jobs = scheduler.queue()
    queued = scheduler.active(jobs)
    out: list[RunStatus] = []
    gone: dict[str, RunStatus] = {}
    for run_id in run_ids:
        folder = store.run_dir(run_id)
        config = (configs or {}).get(run_id)
        method, task, seed, trial = (
            (config.method, config.task, config.seed, config.trial) if config else _identity(folder, run_id)
        )
        status = RunStatus(run_id, method, task, seed, "todo", trial=trial)
        submission = read_submission(folder)
        if submission is not None:
            status.job_id, status.log = submission["job_id"], submission["stderr"]
        claim = read_claim(folder)
        if (folder / "done").exists():
            status.state = "done"
        elif (folder / "diverged").exists():
            status.state = "diverged"
            status.error = last_error_line(folder / "diverged")
            status.log = str(folder / "diverged")
        elif claim is not None and claim_is_live(claim, lambda: queued):
            job = claim.get("job_id")
            requeued = job is not None and queued is not None and queued.get(job, "RUNNING") != "RUNNING"
            status.state = "pending" if requeued else "running"
            status.job_id = job or f"pid {claim.get('pid')}@{claim.get('host')}"
        elif submission is not None and queued is not None and submission["job_id"] in queued:
            running = queued[submission["job_id"]] == "RUNNING"
            status.state = "running" if running else "pending"
        elif (folder / "failed").exists():
            status.state = "failed"
            status.error = last_error_line(folder / "failed")
            status.log = status.log or str(folder / "failed")
        elif submission is not None:
            gone[submission["job_id"]] = status
        out.append(status)
    for job_id, state in scheduler.final_states(gone).items():
        if job_id in gone and state not in ("COMPLETED", "PENDING", "RUNNING", ""):
            gone[job_id].state = "failed"
            gone[job_id].error = f"job {job_id} ended {state} without finishing the run"
    return out


def _identity(folder: Path, run_id: str) -> tuple[str, str, int | None, int | None]:
    try:
        config = json.loads((folder / "config.json").read_text())
        return config["method"], config["task"], config["seed"], config.get("trial", 0)
    except (FileNotFoundError, ValueError, KeyError):
        method, _, rest = run_id.partition("--")
        return method, rest.rpartition("--")[0], None, None


def render_status(statuses: list[RunStatus]) -> str:
    from tabulate import tabulate

    rows = [
        [s.state, s.method, s.task, s.seed, s.trial, s.job_id, s.run_id, s.log if s.error else None, s.error]
        for s in statuses
    ]
    counts = ", ".join(f"{sum(s.state == k for s in statuses)} {k}" for k in STATES)
    headers = ["state", "method", "task", "seed", "trial", "job", "run", "log", "last error"]
    table = tabulate(rows, headers, missingval="")
    return f"{table}\n\n{len(statuses)} runs: {counts}"
