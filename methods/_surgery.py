"""Model surgery shared by the parameter-sharing methods: find the backbone's frozen layers, swap wrappers in.

Every wrapper keeps the pre-trained layer as its ``layer`` submodule with ``requires_grad=False``, so the
frozen weights stay parameters whose content equals the pre-trained tensors and
``vdd_bench.accounting.parameter_split`` counts them as shared.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn.functional as F
from torch import Tensor, nn

from vdd_bench.backbones import Backbone
from vdd_bench.errors import VddError


def freeze(model: nn.Module) -> None:
    for param in model.parameters():
        param.requires_grad_(False)


def backbone_layers(model: Backbone, kinds: tuple[type[nn.Module], ...]) -> list[tuple[str, nn.Module]]:
    """(name, module) of the backbone's layers of the given kinds, the task's classifier left out."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, kinds) and not name.startswith("classifier")
    ]


def replace_layers(
    model: Backbone,
    select: Callable[[nn.Module], bool],
    wrap: Callable[[nn.Module], nn.Module],
    kinds: tuple[type[nn.Module], ...] = (nn.Conv2d,),
) -> int:
    """Replace every selected backbone layer by ``wrap(layer)`` in its parent module; returns the count."""
    chosen = [(name, m) for name, m in backbone_layers(model, kinds) if select(m)]
    if not chosen:
        raise VddError(f"{model.spec}: no layer to adapt")
    for name, layer in chosen:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, wrap(layer))
    return len(chosen)


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def is_spatial(layer: nn.Module) -> bool:
    """A conv with a kernel larger than 1x1 (ResNet's 3x3 convs and torchvision's 7x7 stem)."""
    return isinstance(layer, nn.Conv2d) and max(layer.kernel_size) > 1


def apply_layer(layer: nn.Module, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Run ``layer`` (a Conv2d or Linear) with another weight (and bias) in place of its own."""
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, bias)
    return F.conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation, layer.groups)
