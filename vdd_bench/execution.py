"""Executing one planned run, shared by the local launcher and the SLURM job: what still needs doing, doing
it, and whose claim on a run is still alive."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from vdd_bench.config import RunRequest
from vdd_bench.device import Device
from vdd_bench.method import get_method
from vdd_bench.runner import execute
from vdd_bench.slurm.scheduler import active, queue
from vdd_bench.store import RunStore, atomic_write_bytes, claim_is_live, read_claim

BLOCKED = "blocked"  # how a run's `failed` file starts when an input it reads did not finish


def needs_run(request: RunRequest, results: Path) -> bool:
    """Not done yet (nor settled as diverged); or done without what its method adds after the run (a chain
    step's accuracy row)."""
    store = RunStore(results)
    run_id = request.config.run_id
    if store.is_diverged(run_id):
        return False
    if not store.is_done(run_id):
        return True
    return not get_method(request.config.method).complete(store.run_dir(run_id))


def run_request(request: RunRequest, results: Path, device: Device | None, progress: bool) -> None:
    """Execute one planned run (a done one is not run again), then its method's `after_run`."""
    execute(request, results, device, progress=progress)
    get_method(request.config.method).after_run(request, results, device)


def live_claim_checker() -> Callable[[dict], bool]:
    """claim_is_live with the scheduler asked at most once, and only when a claim names a SLURM job."""
    cache: dict[str, dict[str, str] | None] = {}

    def active_jobs() -> dict[str, str] | None:
        if "jobs" not in cache:
            cache["jobs"] = active(queue())
        return cache["jobs"]

    return lambda claim: claim_is_live(claim, active_jobs)


def diverged_input(request: RunRequest, store: RunStore) -> str | None:
    """Why a run is settled before it starts: its first input settled as diverged (a chain step after a
    diverged step, a NetTailor trial whose student diverged); None when no input diverged."""
    for name, needed in request.inputs.items():
        if store.is_diverged(needed.config.run_id):
            return f"input {name} ({needed.config.run_id}) diverged"
    return None


def blocked_by(request: RunRequest, store: RunStore) -> str | None:
    """Why a run cannot start: its first input that is not done, and whether that one failed (or was blocked
    itself), is held by another live process, or ended without a result (cancelled, timed out); None when
    every input is done."""
    for name, needed in request.inputs.items():
        input_id = needed.config.run_id
        if store.is_done(input_id):
            continue
        folder = store.run_dir(input_id)
        claim = read_claim(folder)
        if (folder / "failed").exists():
            how = "failed"
        elif claim is not None and live_claim_checker()(claim):
            how = "is being run by another process"
        else:
            how = "ended without finishing"
        return f"{BLOCKED}: input {name} ({input_id}) {how}: relaunch the sweep once it is fixed"
    return None


def settle_unstartable(request: RunRequest, store: RunStore) -> tuple[str, str] | None:
    """A run whose inputs did not all finish is settled now, without training: ("diverged", reason) when an
    input diverged, ("failed", reason) when one failed or is missing (the `failed` file says which, and a
    relaunch tries again); None when it can start."""
    run_id = request.config.run_id
    reason = diverged_input(request, store)
    if reason is not None:
        store.diverge(run_id, reason)
        return "diverged", reason
    reason = blocked_by(request, store)
    if reason is None:
        return None
    store.run_dir(run_id).mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(store.run_dir(run_id) / "failed", f"{reason}\n".encode())
    return "failed", reason
