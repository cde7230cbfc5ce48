"""Training cost of each parameter-sharing method relative to fine-tuning, on the same backbone and batch.

One training step = the method's own ``train_mode``, ``loss``, backward and optimizer step (its
``param_groups`` and phase optimizer). Time: median of ``--steps`` timed steps after ``--warmup`` steps
(the first warm-up step compiles the model with ``--compile``); ``--precision bf16`` trains under bf16
autocast on channels_last tensors, as the harness does on a GPU.
Peak memory of one step above what was allocated before it (activations, gradients, optimizer state):
on CUDA ``torch.cuda.max_memory_allocated``; on CPU the allocation timeline of the torch profiler
(``profile_memory``): the largest running sum of the ops' self allocations in time order. Ratios are
taken against fine-tuning measured in the same process. The backbone is randomly initialised (costs do not
depend on the weights). Usage: ``python bench/method_costs.py [--backbone resnet26 --batch 32 --json]``;
the ``methods`` section of `vdd bench` reads the same rows (`measured_rows`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from typing import Any

import torch
from tabulate import tabulate
from torch import nn

from vdd_bench.backbones import BackboneSpec, build_backbone
from vdd_bench.bench.common import network_parser
from vdd_bench.engine import make_optimizer
from vdd_bench.method import METHODS, Method, TaskContext, get_method, resolve_hparams

METHOD_NAMES = ("finetune", "feature", "adapters_series", "adapters_parallel", "piggyback", "dan")


def context(method: str, spec: BackboneSpec, size: int, classes: int = 100) -> TaskContext:
    torch.manual_seed(0)
    pretrained = build_backbone(spec, 1000).state_dict()
    hparams = resolve_hparams(METHODS.get(method).defaults, {}, method)
    return TaskContext("bench", classes, spec, pretrained, 1000, hparams, size)


def make_step(
    method: Method,
    model: nn.Module,
    ctx: TaskContext,
    images: torch.Tensor,
    labels: torch.Tensor,
    precision: str = "fp32",
):
    """One training step; ``precision="bf16"``: under bf16 autocast, as the harness trains on a GPU."""
    phase = method.phases(ctx)[0]
    optimizer = make_optimizer(method.param_groups(model, phase, ctx), phase)

    def step() -> None:
        method.train_mode(model)
        with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = method.loss(model, images, labels, ctx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def peak_step_bytes(step, device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    live = peak = 0
    for _, allocated in sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events()):
        live += allocated
        peak = max(peak, live)
    return peak


def measure(method_name: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    spec = BackboneSpec(args.backbone, width=args.width)
    ctx = context(method_name, spec, args.size)
    method = get_method(method_name)
    model = method.build(ctx).to(device)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, args.size, args.size, generator=generator).to(device)
    labels = torch.randint(0, ctx.num_classes, (args.batch,), generator=generator).to(device)
    if args.precision == "bf16":  # the harness's GPU form: bf16 autocast on channels_last tensors
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    if args.compile:
        model = torch.compile(model)
    step = make_step(method, model, ctx, images, labels, args.precision)
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return {
        "method": method_name,
        "step_s": statistics.median(times),
        "peak_bytes": peak_step_bytes(step, device),
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = network_parser(__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--methods", default=",".join(METHOD_NAMES))
    parser.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32", help="bf16: autocast + channels_last"
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile the model (compiled by the warm-up)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    names = [m for m in args.methods.split(",") if m]
    if "finetune" not in names:
        names.insert(0, "finetune")
    rows = [measure(name, args, device) for name in names]
    base = next(r for r in rows if r["method"] == "finetune")
    for row in rows:
        row["time_ratio"] = row["step_s"] / base["step_s"]
        row["memory_ratio"] = row["peak_bytes"] / base["peak_bytes"]
    setup = {
        "backbone": str(BackboneSpec(args.backbone, width=args.width)),
        "input": args.size,
        "batch": args.batch,
        "precision": args.precision + (", torch.compile" if args.compile else ""),
        "device": str(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
    }
    if args.json:
        print(json.dumps({"setup": setup, "rows": rows}, indent=2))
    else:
        print(", ".join(f"{k}: {v}" for k, v in setup.items()))
        table = [
            [
                r["method"],
                f"{1000 * r['step_s']:.0f}",
                f"{r['time_ratio']:.2f}",
                f"{r['peak_bytes'] / 2**20:.0f}",
                f"{r['memory_ratio']:.2f}",
            ]
            for r in rows
        ]
        print(tabulate(table, ["method", "step ms", "time / finetune", "peak MiB", "memory / finetune"]))
    return rows


def measured_rows(args: list[str]) -> list[dict[str, Any]]:
    """The rows of `main` for these command-line arguments, its printout silenced."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        return main(["--json", *args])
