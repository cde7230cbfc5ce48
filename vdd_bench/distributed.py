"""Data-parallel training for `vdd pretrain`: one process per GPU (NCCL), or CPU processes (gloo).

Every process (rank) holds the whole training set and draws the same per-(seed, phase, epoch) permutation and
augmentation randomness as a single process would; each global batch of `batch_size` images is then cut into
`world_size` contiguous shards of `batch_size / world_size` images and rank r trains on shard r. DDP averages
the gradients, so one step sees exactly the global batch of the single-process run.

BatchNorm, by default, is synchronised: training statistics are those of the whole global batch (torch's
SyncBatchNorm on CUDA; on CPU, where torch's refuses to run, `GlobalBatchNorm2d` below), so N processes
compute what one process computes, up to float summation order, and the run keeps its single-process run id.
With `sync_bn=False` each process normalises with the statistics of its own shard (DDP broadcasts rank 0's
running statistics at every step): a different computation, so the run's config records it (own run id).

Only rank 0 writes checkpoints, the run's record and the backbone file; all ranks read the same epoch-end
checkpoint to resume (the results folder must be shared, as it is for any SLURM run).

Two ways in: `spawn` starts the processes on this machine (torch.multiprocessing, file rendezvous), and
`slurm.pretrain.SubmititPretrain` runs each rank as a task of one SLURM job.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from vdd_bench.device import Device, pick_device
from vdd_bench.errors import VddError


def check_batch(batch_size: int, world_size: int) -> int:
    """The per-process batch; refuses a global batch that does not split evenly."""
    if batch_size % world_size:
        raise VddError(
            f"batch_size {batch_size} is not divisible by {world_size} processes: "
            "pick a batch size that is a multiple of the process count"
        )
    return batch_size // world_size


class _AllReduceSum(torch.autograd.Function):
    """Sum over all ranks; its gradient is the sum over all ranks of the gradients (each rank's loss
    depends on every rank's input through the sum)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch across all processes.

    torch.nn.SyncBatchNorm runs on GPUs only; this one runs anywhere (CPU with gloo in particular). Mean and
    variance are two-pass over the global batch, through differentiable all-reduces, so the backward pass
    carries the cross-process terms exactly as SyncBatchNorm does. Running statistics are updated as
    BatchNorm2d updates them (unbiased variance of the global batch), identically on every rank.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        channels = x.shape[1]
        wide = x.double()  # statistics accumulated in float64, as CPU BatchNorm does
        local = torch.cat([wide.sum((0, 2, 3)), wide.new_full((1,), x.numel() / channels)])
        total = _AllReduceSum.apply(local)
        count = total[channels]
        mean = total[:channels] / count
        centred = wide - mean.view(1, -1, 1, 1)
        var = _AllReduceSum.apply((centred * centred).sum((0, 2, 3))) / count
        invstd = torch.rsqrt(var + self.eps).float().view(1, -1, 1, 1)
        y = (x.float() - mean.float().view(1, -1, 1, 1)) * invstd
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                unbiased = var * (count / (count - 1).clamp(min=1))
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.detach(), alpha=factor)
        return y.to(x.dtype)


_BATCHNORM_2D = (nn.BatchNorm2d, nn.SyncBatchNorm)


def _swap_batchnorm(module: nn.Module, make: Callable[[nn.modules.batchnorm._BatchNorm], nn.Module]) -> None:
    for name, child in module.named_children():
        if isinstance(child, _BATCHNORM_2D):
            new = make(child)
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            if child.track_running_stats:
                new.running_mean = child.running_mean
                new.running_var = child.running_var
                new.num_batches_tracked = child.num_batches_tracked
            new.train(child.training)
            setattr(module, name, new)
        else:
            _swap_batchnorm(child, make)


def _args(bn: nn.modules.batchnorm._BatchNorm) -> tuple:
    return (bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)


def weights_digest(model: nn.Module) -> str:
    """sha256 (16 hex) of every tensor of the state dict, in key order: equal digests, equal weights."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Distributed:
    """This process's place in an initialised default process group."""

    rank: int
    world_size: int
    sync_bn: bool = True

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict[str, Any]:
        return {
            "world_size": self.world_size,
            "backend": dist.get_backend(),
            "batchnorm": "sync" if self.sync_bn else "per-process",
        }

    def trains_on(self, size: int) -> bool:
        """Whether a global batch of `size` images is trained on: every shard must be usable by BatchNorm
        (one image with synchronised statistics, two without); only a last, short batch can fail this."""
        return size >= 2 and size // self.world_size >= (1 if self.sync_bn else 2)

    def shard(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """This rank's contiguous shard of a global batch, and the loss scale that makes DDP's average of
        per-shard mean losses the global batch's mean loss when a short last batch splits unevenly."""
        mine = labels.tensor_split(self.world_size)[self.rank]
        scale = len(mine) * self.world_size / len(labels)
        return images.tensor_split(self.world_size)[self.rank], mine, scale

    def prepare(self, model: nn.Module, device: Device) -> nn.Module:
        """Synchronised BatchNorm (in place, same parameters and buffers) when asked for."""
        if self.sync_bn:
            if device.is_cuda:
                _swap_batchnorm(model, lambda bn: nn.SyncBatchNorm(*_args(bn)))
            else:
                _swap_batchnorm(model, lambda bn: GlobalBatchNorm2d(*_args(bn)))
        return model

    def wrap(self, model: nn.Module, device: Device) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        if device.is_cuda:
            return DistributedDataParallel(model, device_ids=[device.torch_device.index])
        return DistributedDataParallel(model)

    def finish(self, model: nn.Module) -> tuple[nn.Module, list[str]]:
        """Plain BatchNorm2d again, and every rank's weights digest; ranks that diverged are an error."""
        _swap_batchnorm(model, lambda bn: nn.BatchNorm2d(*_args(bn)))
        if not self.sync_bn:  # running statistics of rank 0, as DDP broadcasts them before every step
            for buffer in model.buffers():
                dist.broadcast(buffer, 0)
        digests = self.gather(weights_digest(model))
        if len(set(digests)) != 1:
            raise VddError(f"data-parallel ranks ended with different weights: {digests}")
        return model, digests

    def gather(self, value: Any) -> list[Any]:
        values: list[Any] = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def agree(self, value: Any, what: str) -> None:
        values = self.gather(value)
        if any(v != values[0] for v in values):
            raise VddError(
                f"data-parallel ranks disagree on the {what} ({values}): "
                "all processes must see the same results folder"
            )

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor)
        return tensor


def backend(device_type: str) -> str:
    return "nccl" if device_type == "cuda" else "gloo"


def limit_threads(world_size: int) -> None:
    if "OMP_NUM_THREADS" not in os.environ:  # share the cores instead of every process taking all of them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))


def _rank_main(
    rank: int, world_size: int, init: str, device_type: str, sync_bn: bool, fn: Callable, args: tuple
) -> None:
    limit_threads(world_size)
    device = pick_device(f"cuda:{rank}" if device_type == "cuda" else "cpu")
    if device.is_cuda:
        torch.cuda.set_device(device.torch_device)
    dist.init_process_group(backend(device_type), init_method=init, rank=rank, world_size=world_size)
    try:
        fn(Distributed(rank, world_size, sync_bn), device, *args)
    finally:
        dist.destroy_process_group()


def spawn(world_size: int, device: Device | None, sync_bn: bool, fn: Callable, args: tuple) -> None:
    """Run `fn(Distributed, Device, *args)` in `world_size` fresh processes on this machine (GPU r for rank
    r when `device` is CUDA, else CPU with gloo); a VddError in a rank comes back as a VddError here."""
    device = device or pick_device()
    device_type = device.torch_device.type
    if device_type == "cuda" and torch.cuda.device_count() < world_size:
        raise VddError(f"{world_size} processes need {world_size} GPUs; {torch.cuda.device_count()} visible")
    with tempfile.TemporaryDirectory(prefix="vdd-ddp-") as folder:
        init = (Path(folder) / "rendezvous").as_uri()
        try:
            torch.multiprocessing.start_processes(
                _rank_main,
                args=(world_size, init, device_type, sync_bn, fn, args),
                nprocs=world_size,
                join=True,
                start_method="spawn",
            )
        except torch.multiprocessing.ProcessRaisedException as exc:
            lines = [line for line in str(exc).splitlines() if line.strip()]
            last = lines[-1] if lines else str(exc)
            prefix = "vdd_bench.errors."
            if last.startswith(prefix):
                raise VddError(last.split(": ", 1)[-1]) from None
            raise VddError(f"a data-parallel process failed: {last}") from exc
        except torch.multiprocessing.ProcessExitedException as exc:
            raise VddError(f"a data-parallel process died: {exc}") from exc
