"""Residual adapters in series (Rebuffi et al., NIPS 2017): ``BN_out(z + W_1x1(BN_in(z)))``, z = conv3x3(x).

The wrapper computes ``z + W_1x1(BN_in(z))``; the BN that already follows every spatial conv in these
backbones (the block's ``bn1``/``bn2``, the stem's BN) is ``BN_out``, trained per task as in the authors'
code, where it also takes the pre-trained values as its start. ``BN_in`` starts fresh (weight 1, bias 0).
One difference from the code as it runs: there the stem adapter's ``BN_in`` (the first trainable tensors,
before any 4-D one) keeps the optimizer group's 5e-4 weight decay; here it gets 1e-4 like every other BN.

Backbones: on ResNet-26 every conv is 3x3, so every conv (stem included) gets an adapter. On torchvision's
ResNet-18/34 the 7x7 stem and every 3x3 conv are adapted; on ResNet-50 the bottleneck's 3x3 conv and the
stem: its 1x1 convs and the 1x1 projection shortcuts stay frozen, since a 1x1 adapter on a 1x1 conv would
cost as much as fine-tuning that conv. Their BNs train, like every BN.
"""

from __future__ import annotations

from torch import Tensor, nn
from vdd_bench.methods._adapters import AdapterMethod, adapter_conv

from vdd_bench.method import register_method


class SeriesAdapter(nn.Module):
    def __init__(self, layer: nn.Conv2d, init: str) -> None:
        super().__init__()
        self.layer = layer
        channels = layer.out_channels
        self.bn_in = nn.BatchNorm2d(channels, device=layer.weight.device, dtype=layer.weight.dtype)
        self.adapter = adapter_conv(channels, channels, layer, init)

    def forward(self, x: Tensor) -> Tensor:
        z = self.layer(x)
        return z + self.adapter(self.bn_in(z))


@register_method("adapters_series")
class SeriesAdapters(AdapterMethod):
    """Authors' recipe: SGD lr 0.1, momentum 0.9, 120 epochs (x0.1 at 80, 100), batch 128, wd 1e-4."""

    wrapper = SeriesAdapter
