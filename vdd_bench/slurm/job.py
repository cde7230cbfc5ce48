"""The function a SLURM job runs: one run, under its claim, requeue-safe.

`RunJob` is a submitit `Checkpointable`: on SIGUSR2 (time limit, preemption with a signal) submitit calls
its `checkpoint()`, which hands back the same job as a DelayedSubmission, and requeues it; on
`scontrol requeue` or a preemption that kills the job, SLURM starts the same job id again. Either way the
new process re-enters `__call__`, renews the claim (same job id) and the runner resumes from the run's last
epoch-end checkpoint; training is deterministic per (seed, phase, epoch), so the record is the one an
uninterrupted run would have written.
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path

import submitit

from vdd_bench.config import RunRequest
from vdd_bench.device import pick_device
from vdd_bench.engine import load_state, previous_checkpoint
from vdd_bench.errors import Diverged, VddError
from vdd_bench.execution import live_claim_checker, needs_run, run_request, settle_unstartable
from vdd_bench.store import ClaimHeld, RunStore, atomic_write_bytes, claimed


class RunJob(submitit.helpers.Checkpointable):
    """One planned run. Its state lives in the run folder (checkpoint.pt), not in this object, so the
    default `checkpoint()` (resubmit this same object) is all a requeue needs."""

    def __init__(self, request: RunRequest, results: str, device: str | None = None) -> None:
        self.request = request
        self.results = str(results)
        self.device = device

    def __call__(self) -> str:
        results = Path(self.results)
        store = RunStore(results)
        run_id = self.request.config.run_id
        if not needs_run(self.request, results):
            return f"{run_id}: already done or settled"
        unstartable = settle_unstartable(self.request, store)
        if unstartable is not None:  # its job started after its inputs' jobs ended, but one did not finish
            outcome, reason = unstartable
            return f"{run_id}: {reason if outcome == 'failed' else 'settled as diverged: ' + reason}"
        cpus = os.environ.get("SLURM_CPUS_PER_TASK")
        if cpus:
            import torch

            torch.set_num_threads(int(cpus))
        folder = store.run_dir(run_id)
        try:
            with claimed(folder, live_claim_checker()):
                try:
                    report_resume(folder, self.request)
                    run_request(self.request, results, pick_device(self.device), progress=False)
                except Diverged as exc:  # settled by `execute`: the job ends normally, the run is not retried
                    return f"{run_id}: diverged: {exc}"
                except Exception as exc:
                    text = f"{exc}\n" if isinstance(exc, VddError) else traceback.format_exc()
                    atomic_write_bytes(folder / "failed", text.encode())
                    raise
        except ClaimHeld as exc:  # someone else runs it: fail this job without marking the run failed
            raise VddError(str(exc)) from None
        (folder / "failed").unlink(missing_ok=True)
        return f"{run_id}: done"


def report_resume(folder: Path, request: RunRequest) -> None:
    """Say in the job's log where a requeued or relaunched run resumes."""
    path = folder / "checkpoint.pt"
    if not path.exists() and not previous_checkpoint(path).exists():
        print(f"{request.config.run_id}: starting", flush=True)
        return
    state = load_state(path, request.config.digest(), warn=False)
    if state is not None:
        print(
            f"{request.config.run_id}: resuming from its checkpoint "
            f"(phase {state['phase']}, epoch {state['epoch']})",
            flush=True,
        )
