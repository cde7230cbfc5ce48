"""The `tailored` section of `vdd bench`: NetTailor networks' latency against their teachers' and MACs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vdd_bench.accounting import count_macs
from vdd_bench.backbones import BackboneSpec, build_backbone
from vdd_bench.bench.common import BenchOptions, gpu_name, row, torch_threads
from vdd_bench.device import Device
from vdd_bench.latency import CompileUnavailable, compiled, interleaved_median_seconds
from vdd_bench.method import TaskContext, get_method
from vdd_bench.methods._nettailor_graph import TailoredNet, choose_paths, parse_skips
from vdd_bench.record import RunRecord
from vdd_bench.runner import load_run_model
from vdd_bench.store import RunStore


def _nettailor_records(results: Path | None) -> list[RunRecord]:

    if results is None:
        return []
    return [r for r in RunStore(results).done_records() if r.method == "nettailor"]


def random_student(spec, size: int, remove_blocks: int, classes: int = 10) -> torch.nn.Module:
    """A NetTailor student pruned for real with random attention logits (fixed seed) standing in for trained
    ones: timing does not depend on the weights."""

    torch.manual_seed(0)
    model = TailoredNet(build_backbone(spec, classes), parse_skips("3"), size, "backbone")
    with torch.no_grad():
        for logits in model.logits.values():
            logits.normal_(0.0, 2.0)
    model.restrict(choose_paths(model, remove_blocks, 0.05)[0])
    return model


def at_decathlon_scale(model: Any, classes: int = 10) -> tuple[Any, Any, int]:
    """A tailored network's architecture (its kept blocks and proxies) on ResNet-26 at width 1 and 64 px
    with random weights, the full network of that size, and the input size: what the architecture of a
    small run costs at the decathlon's scale (timing does not depend on the weights)."""

    spec, size = BackboneSpec("resnet26", width=1.0), 64
    torch.manual_seed(0)
    scaled = TailoredNet(build_backbone(spec, classes), model.skips, size, model.main_path)
    scaled.restrict([list(paths) for paths in model.paths])
    return scaled, build_backbone(spec, classes), size


def _tailored_pairs(options: BenchOptions) -> tuple[list[tuple[str, Any, Any, int]], str]:
    """(name, tailored network, its fine-tuned teacher, input size) for every finished nettailor run of the
    run store; randomly pruned students against a random full network when there are none."""

    records = _nettailor_records(options.nettailor_results)
    pairs = []
    if records:
        store = RunStore(options.nettailor_results)
        method = get_method("nettailor")
        for r in records:
            spec = r.config.backbone_spec
            state, structure = load_run_model(store.run_dir(r.run_id))
            size = r.accounting.input_size
            pretrained_like = build_backbone(spec, r.num_classes).state_dict()
            ctx = TaskContext(
                r.task, r.num_classes, spec, pretrained_like, r.num_classes, r.config.hparams, size
            )
            model = method.inference_model(ctx, structure)
            model.load_state_dict(state)
            teacher_state, _ = load_run_model(store.run_dir(r.config.inputs["teacher"]))
            teacher = build_backbone(spec, r.num_classes)
            teacher.load_state_dict(teacher_state)
            name = f"{r.task} ({r.run_id[-6:]})"
            pairs.append((name, model, teacher, size))
            if not options.quick and spec != BackboneSpec("resnet26", width=1.0):
                pairs.append((f"{name} at resnet26 w1 64 px", *at_decathlon_scale(model)))
        return pairs, f"{len(records)} finished nettailor runs, and their architectures at resnet26 w1 64 px"
    spec = BackboneSpec("resnet26", width=0.25 if options.quick else 1.0)
    size = 32 if options.quick else 64
    torch.manual_seed(0)
    teacher = build_backbone(spec, 10)
    for k in (0, 4, 8):
        pairs.append((f"random student, {k} blocks removed", random_student(spec, size, k), teacher, size))
    return pairs, f"no finished nettailor runs: randomly pruned students of {spec} at {size} px"


def bench_tailored(options: BenchOptions) -> tuple[list[dict], dict]:
    """Per tailored network and device: its latency against its teacher's next to its MACs ratio, eager
    (as the harness evaluates) and compiled (`vdd_bench.latency.compiled`, the deployed form)."""

    pairs, source = _tailored_pairs(options)
    batch, repeats = (8, 3) if options.quick else (32, 25)
    devices = [Device(torch.device("cpu"))] + (
        [Device(options.device)] if options.device.type == "cuda" else []
    )
    rows, notes = [], []
    with torch_threads(options.threads):
        for number, (name, model, teacher, size) in enumerate(pairs):
            macs_ratio = count_macs(model, size) / count_macs(teacher, size)
            for device in devices:
                where = "" if device.torch_device.type == "cpu" else f", {gpu_name(options)}"
                nets = [device.prepare_model(model.eval()), device.prepare_model(teacher.eval())]
                images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
                images = device.prepare_batch(images.to(device.torch_device))
                forms = ["eager"]
                if options.compile and not (options.quick and number > 0):  # quick: one compiled pair
                    forms.append("compiled")
                for form in forms:
                    with device.autocast():
                        try:
                            timed = compiled(nets, images) if form == "compiled" else nets
                        except CompileUnavailable as exc:
                            notes.append(str(exc))
                            continue
                        tailored_s, teacher_s = interleaved_median_seconds(timed, images, repeats)
                    entry = row(
                        "tailored",
                        f"{name}, {form}{where}: latency ratio",
                        tailored_s / teacher_s,
                        "x teacher",
                        "MACs ratio",
                        macs_ratio,
                        "<= 1.25" if form == "compiled" else "",  # the goal is for the deployed form
                    )
                    entry["latency_ms"], entry["teacher_ms"] = 1000 * tailored_s, 1000 * teacher_s
                    rows.append(entry)
    setup = f"{source}; batch {batch}, CPU {options.threads} threads" + "".join(
        f"; {n}" for n in sorted(set(notes))
    )
    return rows, {"tailored": setup}
