"""TAPS, task-adaptive parameter sharing (Wallingford et al., CVPR 2022): each frozen conv gets a full-size
delta behind a learned gate, ``W + I(s >= threshold) * dW``, and an L1 penalty on the gate scores ``s``
switches off the layers a task does not need to adapt.

As the authors' code (MattWallingford/TAPS, docs/fidelity.md has file and line): every conv of the backbone
is gated, the stem and projection shortcuts included; ``dW`` starts at zero and each score at 0.15, above the
threshold 0.1, so every layer starts "on" and training starts from the pre-trained network; the gate's
gradient passes straight through to the score; BN trains per task; the penalty ``lam * sum|s| / 52`` joins
the loss after ``warmup_epochs``. When training ends the layers whose gate is off lose their delta (they are
the shared conv again), so a task stores only its adapted layers' deltas; the record lists them.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from vdd_bench.methods._surgery import apply_layer, batchnorms, freeze, replace_layers

from vdd_bench.method import (
    SGD_RECIPE,
    SGD_SEARCH,
    Method,
    Phase,
    TaskContext,
    pretrained_backbone,
    register_method,
)
from vdd_bench.search import Distribution, LogUniform


class GatedDelta(nn.Module):
    """A frozen conv (``layer``) plus ``delta`` when the gate of ``score`` is on (straight-through)."""

    def __init__(self, layer: nn.Conv2d, score_init: float, threshold: float) -> None:
        super().__init__()
        self.layer = layer
        self.threshold = threshold
        self.delta = nn.Parameter(torch.zeros_like(layer.weight))
        self.score = nn.Parameter(torch.tensor(score_init, device=layer.weight.device))

    def gate(self) -> Tensor:
        on = (self.score >= self.threshold).to(self.score.dtype)
        return on + self.score - self.score.detach()  # value: 0 or 1; gradient: identity

    def forward(self, x: Tensor) -> Tensor:
        return apply_layer(self.layer, x, self.layer.weight + self.gate() * self.delta, self.layer.bias)

    @property
    def adapted(self) -> bool:
        return bool(self.score.detach() >= self.threshold)


def gated_layers(model: nn.Module) -> dict[str, GatedDelta]:
    return {name: m for name, m in model.named_modules() if isinstance(m, GatedDelta)}


def keep_adapted(model: nn.Module, adapted: set[str]) -> nn.Module:
    """Put the plain shared conv back where a layer is not in ``adapted`` (in place; returns the model)."""
    for name, module in gated_layers(model).items():
        if name not in adapted:
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, module.layer)
    return model


@register_method("taps")
class TAPS(Method):
    """The authors' gate (threshold 0.1, scores from 0.15), penalty (``lam`` 1 over the code's constant 52,
    after 3 warm-up epochs, as their loop runs them) and weight decay 0; the schedule is the decathlon recipe
    of the other methods (SGD lr 0.1, 120 epochs, x0.1 at 80 and 100, batch 128): the authors' code has none
    for the decathlon."""

    defaults: ClassVar[dict[str, Any]] = {
        **SGD_RECIPE,
        "weight_decay": 0.0,
        "lam": 1.0,
        "threshold": 0.1,
        "score_init": 0.15,
        "penalty_divisor": 52.0,
        "warmup_epochs": 3,
    }
    search_space: ClassVar[dict[str, Distribution]] = {
        "lr": SGD_SEARCH["lr"],
        "lam": LogUniform(0.1, 3.0),  # the authors' scripts use 0.1 to 1
    }
    schedule_lengths: ClassVar[tuple[str, ...]] = ("epochs", "warmup_epochs")

    def build(self, ctx: TaskContext) -> nn.Module:
        hp = ctx.hparams
        model = pretrained_backbone(ctx)
        freeze(model)
        gate = lambda layer: GatedDelta(layer, hp["score_init"], hp["threshold"])  # noqa: E731
        replace_layers(model, lambda layer: True, gate)
        for bn in batchnorms(model):
            bn.requires_grad_(True)
        model.classifier.requires_grad_(True)
        self._penalised = False
        return model

    def phases(self, ctx: TaskContext) -> list[Phase]:
        hp = ctx.hparams
        warmup = Phase.of("warmup", hp, hp["warmup_epochs"], hp["lr"], milestones=[])
        return [warmup, *super().phases(ctx)] if hp["warmup_epochs"] > 0 else super().phases(ctx)

    def param_groups(self, model: nn.Module, phase: Phase, ctx: TaskContext) -> list[dict[str, Any]]:
        self._penalised = phase.name != "warmup"  # the engine asks for the groups at the start of every phase
        return super().param_groups(model, phase, ctx)

    def loss(self, model: nn.Module, images: Tensor, labels: Tensor, ctx: TaskContext) -> Tensor:
        loss = F.cross_entropy(model(images), labels)
        if not self._penalised:
            return loss
        hp = ctx.hparams
        scores = torch.stack([m.score for m in gated_layers(model).values()])
        return loss + hp["lam"] * scores.abs().sum() / hp["penalty_divisor"]

    def end_phase(self, model: nn.Module, phase: Phase, ctx: TaskContext) -> nn.Module:
        if phase.name == "warmup":
            return model
        return keep_adapted(model, {name for name, m in gated_layers(model).items() if m.adapted})

    def structure(self, model: nn.Module) -> dict[str, Any]:
        gated = gated_layers(model)
        convs = sum(1 for m in model.modules() if isinstance(m, nn.Conv2d))  # a gated conv is its `layer`
        return {"adapted": sorted(gated)} if len(gated) < convs else {}

    def restore_structure(self, model: nn.Module, structure: dict[str, Any], ctx: TaskContext) -> nn.Module:
        return keep_adapted(model, set(structure["adapted"])) if "adapted" in structure else model

    def report(self, model: nn.Module, ctx: TaskContext) -> dict[str, Any]:
        """The backbone's convs in order and those the task adapted (`vdd plot` draws them as a grid)."""
        layers = [
            name
            for name, m in model.named_modules()
            if isinstance(m, GatedDelta) or (isinstance(m, nn.Conv2d) and not name.endswith(".layer"))
        ]
        adapted = [name for name in layers if name in gated_layers(model)]
        return {
            "layers": layers,
            "adapted_layers": adapted,
            "adapted_fraction": round(len(adapted) / len(layers), 4),
        }
