"""Parameters per task of each method on ResNet-26 at 64 px, counted by the harness's own accounting.

The "pre-trained" ResNet-26 (width 1, 1000 classes) is randomly initialised with randomised BN state (the
counts do not depend on the values); each method builds its model for a 100-class task, takes one training
step through its own hooks (so whatever it trains differs from the pre-trained tensors, as after real
training) and ends its phase (Piggyback's binarisation, DAN's materialised weights). Then
``parameter_split`` and ``count_macs`` report what ``vdd run`` would record. Usage:
``python bench/method_params.py [--backbone resnet26 --size 64 --json]``.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import torch
from tabulate import tabulate

from vdd_bench.accounting import count_macs, count_parameters, parameter_split
from vdd_bench.backbones import BackboneSpec, build_backbone
from vdd_bench.bench.common import network_parser
from vdd_bench.engine import make_optimizer
from vdd_bench.method import METHODS, TaskContext, get_method, resolve_hparams

METHOD_NAMES = (
    "finetune",
    "feature",
    "adapters_series",
    "adapters_parallel",
    "piggyback",
    "dan",
    "bn_bias",
    "lora",
    "taps",
    "spottune",
)


def pretrained_state(spec: BackboneSpec) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = build_backbone(spec, 1000)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return model.state_dict()


def account(method_name: str, spec: BackboneSpec, size: int, classes: int = 100) -> dict[str, Any]:
    pretrained = pretrained_state(spec)
    hparams = resolve_hparams(METHODS.get(method_name).defaults, {}, method_name)
    ctx = TaskContext("bench", classes, spec, pretrained, 1000, hparams, size)
    method = get_method(method_name)
    model = method.build(ctx)
    phase = method.phases(ctx)[0]
    optimizer = make_optimizer(method.param_groups(model, phase, ctx), phase)
    method.train_mode(model)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, size, size, generator=generator)
    loss = method.loss(model, images, torch.tensor([0, 1]), ctx)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    model = method.end_phase(model, phase, ctx).eval()
    split = parameter_split(copy.deepcopy(model), pretrained)
    plain = build_backbone(spec, classes)
    backbone = count_parameters(plain, include_classifier=False)
    return {
        "method": method_name,
        "backbone_params": backbone,
        "params_shared": split["params_shared"],
        "task_bytes": split["task_bytes"],
        "params_task_equiv": split["params_task_equiv"],
        "per_task_total": split["params_shared"] + split["params_task_equiv"],
        "task_over_backbone": split["params_task_equiv"] / backbone,
        "macs": count_macs(model, size),
    }


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = network_parser(__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--methods", default=",".join(METHOD_NAMES))
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    spec = BackboneSpec(args.backbone, width=args.width)
    rows = [account(m, spec, args.size, args.classes) for m in args.methods.split(",") if m]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"{spec} at {args.size} px, a {args.classes}-class task")
        table = [
            [
                r["method"],
                f"{r['params_shared'] / 1e6:.2f}",
                f"{r['params_task_equiv'] / 1e6:.3f}",
                f"{100 * r['task_over_backbone']:.1f}",
                f"{r['per_task_total'] / 1e6:.2f}",
                f"{r['macs'] / 1e9:.3f}",
            ]
            for r in rows
        ]
        headers = [
            "method",
            "shared M",
            "task-specific M (fp32 equiv.)",
            "task / backbone %",
            "per task M",
            "GMACs",
        ]
        print(tabulate(table, headers))
    return rows


if __name__ == "__main__":
    main()
