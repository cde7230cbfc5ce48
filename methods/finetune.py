"""Fine-tuning: every weight of the pre-trained network trains on the task (the decathlon's baseline)."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from vdd_bench.method import (
    README_FLAGS,
    SGD_SEARCH,
    Method,
    TaskContext,
    pretrained_backbone,
    register_method,
)
from vdd_bench.search import Distribution


@register_method("finetune")
class FineTune(Method):
    """Residual-adapters recipe: SGD momentum 0.9, lr 0.1, 120 epochs (x0.1 at 80, 100), batch 128, weight
    decay 1e-4 on every parameter (as the code runs; the `readme-flags` preset: 5e-4)."""

    presets: ClassVar[dict[str, dict[str, Any]]] = {"readme-flags": README_FLAGS}
    search_space: ClassVar[dict[str, Distribution]] = SGD_SEARCH

    def build(self, ctx: TaskContext) -> nn.Module:
        return pretrained_backbone(ctx)
