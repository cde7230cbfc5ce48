"""Feature extractor: the pre-trained network frozen (BN statistics included), a new linear classifier."""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from vdd_bench.method import SGD_SEARCH, Method, TaskContext, pretrained_backbone, register_method
from vdd_bench.search import Distribution


@register_method("feature")
class FeatureExtractor(Method):
    """Same SGD schedule as fine-tuning, applied to the classifier only."""

    search_space: ClassVar[dict[str, Distribution]] = SGD_SEARCH

    def build(self, ctx: TaskContext) -> nn.Module:
        model = pretrained_backbone(ctx)
        for param in model.parameters():
            param.requires_grad_(False)
        for param in model.classifier.parameters():
            param.requires_grad_(True)
        return model

    def train_mode(self, model: nn.Module) -> None:
        model.eval()  # frozen BN: running statistics stay the pre-trained ones
