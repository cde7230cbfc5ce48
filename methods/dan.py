"""Deep Adaptation Networks (Rosenfeld & Tsotsos, "Incremental learning through deep adaptation", 2018).

Each new-task conv's filters are linear combinations of the frozen filters of the same layer:
``W_new = C @ W_frozen`` (``W`` flattened to C_out x (C_in k k), ``C`` a C_out x C_out controller per layer,
initialised to the identity, so training starts from the pre-trained network) plus a per-output-channel
bias; BN and the head are task-specific. At ResNet-26 the controllers cost about C_out^2 / (9 C_in C_out),
roughly 1/9 of the 3x3 weights, the paper's "about 13%" once BNs and head are added.

Inference: ``end_phase`` of the last phase materialises ``W_new`` once (a non-persistent buffer), so
evaluation and ``count_macs`` cost what the plain network costs; training recombines at every forward.

Named hyper-parameters and deviations:
- ``controller_bias`` (True, the paper's bias): with a BN right after every conv of these backbones the
  bias is absorbed by BN, so it changes nothing but costs C_out per layer; kept for fidelity.
- ``control_expanding`` (False): a controller costs C_out^2 against C_out C_in k^2 for the weight it
  recombines. On ResNet-26/18/34 it is always cheaper; ResNet-50's expanding 1x1 convs (a bottleneck's
  ``conv3``, C_out = 4 C_in) and its 1x1 projection shortcuts would pay more for the controller than for
  fine-tuning the weight, so by default those stay frozen (their BNs still train). True controls them too.
- Schedule: the residual-adapters SGD recipe (lr 0.1, momentum 0.9, 120 epochs x0.1 at 80/100, batch 128,
  wd 5e-4), the harness's common recipe; the authors' own decathlon schedule is not in the sources this
  harness draws on, so it is a deviation to be tuned with the named keys of that recipe.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from methods._surgery import apply_layer, batchnorms, freeze, replace_layers
from vdd_bench.backbones import Backbone
from vdd_bench.method import SGD_RECIPE, Method, Phase, TaskContext, pretrained_backbone, register_method


def _refresh(module: ControlledConv, incompatible_keys: Any) -> None:
    if module.combined is not None:
        module.materialise()


class ControlledConv(nn.Module):
    """A frozen conv whose filters are recombined by a trainable controller: ``(C @ W) * x + b``."""

    def __init__(self, layer: nn.Conv2d, bias: bool) -> None:
        super().__init__()
        self.layer = layer
        out, dev, dtype = layer.out_channels, layer.weight.device, layer.weight.dtype
        self.controller = nn.Parameter(torch.eye(out, device=dev, dtype=dtype))
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
    defaults: ClassVar[dict[str, Any]] = {**SGD_RECIPE, "controller_bias": True, "control_expanding": False}

    def build(self, ctx: TaskContext) -> nn.Module:
        hp = ctx.hparams
        model: Backbone = pretrained_backbone(ctx)
        freeze(model)

        def select(layer: nn.Module) -> bool:
            return hp["control_expanding"] or _controller_pays(layer)

        replace_layers(model, select, lambda layer: ControlledConv(layer, hp["controller_bias"]))
        for bn in batchnorms(model):
            bn.requires_grad_(True)
        model.classifier.requires_grad_(True)
        return model

    def end_phase(self, model: nn.Module, phase: Phase, ctx: TaskContext) -> nn.Module:
        for m in model.modules():
            if isinstance(m, ControlledConv):
                m.materialise()
        return model
