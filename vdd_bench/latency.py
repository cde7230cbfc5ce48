"""Inference latency of a network, as run by the harness (eager) and as deployed (compiled).

Eager: the module as evaluation runs it, in ``torch.inference_mode`` (no autograd bookkeeping).
Compiled: ``torch.compile`` with inductor's freezing, which folds BatchNorm and constant weights into the
convolutions and fuses the element-wise work between them (ReLU, residual and path sums) into generated
kernels: the form a network is deployed in, where the cost of a layer follows its arithmetic rather than
the number of operators it takes in Python. It needs a C++ compiler on the CPU (Triton on a GPU);
`compiled` raises `CompileUnavailable` when the backend fails, so callers can report the eager form alone.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import Tensor, nn


class CompileUnavailable(RuntimeError):
    """torch.compile could not build the network on this machine (no C++ compiler, unsupported device)."""


def median_forward_seconds(model: nn.Module, images: Tensor, repeats: int = 7) -> float:
    """Median wall time of one forward pass of ``images`` in inference mode (after one warm-up pass)."""
    return interleaved_median_seconds([model], images, repeats)[0]


def interleaved_median_seconds(models: list[nn.Module], images: Tensor, repeats: int = 7) -> list[float]:
    """Each model's median forward time, the models taking turns pass after pass (after one warm-up pass
    each), so that a machine slowing down or speeding up meanwhile affects them alike and their ratio."""
    times: list[list[float]] = [[] for _ in models]
    with torch.inference_mode():
        for model in models:
            model.eval()
            model(images)
        for _ in range(repeats):
            for model, spent in zip(models, times, strict=True):
                if images.is_cuda:
                    torch.cuda.synchronize()
                start = time.perf_counter()
                model(images)
                if images.is_cuda:
                    torch.cuda.synchronize()
                spent.append(time.perf_counter() - start)
    return [statistics.median(spent) for spent in times]


def compiled(models: list[nn.Module], images: Tensor) -> list[nn.Module]:
    """``models`` compiled for inference on batches shaped like ``images`` (each compiled by a warm-up call).

    What was compiled before is discarded first (``torch._dynamo.reset``): networks of one class share a
    ``forward``, which dynamo recompiles for each new structure and, past its recompile limit, silently
    runs eager, so a long series of networks would otherwise time eager code under the compiled name."""
    import torch._dynamo

    torch._dynamo.reset()
    runners = []
    for model in models:
        model.eval()
        runner = torch.compile(model, dynamic=False, options={"freezing": True})
        try:
            with torch.inference_mode():
                runner(images)
        except Exception as exc:  # the backend's errors have no common type (compiler missing, lowering)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CompileUnavailable(f"torch.compile failed on this machine: {first[:200]}") from exc
        runners.append(runner)
    return runners
