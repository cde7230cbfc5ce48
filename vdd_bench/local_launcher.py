"""The local launcher runs planned runs one after another in this process (SLURM's: `slurm/launcher.py`).

After a run, its method's `after_run` does what the method adds (a chain step of PackNet or LwF is evaluated
on every task of its chain learned so far: the accuracy matrix); a step's predecessor is an input, so it runs
first.

Every launcher runs a run under its claim (`store.claimed`): a run that a live process or SLURM job holds
is skipped, so the same run never runs twice at once, whichever launcher started it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from vdd_bench.config import RunRequest
from vdd_bench.device import Device
from vdd_bench.errors import VddError
from vdd_bench.execution import live_claim_checker, needs_run, run_request
from vdd_bench.method import get_method
from vdd_bench.store import ClaimHeld, RunStore, claimed


@dataclass
class LaunchSummary:
    done_before: int = 0
    completed: int = 0  # by this process
    done_elsewhere: int = 0  # finished by another process between this one's plan and its turn
    failed: list[tuple[str, str]] = field(default_factory=list)  # (run id, one-line error)
    claimed: list[tuple[str, str]] = field(default_factory=list)  # (run id, who holds it): skipped


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
                get_method(request.config.method).after_run(request, self.results, self.device)
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
