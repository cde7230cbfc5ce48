"""What the `vdd bench` sections share: the options, the row of a ratio, thread and timing helpers."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from vdd_bench.tasks.toy import generate_toy

CPU = torch.device("cpu")


@dataclass
class BenchOptions:
    quick: bool = False
    sections: list[str] | None = None
    data_root: Path | None = None
    nettailor_results: Path | None = None
    workers: int = 2  # the baseline loader's worker processes, and the harness path's threads
    threads: int = 1  # torch threads for the model timings (methods, tailored)
    device: torch.device = CPU  # a GPU adds the GPU rows
    compile: bool = True  # the torch.compile rows (training step, tailored networks)


def row(section: str, name: str, value: float, unit: str, baseline: str, base: float, goal: str = "") -> dict:
    """One measurement of a section: its value, its baseline's and their ratio (and the ratio's goal)."""
    return {
        "section": section,
        "measure": name,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "baseline_value": base,
        "ratio": value / base if base else float("nan"),
        "goal": goal,
    }


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Torch's CPU threads set to `n` inside the block."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def best_rate(fn: Callable[[], float], repeats: int) -> float:
    """The best of `repeats` rates (images/s): the fastest repeat, as for every side of a ratio."""
    return max(fn() for _ in range(repeats))


def toy_root(tmp: Path) -> Path:
    """The toy benchmark, generated once per `vdd bench` (its marker makes a second call free)."""

    return generate_toy(tmp.parent / "toy")


def gpu_name(options: BenchOptions) -> str:
    return torch.cuda.get_device_name(options.device)


def network_parser(description: str) -> argparse.ArgumentParser:
    """The command line of a bench script: which backbone, how wide, at what input size."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--backbone", default="resnet26")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--size", type=int, default=64)
    return parser
