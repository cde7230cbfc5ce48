"""The `methods` section of `vdd bench`: each method's training step against fine-tuning's."""

from __future__ import annotations

from vdd_bench.bench.common import BenchOptions, row
from vdd_bench.bench.method_costs import measured_rows


def bench_methods(options: BenchOptions) -> tuple[list[dict], dict]:
    """Each method's training step against fine-tuning's, then fine-tuning itself in bf16 autocast +
    channels_last against fp32 and compiled against eager (all on the bench's device)."""
    batch = 4 if options.quick else 32
    common = ["--threads", str(options.threads), "--device", str(options.device)]
    if options.quick:
        common += ["--width", "0.25", "--size", "32", "--batch", "4", "--steps", "1", "--warmup", "1"]

    def measure(*extra: str) -> list[dict]:
        return measured_rows([*common, *extra])

    rows = measure()
    base = next(r for r in rows if r["method"] == "finetune")
    out = [
        row(
            "methods",
            f"{r['method']} training, img/s",
            batch / r["step_s"],
            "img/s",
            "finetune",
            batch / base["step_s"],
        )
        for r in rows
        if r["method"] != "finetune"
    ]
    bf16 = measure("--methods", "finetune", "--precision", "bf16")[0]
    name = "finetune training, bf16 autocast + channels_last, img/s"
    out.append(row("methods", name, batch / bf16["step_s"], "img/s", "finetune fp32", batch / base["step_s"]))
    notes = []
    if options.compile:
        try:
            compiled = measure("--methods", "finetune", "--compile")[0]
        except Exception as exc:  # the compiler backend's errors have no common type
            notes.append(f"torch.compile rows left out: {str(exc).strip().splitlines()[0][:200]}")
        else:
            name = "finetune training, torch.compile, img/s"
            out.append(
                row(
                    "methods",
                    name,
                    batch / compiled["step_s"],
                    "img/s",
                    "finetune eager",
                    batch / base["step_s"],
                )
            )
    model = "resnet26 w0.25 at 32 px, batch 4" if options.quick else "resnet26 at 64 px, batch 32"
    where = str(options.device) if options.device.type == "cuda" else f"cpu, {options.threads} threads"
    return out, {"methods": f"{model}, {where}, fp32 unless said" + "".join(f"; {n}" for n in notes)}
