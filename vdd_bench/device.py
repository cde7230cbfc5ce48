"""Where training runs: CUDA with bf16 autocast and channels_last when a GPU is present, else CPU fp32."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from vdd_bench.errors import VddError


@dataclass(frozen=True)
class Device:
    torch_device: torch.device

    @property
    def is_cuda(self) -> bool:
        return self.torch_device.type == "cuda"

    def describe(self) -> str:
        if self.is_cuda:
            return f"cuda:{torch.cuda.get_device_name(self.torch_device)} (bf16 autocast, channels_last)"
        return f"cpu ({torch.get_num_threads()} threads, fp32)"

    def prepare_model(self, model: nn.Module) -> nn.Module:
        model = model.to(self.torch_device)
        if self.is_cuda:
            model = model.to(memory_format=torch.channels_last)
        return model

    def prepare_batch(self, images: torch.Tensor) -> torch.Tensor:
        if self.is_cuda:
            return images.contiguous(memory_format=torch.channels_last)
        return images

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        if self.is_cuda:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                yield
        else:
            yield


def pick_device(name: str | None = None) -> Device:
    """`name` forces a device ("cpu", "cuda", "cuda:1"); by default the first GPU when there is one."""
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise VddError(f"unknown device {name!r}: use cpu, cuda or cuda:N")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise VddError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s); use cpu")
    return Device(device)
