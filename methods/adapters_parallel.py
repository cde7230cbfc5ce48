"""Residual adapters in parallel (Rebuffi et al., CVPR 2018): ``BN(conv3x3(x) + W_1x1(x))``.

The 1x1 adapter reads the conv's input with the conv's stride, so both outputs have the same size (the
wrapped conv must pad to "same", which every spatial conv of these backbones does). The BN after the sum
is the one that already follows the conv (block ``bn1``/``bn2``, the stem's BN), trained per task.

Backbones: as for series adapters, every spatial conv is adapted (ResNet-26: all convs, the stem's
included, as in the authors' code; torchvision ResNets: the 7x7 stem and the 3x3 convs); ResNet-50's
1x1 convs and the 1x1 projection shortcuts stay frozen with their BNs trained.
"""

from __future__ import annotations

from torch import Tensor, nn
from vdd_bench.methods._adapters import AdapterMethod, adapter_conv

from vdd_bench.errors import VddError
from vdd_bench.method import register_method


class ParallelAdapter(nn.Module):
    def __init__(self, layer: nn.Conv2d, init: str) -> None:
        super().__init__()
        same = all(
            p == d * (k - 1) // 2
            for p, d, k in zip(layer.padding, layer.dilation, layer.kernel_size, strict=True)
        )
        if layer.groups != 1 or not same:
            raise VddError(f"a parallel adapter needs a dense conv padded to 'same', got {layer}")
        self.layer = layer
        self.adapter = adapter_conv(layer.in_channels, layer.out_channels, layer, init, layer.stride)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x) + self.adapter(x)


@register_method("adapters_parallel")
class ParallelAdapters(AdapterMethod):
    """Authors' recipe: SGD lr 0.1, momentum 0.9, 120 epochs (x0.1 at 80, 100), batch 128, wd 1e-4."""

    wrapper = ParallelAdapter
