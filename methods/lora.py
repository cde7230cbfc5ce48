"""LoRA on convolutions (Hu et al., 2021, as loralib applies it to a conv): each frozen conv's weight plus a
low-rank update, ``W + (alpha / r) * reshape(B @ A)``.

For a conv of ``C_in`` inputs, ``C_out`` outputs and a ``k x k`` kernel, ``A`` is ``(r*k, C_in*k)`` and
``B`` is ``(C_out*k, r*k)``, so ``B @ A`` has the weight's ``C_out*C_in*k*k`` entries and rank at most
``r*k``. ``A`` starts Kaiming-uniform and ``B`` at zero, so training starts from exactly the pre-trained
network. Only ``A``, ``B`` and the new classifier train; BN stays frozen (running statistics included) unless
``train_bn``. When training ends each update is folded into its conv's weight (computed once, not stored:
a run stores A and B), so inference costs what the plain network costs and predicts the same.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from vdd_bench.methods._surgery import apply_layer, batchnorms, freeze, replace_layers

from vdd_bench.errors import VddError
from vdd_bench.method import (
    SGD_RECIPE,
    SGD_SEARCH,
    Method,
    Phase,
    TaskContext,
    coerce,
    pretrained_backbone,
    register_method,
)
from vdd_bench.search import Choice, Distribution


class LoRAConv(nn.Module):
    """A frozen conv (``layer``) and its trainable low-rank update; once folded (:meth:`fold`), the conv
    runs with the updated weight computed once (a non-persistent buffer, recomputed on loading)."""

    def __init__(self, layer: nn.Conv2d, rank: int, alpha: float) -> None:
        super().__init__()
        self.layer = layer
        k = layer.kernel_size[0]
        like = {"device": layer.weight.device, "dtype": layer.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank * k, layer.in_channels // layer.groups * k, **like))
        self.lora_B = nn.Parameter(torch.zeros(layer.out_channels * k, rank * k, **like))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.scaling = alpha / rank
        self.register_buffer("folded", None, persistent=False)
        self.register_load_state_dict_post_hook(_refold)

    def delta(self) -> Tensor:
        return (self.lora_B @ self.lora_A).view(self.layer.weight.shape) * self.scaling

    @torch.no_grad()
    def fold(self) -> None:
        self.folded = self.layer.weight + self.delta()

    def forward(self, x: Tensor) -> Tensor:
        weight = self.layer.weight + self.delta() if self.folded is None else self.folded
        return apply_layer(self.layer, x, weight, self.layer.bias)


def _refold(module: LoRAConv, incompatible_keys: Any) -> None:
    if module.folded is not None:
        module.fold()


def fold(model: nn.Module) -> nn.Module:
    """Fold every update into its conv's weight for inference (in place; returns the model)."""
    for module in model.modules():
        if isinstance(module, LoRAConv):
            module.fold()
    return model


def positive_rank(value: Any) -> int:
    rank = coerce(value, 1, "lora.rank")
    if rank < 1:
        raise VddError(f"bad value {value!r} for lora.rank: it must be at least 1")
    return rank


@register_method("lora")
class LoRA(Method):
    """The SGD recipe of the other decathlon methods (lr 0.1, 120 epochs, x0.1 at 80 and 100, batch 128);
    ``rank`` 4 and ``alpha`` equal to it (scaling 1: the paper sets alpha to the first rank it tries and
    keeps it when the rank changes); weight decay 1e-4 on A, B and the classifier."""

    defaults: ClassVar[dict[str, Any]] = {**SGD_RECIPE, "rank": 4, "alpha": 4.0, "train_bn": False}
    # loralib's default lora_alpha (1: a scaling of 1/r); the paper sets alpha to the first rank it tries
    presets: ClassVar[dict[str, dict[str, Any]]] = {"loralib-alpha": {"alpha": 1.0}}
    search_space: ClassVar[dict[str, Distribution]] = {**SGD_SEARCH, "rank": Choice((1, 2, 4, 8, 16))}
    converters: ClassVar[dict[str, Callable[[Any], Any]]] = {"rank": positive_rank}

    def build(self, ctx: TaskContext) -> nn.Module:
        hp = ctx.hparams
        model = pretrained_backbone(ctx)
        freeze(model)
        replace_layers(model, lambda layer: True, lambda layer: LoRAConv(layer, hp["rank"], hp["alpha"]))
        if hp["train_bn"]:
            for bn in batchnorms(model):
                bn.requires_grad_(True)
        model.classifier.requires_grad_(True)
        return model

    def end_phase(self, model: nn.Module, phase: Phase, ctx: TaskContext) -> nn.Module:
        return fold(model)  # the one phase ends: inference costs what the plain network costs

    def structure(self, model: nn.Module) -> dict[str, Any]:
        return {"folded": any(m.folded is not None for m in model.modules() if isinstance(m, LoRAConv))}

    def restore_structure(self, model: nn.Module, structure: dict[str, Any], ctx: TaskContext) -> nn.Module:
        return fold(model) if structure.get("folded") else model

    def train_mode(self, model: nn.Module) -> None:
        model.train()
        if not any(p.requires_grad for bn in batchnorms(model) for p in bn.parameters()):
            for bn in batchnorms(model):
                bn.eval()  # frozen BN: running statistics stay the pre-trained ones
