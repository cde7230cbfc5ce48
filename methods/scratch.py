"""From scratch: the backbone architecture, randomly initialised and trained on the task alone."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from vdd_bench.backbones import build_backbone
from vdd_bench.method import README_FLAGS, SGD_SEARCH, Method, TaskContext, register_method
from vdd_bench.search import Distribution


@register_method("scratch")
class Scratch(Method):
    presets: ClassVar[dict[str, dict[str, Any]]] = {"readme-flags": README_FLAGS}
    search_space: ClassVar[dict[str, Distribution]] = SGD_SEARCH
    uses_pretrained = False

    def build(self, ctx: TaskContext) -> nn.Module:
        return build_backbone(ctx.spec, ctx.num_classes)
