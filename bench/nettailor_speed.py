"""Does a tailored network's measured speed-up track its MAC reduction?

For each number of removed pre-trained blocks k, a NetTailor student on the chosen backbone is pruned for
real (random attention logits, fixed seed, stand in for trained ones: timing does not depend on the weights)
and timed against the full network (the fine-tuned teacher's architecture) on the same device, median of
``--repeats`` forward passes after a warm-up. Prints per k: kept blocks, MAC ratio, speed-up (full/tailored).

    python bench/nettailor_speed.py --backbone resnet26 --width 1 --size 64 --batch 32 --threads 1
"""

from __future__ import annotations

import torch

from vdd_bench.accounting import count_macs
from vdd_bench.backbones import BackboneSpec, build_backbone
from vdd_bench.bench.common import network_parser
from vdd_bench.bench.tailored import random_student
from vdd_bench.latency import median_forward_seconds


def main() -> None:
    parser = network_parser(__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--remove", default="0,2,4,6,8,10", help="k values: pre-trained blocks removed")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    spec = BackboneSpec(args.backbone, width=args.width)
    torch.manual_seed(0)
    full = build_backbone(spec, 10)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    full_macs = count_macs(full, args.size)
    full_s = median_forward_seconds(full.to(device), images, args.repeats)
    print(f"{spec} at {args.size} px, batch {args.batch}, {device} ({torch.get_num_threads()} threads)")
    print(f"full network: {full_macs / 1e6:.1f} MMACs, {1000 * full_s:.2f} ms")
    print(f"{'k':>3} {'kept':>5} {'MMACs':>8} {'ms':>8} {'MAC ratio':>10} {'speed-up':>9}")
    for k in (int(v) for v in args.remove.split(",")):
        model = random_student(spec, args.size, k)
        macs = count_macs(model, args.size)
        seconds = median_forward_seconds(model.to(device), images, args.repeats)
        kept = sum(1 for i, paths in enumerate(model.paths) if ("main", i) in paths)
        ratios = f"{full_macs / macs:10.2f} {full_s / seconds:9.2f}"
        print(f"{k:3d} {kept:5d} {macs / 1e6:8.1f} {1000 * seconds:8.2f} {ratios}")


if __name__ == "__main__":
    main()
