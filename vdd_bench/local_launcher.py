"""The local launcher runs planned runs on this machine (SLURM's: `slurm/launcher.py`).

With one job (the default on a CPU) the runs go one after another in this process, a run's inputs first.
With `jobs` N > 1 up to N runs go at once, each in a worker process of its own: with GPUs one run per
device, on a CPU the cores split between the workers (torch's threads set in each, so that N processes never
ask for N times the cores: two processes with every core's threads each run many times slower). A run
starts when its inputs are done (NetTailor's teacher, student and candidates; a chain's previous step); a
run whose input failed is marked blocked, naming it, and independent runs go on. A run whose training
diverges is settled as diverged (so is every run that reads it): not a failure, and not run again.

After a run, its method's `after_run` does what the method adds (a chain step of PackNet or LwF is evaluated
on every task of its chain learned so far: the accuracy matrix).

Every launcher runs a run under its claim (`store.claimed`): a run that a live process or SLURM job holds
is skipped, so the same run never runs twice at once, whichever launcher started it.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vdd_bench.config import RunRequest, closure
from vdd_bench.device import Device, pick_device
from vdd_bench.errors import Diverged, VddError
from vdd_bench.execution import live_claim_checker, needs_run, run_request, settle_unstartable
from vdd_bench.method import get_method
from vdd_bench.store import ClaimHeld, RunStore, claimed


@dataclass
class LaunchSummary:
    done_before: int = 0
    completed: int = 0  # by this process
    done_elsewhere: int = 0  # finished by another process between this one's plan and its turn
    failed: list[tuple[str, str]] = field(default_factory=list)  # (run id, one-line error)
    diverged_before: int = 0  # settled as diverged by an earlier launch
    diverged: list[tuple[str, str]] = field(default_factory=list)  # (run id, why): settled by this one
    claimed: list[tuple[str, str]] = field(default_factory=list)  # (run id, who holds it): skipped


def default_jobs(device: Device | None) -> int:
    """One run per visible GPU when training on CUDA, else one run at a time."""
    if device is not None and device.is_cuda:
        return max(1, torch.cuda.device_count())
    return 1


def run_one(request: RunRequest, results: Path, device: Device | None, progress: bool) -> tuple[str, str]:
    """Run one planned run under its claim: ("completed" | "elsewhere" | "claimed" | "diverged" | "failed",
    message); a failure or divergence is recorded in the run's folder (`failed`, `diverged`) and returned,
    never raised."""
    store = RunStore(results)
    run_id = request.config.run_id
    try:
        with claimed(store.run_dir(run_id), live_claim_checker()):
            if store.is_diverged(run_id):  # settled meanwhile, as another run's input
                return "diverged", (store.run_dir(run_id) / "diverged").read_text().strip()
            if not needs_run(request, results):
                return "elsewhere", ""
            run_request(request, results, device, progress)
    except ClaimHeld as exc:
        return "claimed", str(exc)
    except Diverged as exc:  # settled in the store by `execute`
        return "diverged", str(exc)
    except VddError as exc:
        store.fail(run_id, exc)
        return "failed", str(exc)
    except Exception as exc:  # keep the sweep going; the full trace lands next to the run
        store.fail(run_id, exc)
        return "failed", f"{type(exc).__name__}: {exc}"
    return "completed", ""


class LocalLauncher:
    """Runs what is not done yet, `jobs` at a time; a failing run is recorded (`failed` file) and the others
    go on. `threads`: torch threads per worker (default: the cores split between the workers)."""

    def __init__(
        self,
        results: Path,
        device: Device | None = None,
        progress: bool = True,
        jobs: int | None = None,
        threads: int | None = None,
    ) -> None:
        self.results = Path(results)
        self.device = device
        self.progress = progress
        self.jobs = default_jobs(device) if jobs is None else jobs
        if self.jobs < 1:
            raise VddError(f"--jobs {self.jobs}: give at least 1 (runs at once)")
        self.threads = threads or max(1, (os.cpu_count() or 1) // self.jobs)

    def launch(self, requests: list[RunRequest]) -> LaunchSummary:
        store = RunStore(self.results)
        store.mark_entries(request.config.run_id for request in requests)
        summary = LaunchSummary()
        todo = []
        for request in requests:
            if store.is_done(request.config.run_id):
                summary.done_before += 1
                get_method(request.config.method).after_run(request, self.results, self.device)
            elif store.is_diverged(request.config.run_id):
                summary.diverged_before += 1
            else:
                todo.append(request)
        if self.jobs == 1:
            for request in tqdm(todo, desc="runs", unit="run", disable=not self.progress or not todo):
                _count(
                    summary,
                    request.config.run_id,
                    *run_one(request, self.results, self.device, self.progress),
                )
        elif todo:
            self._launch_parallel(todo, summary)
        return summary

    def _launch_parallel(self, todo: list[RunRequest], summary: LaunchSummary) -> None:
        """Every run of `todo` and its inputs in a pool of `jobs` workers, each once its inputs are done."""
        store = RunStore(self.results)
        asked = {request.config.run_id for request in todo}
        waiting = {r.config.run_id: r for r in closure(todo)}
        waiting = {i: r for i, r in waiting.items() if not (store.is_done(i) or store.is_diverged(i))}
        devices = _worker_devices(self.device, self.jobs)
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch state
        slots = context.Queue()
        for slot in range(self.jobs):
            slots.put(devices[slot % len(devices)])
        bar = tqdm(total=len(todo), desc="runs", unit="run", disable=not self.progress)
        running: dict[Future, str] = {}
        with ProcessPoolExecutor(self.jobs, context, _init_worker, (slots, self.threads)) as pool:
            while waiting or running:
                for run_id, request in list(waiting.items()):
                    if len(running) >= self.jobs:
                        break
                    inputs = [needed.config.run_id for needed in request.inputs.values()]
                    if any(i in waiting or i in running.values() for i in inputs):
                        continue  # an input still to run, or running now
                    del waiting[run_id]
                    unstartable = settle_unstartable(request, store)  # an input diverged, failed, or is held
                    if unstartable is None:
                        running[pool.submit(_run_in_worker, request, str(self.results))] = run_id
                        continue
                    _count(summary, run_id, *unstartable, asked, bar)
                if not running:
                    continue  # what is left waits on runs just marked blocked: the next pass marks it too
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    _count(summary, running.pop(future), *future.result(), asked, bar)
        bar.close()


def _count(
    summary: LaunchSummary,
    run_id: str,
    outcome: str,
    message: str,
    asked: set[str] | None = None,
    bar: tqdm | None = None,
) -> None:
    """Add a run's outcome to the summary; the inputs a parallel launch runs besides the runs asked for
    (`asked`) are not counted."""
    if asked is not None and run_id not in asked:
        return
    if outcome == "completed":
        summary.completed += 1
    elif outcome == "elsewhere":
        summary.done_elsewhere += 1
    elif outcome == "claimed":
        summary.claimed.append((run_id, message))
    elif outcome == "diverged":
        summary.diverged.append((run_id, message))
    else:
        summary.failed.append((run_id, message))
    if bar is not None:
        bar.update(1)


def _worker_devices(device: Device | None, jobs: int) -> list[str]:
    """The device of each worker: one GPU each (round robin) on CUDA, else the CPU."""
    if device is not None and device.is_cuda:
        return [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    return ["cpu"]


_WORKER: dict[str, Device] = {}


def _init_worker(slots, threads: int) -> None:
    """A worker takes one device and its share of the cores for its whole life."""
    torch.set_num_threads(threads)
    _WORKER["device"] = pick_device(slots.get())


def _run_in_worker(request: RunRequest, results: str) -> tuple[str, str]:
    return run_one(request, Path(results), _WORKER["device"], progress=False)
