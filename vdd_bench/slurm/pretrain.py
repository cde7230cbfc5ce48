"""`vdd pretrain --launcher slurm`: the data-parallel pretraining as one SLURM job whose tasks are the ranks.

submitit's `TorchDistributedEnvironment` gives each task its rank, the world size and the rendezvous address;
the job is requeue-safe (a preempted or timed-out job is resubmitted and resumes from the last epoch-end
checkpoint, like any run)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed

from vdd_bench.device import pick_device
from vdd_bench.distributed import Distributed, backend, limit_threads
from vdd_bench.errors import VddError
from vdd_bench.pretrain import PretrainPlan, pretrain_rank
from vdd_bench.slurm.launcher import default_executor
from vdd_bench.slurm.profile import SlurmProfile


@dataclass
class SubmititPretrain:
    """A callable for any submitit executor whose `tasks_per_node` is `plan.processes` (and, on SLURM,
    `gpus_per_node` the same): each task trains one rank of `plan`."""

    plan: PretrainPlan
    results: Path
    out: Path
    device: str | None = None  # "cpu" forces gloo on CPU; default: this task's GPU when there is one

    def __call__(self) -> str:
        import submitit  # imported by the job, where submitit is installed with the harness

        env = submitit.helpers.TorchDistributedEnvironment().export(
            set_cuda_visible_devices=False, overwrite=True
        )
        if self.device:
            device_type = torch.device(self.device).type
        else:
            device_type = "cuda" if torch.cuda.is_available() else "cpu"
        if device_type == "cuda":
            device = pick_device(f"cuda:{env.local_rank % torch.cuda.device_count()}")
            torch.cuda.set_device(device.torch_device)
        else:
            limit_threads(env.local_world_size)
            device = pick_device("cpu")
        torch.distributed.init_process_group(backend(device_type), init_method="env://")
        try:
            dist = Distributed(env.rank, env.world_size, self.plan.sync_bn)
            path = pretrain_rank(dist, device, self.plan, Path(self.results), Path(self.out))
        finally:
            torch.distributed.destroy_process_group()
        return str(path)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self)


def submit_pretrain(
    plan: PretrainPlan,
    results: Path,
    profile: SlurmProfile,
    out: Path | None = None,
    device: str | None = None,
) -> tuple[Any, Path]:
    """Submit `plan` as one job of `plan.processes` tasks on one node, one GPU each when the profile has
    GPUs, with the profile's partition, account, time limit, CPUs per task and requeue settings. Returns the
    submitit job (None when the checkpoint exists already) and the checkpoint path."""
    results = Path(results).resolve()
    out = plan.checkpoint_path(results, Path(out).resolve() if out else None)
    if out.exists():
        return None, out
    digest = plan.request().config.digest()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    executor = default_executor(results / "slurm" / f"pretrain-{stamp}-{digest}", profile)
    params: dict[str, Any] = {"ntasks_per_node": plan.processes, "nodes": 1, "job_name": "vdd-pretrain"}
    if profile.gpus:
        params["gpus_per_node"] = plan.processes
    executor.update_parameters(**params)
    return executor.submit(SubmititPretrain(plan, results, out, device)), out


def wait_for_job(job: Any) -> None:
    """Until every task of a submitted job has returned; a failed task becomes a one-line VddError."""
    try:
        job.results()
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VddError(f"pretraining job {job.job_id} failed: {first} (logs: {job.paths.folder})") from None
