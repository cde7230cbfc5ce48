"""What series and parallel residual adapters share: the recipe, the surgery, the optimizer groups.

Facts from the authors' code (srebuffi/residual_adapters, docs/fidelity.md has file and line): every 3x3
conv, the stem's included, gets an adapter (``conv_task`` with ``is_proj=1``); the 3x3 weights are frozen,
the 1x1 adapters, all BNs and the head train; adapters are initialised like every conv of that code,
N(0, sqrt(2 / C_out)). Weight decay: the code's flags say ``--wd 5.`` (5e-4) for BNs and classifier and
``--wd1x1 1.`` (1e-4) for the adapters, but its optimizer sets the decay per 4-D tensor and keeps it for
the tensors after it, so as it runs every trainable tensor gets 1e-4 (the published numbers were made that
way): ``weight_decay`` 1e-4 (BNs, classifier) and ``adapter_weight_decay`` 1e-4 are the defaults, and the
``readme-flags`` preset gives BNs and classifier the 5e-4 the flags name.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from torch import nn
from vdd_bench.methods._surgery import batchnorms, freeze, is_spatial, replace_layers

from vdd_bench.backbones import Backbone
from vdd_bench.errors import VddError
from vdd_bench.method import (
    README_FLAGS,
    SGD_RECIPE,
    SGD_SEARCH,
    Method,
    Phase,
    TaskContext,
    pretrained_backbone,
)
from vdd_bench.search import Distribution, LogUniform

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
    presets: ClassVar[dict[str, dict[str, Any]]] = {"readme-flags": README_FLAGS}
    search_space: ClassVar[dict[str, Distribution]] = {
        **SGD_SEARCH,
        "adapter_weight_decay": LogUniform(1e-5, 1e-2),  # the adapters' own decay, the authors' main knob
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
