"""Launchers execute planned runs; the local one runs them one after another in this process.

A step of a sequential method (PackNet, LwF) runs through its method's `execute` and is then evaluated on
every task of its chain learned so far (the accuracy matrix); its predecessor is an input, so it runs first.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from vdd_bench.continual import evaluate_step, sequential_method
from vdd_bench.device import Device, pick_device
from vdd_bench.errors import VddError
from vdd_bench.method import METHODS
from vdd_bench.runner import RunRequest, execute
from vdd_bench.store import RunStore, atomic_write_bytes


@dataclass
class LaunchSummary:
    done_before: int = 0
    completed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (run id, one-line error)


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
            failed = store.run_dir(run_id) / "failed"
            try:
                if is_sequential(request):
                    method = sequential_method(request.config.method)
                    method.execute(request, self.results, self.device or pick_device(), self.progress, None)
                    evaluate_step(request, self.results, self.device)
                else:
                    execute(request, self.results, self.device, progress=self.progress)
            except VddError as exc:
                summary.failed.append((run_id, str(exc)))
                atomic_write_bytes(failed, f"{exc}\n".encode())
            except Exception as exc:  # keep the sweep going; the full trace lands next to the run
                summary.failed.append((run_id, f"{type(exc).__name__}: {exc}"))
                atomic_write_bytes(failed, traceback.format_exc().encode())
            else:
                failed.unlink(missing_ok=True)
                summary.completed += 1
        return summary
