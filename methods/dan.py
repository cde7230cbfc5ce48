"""Deep Adaptation Networks (Rosenfeld & Tsotsos, "Incremental learning through deep adaptation", 2018).

Each new-task conv's filters are linear combinations of the frozen filters of the same layer:
``W_new = C @ W_frozen`` (``W`` flattened to C_out x (C_in k k), ``C`` a C_out x C_out controller per layer);
the head is new per task. At ResNet-26 the controllers cost about C_out^2 / (9 C_in C_out), roughly 1/9 of
the 3x3 weights, the paper's "about 13%" once the head is added.

Defaults are the authors' decathlon notebook (rosenfeldamir/incremental_learning; docs/fidelity.md has the
lines): controllers start at the identity with small noise on the diagonal (std 1/C_out), no bias, every
conv controlled (the stem and 1x1 projections too, although there the controller costs more than the weight
it recombines), BN affine parameters frozen with the running statistics re-estimated on the task (train
mode), 50 epochs with the lr x0.1 at epochs 24 and 49, batch 64, weight decay 5e-4. Their optimizer,
YellowFin (which tunes lr and momentum itself), is replaced by SGD with momentum 0.9 at lr 0.1.

Inference: ``end_phase`` of the last phase materialises ``W_new`` once (a non-persistent buffer), so
evaluation and ``count_macs`` cost what the plain network costs; training recombines at every forward.

Named options: ``controller_init`` "identity" (no noise: training starts from exactly the pre-trained
network); ``controller_bias`` (a per-filter bias, absorbed by the BN that follows every conv here);
``control_expanding`` False leaves frozen the convs whose controller would cost more than their weight
(ResNet-26's stem at width 1, ResNet-50's expanding 1x1 convs and projections); ``train_bn`` trains the BN
affine parameters per task too.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from vdd_bench.methods._surgery import apply_layer, batchnorms, freeze, replace_layers

from vdd_bench.backbones import Backbone
from vdd_bench.errors import VddError
from vdd_bench.method import SGD_SEARCH, Method, Phase, TaskContext, pretrained_backbone, register_method
from vdd_bench.search import Distribution


def _refresh(module: ControlledConv, incompatible_keys: Any) -> None:
    if module.combined is not None:
        module.materialise()


CONTROLLER_INITS = ("identity_noise", "identity")


class ControlledConv(nn.Module):
    """A frozen conv whose filters are recombined by a trainable controller: ``(C @ W) * x + b``."""

    def __init__(self, layer: nn.Conv2d, bias: bool, init: str = "identity") -> None:
        super().__init__()
        if init not in CONTROLLER_INITS:
            raise VddError(f"dan controller_init must be one of {', '.join(CONTROLLER_INITS)}, got {init!r}")
        self.layer = layer
        out, dev, dtype = layer.out_channels, layer.weight.device, layer.weight.dtype
        start = torch.eye(out, device=dev, dtype=dtype)
        if init == "identity_noise":  # the notebook's start: I + diag(N(0, 1) / C_out)
            start += torch.diag(torch.randn(out, dtype=dtype).to(dev) / out)
        self.controller = nn.Parameter(start)
        self.bias = nn.Parameter(torch.zeros(out, device=dev, dtype=dtype)) if bias else None
        self.register_buffer("combined", None, persistent=False)
        self.register_load_state_dict_post_hook(_refresh)

    def combined_weight(self) -> Tensor:
        weight = self.layer.weight
        return (self.controller @ weight.flatten(1)).view_as(weight)

    @torch.no_grad()
    def materialise(self) -> None:
        self.combined = self.combined_weight()

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.combined = None  # the controller is changing: a materialised weight would go stale
        weight = self.combined if self.combined is not None else self.combined_weight()
        return apply_layer(self.layer, x, weight, self.bias)


def _controller_pays(layer: nn.Conv2d) -> bool:
    return layer.out_channels <= layer.weight[0].numel()


@register_method("dan")
class DeepAdaptation(Method):
    defaults: ClassVar[dict[str, Any]] = {
        "epochs": 50,
        "lr": 0.1,
        "optimizer": "sgd",
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "milestones": [24 / 50, 49 / 50],
        "gamma": 0.1,
        "batch_size": 64,
        "controller_init": "identity_noise",
        "controller_bias": False,
        "control_expanding": True,
        "train_bn": False,
    }
    search_space: ClassVar[dict[str, Distribution]] = SGD_SEARCH

    def build(self, ctx: TaskContext) -> nn.Module:
        hp = ctx.hparams
        model: Backbone = pretrained_backbone(ctx)
        freeze(model)

        def select(layer: nn.Module) -> bool:
            return hp["control_expanding"] or _controller_pays(layer)

        def control(layer: nn.Module) -> ControlledConv:
            return ControlledConv(layer, hp["controller_bias"], hp["controller_init"])

        replace_layers(model, select, control)
        for bn in batchnorms(model):  # frozen affine or not, train mode re-estimates the statistics
            bn.requires_grad_(hp["train_bn"])
        model.classifier.requires_grad_(True)
        return model

    def end_phase(self, model: nn.Module, phase: Phase, ctx: TaskContext) -> nn.Module:
        for m in model.modules():
            if isinstance(m, ControlledConv):
                m.materialise()
        return model
