"""What the scheduler says about jobs: squeue for queued and running jobs, sacct for finished ones.

Commands run with argument lists (never a shell string) and a timeout; every query returns None when no
scheduler answers, so that callers fall back on what the run store says.
"""

from __future__ import annotations

import getpass
import json
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SUBMISSION_FILE = "slurm.json"  # in a run folder: the job it was last submitted as

# squeue states of a job that still holds or will get a node (a requeued job is PENDING again)
ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "RUNNING",
        "REQUEUED",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "CONFIGURING",
        "COMPLETING",
        "SUSPENDED",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "STOPPED",
        "PREEMPTED",
    }
)


def _run(args: list[str], timeout: float = 30.0) -> str | None:
    if shutil.which(args[0]) is None:
        return None
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def reachable() -> bool:
    """A controller answers (`sinfo` works)."""
    return _run(["sinfo", "-h", "-o", "%P"], timeout=15) is not None


def queue() -> dict[str, str] | None:
    """{job id: state} of this user's jobs in the queue, one entry per array element (`<array>_<index>`),
    or None when squeue does not answer."""
    out = _run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T"])
    if out is None:
        return None
    jobs = {}
    for line in out.splitlines():
        job_id, _, state = line.strip().partition("|")
        if job_id:
            jobs[job_id] = state
    return jobs


def active(jobs: dict[str, str] | None) -> dict[str, str] | None:
    return None if jobs is None else {j: s for j, s in jobs.items() if s in ACTIVE_STATES}


def final_states(job_ids: Iterable[str]) -> dict[str, str]:
    """{job id: state} from the accounting (COMPLETED, FAILED, CANCELLED, TIMEOUT, ...); {} without it.

    Array elements that never started have no row of their own: the accounting keeps one row for the
    rest of the array (`1234_[3-5%2] CANCELLED`), which is expanded to its elements (`1234_3`, ...)."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    out = _run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(ids)])
    states = {}
    for line in (out or "").splitlines():
        job_id, _, state = line.strip().partition("|")
        for element in array_elements(job_id):
            states[element] = state.split()[0] if state else ""
    return states


def array_elements(job_id: str) -> list[str]:
    """The job ids an accounting row stands for: itself, or each element of `<array>_[<ranges>%<limit>]`."""
    array, bracket, ranges = job_id.partition("_[")
    if not bracket:
        return [job_id] if job_id else []
    elements = []
    for part in ranges.rstrip("]").split("%")[0].split(","):
        first, _, last = part.partition("-")
        if first.isdigit() and (not last or last.isdigit()):
            elements += [f"{array}_{k}" for k in range(int(first), int(last or first) + 1)]
    return elements


def read_submission(folder: Path) -> dict[str, Any] | None:
    """The job a run folder was last submitted as (`slurm.json`: job id, log paths), or None."""
    try:
        return json.loads((folder / SUBMISSION_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
