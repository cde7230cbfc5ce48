"""Launchers execute planned runs; the local one runs them one after another in this process.

A step of a sequential method (PackNet, LwF) runs through its method's `execute` and is then evaluated on
every task of its chain learned so far (the accuracy matrix); its predecessor is an input, so it runs first.

Every launcher runs a run under its claim (`store.claimed`): a run that a live process or SLURM job holds
is skipped, so the same run never runs twice at once, whichever launcher started it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from vdd_bench.continual import evaluate_step, sequential_method
from vdd_bench.device import Device, pick_device
from vdd_bench.errors import VddError
from vdd_bench.method import METHODS
from vdd_bench.runner import RunRequest, execute
from vdd_bench.store import ClaimHeld, RunStore, claim_is_live, claimed


@dataclass
class LaunchSummary:
    done_before: int = 0
    completed: int = 0  # by this process
    done_elsewhere: int = 0  # finished by another process between this one's plan and its turn
    failed: list[tuple[str, str]] = field(default_factory=list)  # (run id, one-line error)
    claimed: list[tuple[str, str]] = field(default_factory=list)  # (run id, who holds it): skipped


def needs_run(request: RunRequest, results: Path) -> bool:
    """Not done yet; or a done chain step whose accuracy-matrix row is missing."""
    from vdd_bench.chains import CONTINUAL_FILE

    store = RunStore(results)
    if not store.is_done(request.config.run_id):
        return True
    return is_sequential(request) and not (store.run_dir(request.config.run_id) / CONTINUAL_FILE).exists()


def run_request(request: RunRequest, results: Path, device: Device | None, progress: bool) -> None:
    """Execute one planned run (a chain step through its method, then its accuracy-matrix row)."""
    if is_sequential(request):
        if not RunStore(results).is_done(request.config.run_id):
            method = sequential_method(request.config.method)
            method.execute(request, results, device or pick_device(), progress, None)
        evaluate_step(request, results, device)
    else:
        execute(request, results, device, progress=progress)


def live_claim_checker():
    """claim_is_live with the scheduler asked at most once, and only when a claim names a SLURM job."""
    cache: dict[str, dict[str, str] | None] = {}

    def active_jobs() -> dict[str, str] | None:
        if "jobs" not in cache:
            from vdd_bench.slurm.scheduler import active, queue

            cache["jobs"] = active(queue())
        return cache["jobs"]

    return lambda claim: claim_is_live(claim, active_jobs)


def is_sequential(request: RunRequest) -> bool:
    return getattr(METHODS.get(request.config.method), "sequential", False)


class LocalLauncher:
    """Runs what is not done yet; a failing run is recorded (`failed` file) and the others go on."""

    def __init__(self, results: Path, device: Device | None = None, progress: bool = True) -> None:
        self.results = Path(results)
        self.device = device
        self.progress = progress

    def launch(self, requests: list[RunRequest]) -> LaunchSummary:
        store = RunStore(self.results)
        store.mark_entries(request.config.run_id for request in requests)
        summary = LaunchSummary()
        todo = []
        for request in requests:
            if store.is_done(request.config.run_id):
                summary.done_before += 1
                if is_sequential(request):
                    evaluate_step(request, self.results, self.device)  # a no-op when already evaluated
            else:
                todo.append(request)
        for request in tqdm(todo, desc="runs", unit="run", disable=not self.progress or not todo):
            run_id = request.config.run_id
            try:
                with claimed(store.run_dir(run_id), live_claim_checker()):
                    if not needs_run(request, self.results):
                        summary.done_elsewhere += 1
                        continue
                    run_request(request, self.results, self.device, self.progress)
            except ClaimHeld as exc:
                summary.claimed.append((run_id, str(exc)))
            except VddError as exc:
                summary.failed.append((run_id, str(exc)))
                store.fail(run_id, exc)
            except Exception as exc:  # keep the sweep going; the full trace lands next to the run
                summary.failed.append((run_id, f"{type(exc).__name__}: {exc}"))
                store.fail(run_id, exc)
            else:
                summary.completed += 1
        return summary
