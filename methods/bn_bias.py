"""BN + bias tuning (Mudrakarta et al., "K for the price of 1", ICLR 2019): the pre-trained network frozen
but for a per-task "model patch" of every BN's scale and shift with its statistics, every bias the backbone
has, and a new classifier.

Where a conv feeds a BN, as every conv of these ResNets does, a separate per-task conv bias would be
cancelled by the BN's mean subtraction (its gradient is zero in training, and the running mean absorbs it
at test), so the BN's shift is that conv's bias; convs that have a bias of their own train it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn
from vdd_bench.methods._surgery import backbone_layers, batchnorms, freeze

from vdd_bench.method import SGD_RECIPE, SGD_SEARCH, Method, TaskContext, pretrained_backbone, register_method
from vdd_bench.search import Distribution


@register_method("bn_bias")
class BNBias(Method):
    """The SGD recipe of the other decathlon methods (lr 0.1, 120 epochs, x0.1 at 80 and 100, batch 128,
    weight decay 1e-4); BN statistics are re-estimated on the task (training mode)."""

    defaults: ClassVar[dict[str, Any]] = dict(SGD_RECIPE)
    search_space: ClassVar[dict[str, Distribution]] = SGD_SEARCH

    def build(self, ctx: TaskContext) -> nn.Module:
        model = pretrained_backbone(ctx)
        freeze(model)
        for bn in batchnorms(model):
            bn.requires_grad_(True)
        for _, layer in backbone_layers(model, (nn.Conv2d, nn.Linear)):
            if layer.bias is not None:
                layer.bias.requires_grad_(True)
        model.classifier.requires_grad_(True)
        return model
