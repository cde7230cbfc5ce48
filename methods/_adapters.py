"""What series and parallel residual adapters share: the recipe, the surgery, the optimizer groups.

Facts from the authors' code (srebuffi/residual_adapters): every 3x3 conv, the stem's included, gets an
adapter (``conv_task`` with ``is_proj=1``); the 3x3 weights are frozen, the 1x1 adapters, all BNs and the
head train; adapters are initialised like every conv of that code, N(0, sqrt(2 / C_out)); the optimizer
puts a separate weight decay on the 1x1 convs (``--wd1x1``, scaled by 1e-4) from the one on the other
trainable parameters (``--wd``, scaled by 1e-4). The commands of its README use ``--wd 5. --wd1x1 1.``,
i.e. 5e-4 on BNs and classifier and 1e-4 on the adapters: those are the defaults here.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from torch import nn

from methods._surgery import batchnorms, freeze, is_spatial, replace_layers
from vdd_bench.backbones import Backbone
from vdd_bench.errors import VddError
from vdd_bench.method import SGD_RECIPE, Method, Phase, TaskContext, pretrained_backbone

ADAPTER_INITS = ("normal", "zero")


def adapter_conv(
    in_channels: int, out_channels: int, like: nn.Conv2d, init: str, stride: int | tuple = 1
) -> nn.Conv2d:
    """A 1x1 conv on ``like``'s device and dtype: N(0, sqrt(2 / C_out)) (the authors' code) or zeros."""
    if init not in ADAPTER_INITS:
        raise VddError(f"adapter_init must be one of {', '.join(ADAPTER_INITS)}, got {init!r}")
    conv = nn.Conv2d(
        in_channels, out_channels, 1, stride, bias=False, device=like.weight.device, dtype=like.weight.dtype
    )
    if init == "zero":
        nn.init.zeros_(conv.weight)
    else:
        nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / out_channels))
    return conv


class AdapterMethod(Method):
    """Frozen spatial convs wrapped by ``wrapper``; adapters, every BN and the classifier train.

    Hyper-parameters beyond the SGD recipe: ``adapter_weight_decay`` (the code's ``--wd1x1``) applies to
    the adapters' 1x1 weights, ``weight_decay`` to BNs and classifier. ``adapter_init``: "normal" is the
    authors' N(0, sqrt(2 / C_out)); "zero" (a deviation) starts from exactly the pre-trained function, which
    the random start perturbs strongly on narrow networks and short schedules.
    """

    defaults: ClassVar[dict[str, Any]] = {
        **SGD_RECIPE,
        "adapter_weight_decay": 1e-4,
        "adapter_init": "normal",
    }
    wrapper: ClassVar[type[nn.Module]]

    def build(self, ctx: TaskContext) -> nn.Module:
        model: Backbone = pretrained_backbone(ctx)
        freeze(model)
        init = ctx.hparams["adapter_init"]
        replace_layers(model, is_spatial, lambda layer: self.wrapper(layer, init))  # adapters train
        for bn in batchnorms(model):
            bn.requires_grad_(True)
        model.classifier.requires_grad_(True)
        return model

    def param_groups(self, model: nn.Module, phase: Phase, ctx: TaskContext) -> list[dict[str, Any]]:
        adapters = [m.adapter.weight for m in model.modules() if isinstance(m, self.wrapper)]
        chosen = {id(p) for p in adapters}
        others = [p for p in model.parameters() if p.requires_grad and id(p) not in chosen]
        return [
            {"params": adapters, "weight_decay": ctx.hparams["adapter_weight_decay"]},
            {"params": others},
        ]
