"""Fine-tuning: every weight of the pre-trained network trains on the task (the decathlon's baseline)."""

from __future__ import annotations

from torch import nn

from vdd_bench.method import Method, TaskContext, pretrained_backbone, register_method


@register_method("finetune")
class FineTune(Method):
    """Residual-adapters recipe: SGD momentum 0.9, lr 0.1, 120 epochs (x0.1 at 80, 100), batch 128."""

    def build(self, ctx: TaskContext) -> nn.Module:
        return pretrained_backbone(ctx)
