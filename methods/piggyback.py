"""Piggyback (Mallya et al., ECCV 2018): a learned binary mask per frozen backbone weight.

Training form (:class:`MaskedLayer`): every conv (and linear, the new classifier excepted) of the backbone
keeps its frozen weight and gets a real-valued mask of the same shape, initialised at ``mask_init``; the
forward uses ``weight * (mask > threshold)`` and the gradient reaches the real mask straight through the
threshold. Masks and the new classifier train with Adam; BN is frozen (eval mode: running statistics and
affine parameters stay the pre-trained ones), the recipe's choice.

Inference form (:class:`BinaryMaskedLayer`, made by ``end_phase`` of the last phase): the frozen weight (a
shared parameter), the binary mask as a persistent ``torch.bool`` buffer (accounted 1 bit per weight) and
the masked weight materialised once as a non-persistent buffer, so a forward costs what the plain network
costs. :func:`save_task` / :func:`load_task` store a task as exactly its task-specific bytes: the masks
bit-packed (``np.packbits``, per layer), the classifier and, with ``train_bn``, the BN state.

Backbones: masks cover every conv, so ResNet-50's 1x1 convs and projection shortcuts are masked too, as
the authors mask every conv and fully-connected layer. Hyper-parameters are the recipe's (Adam, lr 1e-4,
x0.1 every ``lr_step_epochs`` = 15 epochs, 30 epochs, batch 32, mask init 1e-2, threshold 5e-3, no weight
decay); ``classifier_lr`` (1e-4, as for the masks) and ``train_bn`` (False: BN frozen; True trains BN per
task, stored with the task) are named options.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from vdd_bench.methods._surgery import apply_layer, batchnorms, freeze, replace_layers

from vdd_bench.backbones import Backbone
from vdd_bench.errors import VddError
from vdd_bench.method import Method, Phase, TaskContext, pretrained_backbone, register_method
from vdd_bench.search import Choice, Distribution, LogUniform
from vdd_bench.store import atomic_write_bytes

MASKED_KINDS = (nn.Conv2d, nn.Linear)


class MaskedLayer(nn.Module):
    """Training form: frozen ``layer`` times the binarised real-valued ``mask`` (straight-through)."""

    def __init__(self, layer: nn.Module, init: float, threshold: float) -> None:
        super().__init__()
        self.layer = layer
        self.threshold = threshold
        self.mask = nn.Parameter(torch.full_like(layer.weight, init))

    def forward(self, x: Tensor) -> Tensor:
        binary = (self.mask > self.threshold).to(self.mask.dtype)
        straight_through = binary + self.mask - self.mask.detach()  # value: binary; gradient: identity
        return apply_layer(self.layer, x, self.layer.weight * straight_through, self.layer.bias)


def _rematerialise(module: BinaryMaskedLayer, incompatible_keys: Any) -> None:
    module.materialise()


class BinaryMaskedLayer(nn.Module):
    """Inference form: the frozen weight, a persistent bool mask, the masked weight computed once."""

    def __init__(self, layer: nn.Module, mask: Tensor) -> None:
        super().__init__()
        self.layer = layer
        self.register_buffer("mask", mask.to(torch.bool))
        self.register_buffer("masked_weight", None, persistent=False)
        self.materialise()
        self.register_load_state_dict_post_hook(_rematerialise)

    @torch.no_grad()
    def materialise(self) -> None:
        self.masked_weight = self.layer.weight * self.mask

    def forward(self, x: Tensor) -> Tensor:
        return apply_layer(self.layer, x, self.masked_weight, self.layer.bias)


def binarise(model: nn.Module) -> nn.Module:
    """Replace every :class:`MaskedLayer` by its inference form (in place; returns the model)."""
    wrapped = [(name, m) for name, m in model.named_modules() if isinstance(m, MaskedLayer)]
    for name, m in wrapped:
        parent_name, _, child = name.rpartition(".")
        binary = BinaryMaskedLayer(m.layer, m.mask.detach() > m.threshold)
        setattr(model.get_submodule(parent_name), child, binary)
    return model


@register_method("piggyback")
class Piggyback(Method):
    defaults: ClassVar[dict[str, Any]] = {
        "epochs": 30,
        "lr": 1e-4,
        "classifier_lr": 1e-4,
        "optimizer": "adam",
        "weight_decay": 0.0,
        "lr_step_epochs": 15,
        "gamma": 0.1,
        "batch_size": 32,
        "mask_init": 1e-2,
        "threshold": 5e-3,
        "train_bn": False,
    }
    schedule_lengths: ClassVar[tuple[str, ...]] = ("epochs", "lr_step_epochs")
    # Adam on the real-valued masks: from the authors' 1e-4 down to masks that barely move (the frozen
    # network) and up to 1e-3; above it, Adam's steps of about lr carry the masks (1e-2 at the start, the
    # threshold 5e-3) across the threshold within tens of steps, and every draw there fell to chance on the
    # mini-decathlon. Adam on the new classifier: the authors' 1e-4 up to 0.1. And the authors' `--train_bn`.
    search_space: ClassVar[dict[str, Distribution]] = {
        "lr": LogUniform(1e-6, 1e-3),
        "classifier_lr": LogUniform(1e-4, 1e-1),
        "train_bn": Choice((False, True)),
    }

    def build(self, ctx: TaskContext) -> nn.Module:
        hp = ctx.hparams
        model: Backbone = pretrained_backbone(ctx)
        freeze(model)
        replace_layers(
            model, lambda m: True, lambda m: MaskedLayer(m, hp["mask_init"], hp["threshold"]), MASKED_KINDS
        )
        if hp["train_bn"]:
            for bn in batchnorms(model):
                bn.requires_grad_(True)
        model.classifier.requires_grad_(True)
        return model

    def phases(self, ctx: TaskContext) -> list[Phase]:
        hp = ctx.hparams
        epochs, step = hp["epochs"], hp["lr_step_epochs"]
        return [
            Phase(
                name="train",
                epochs=epochs,
                lr=hp["lr"],
                optimizer=hp["optimizer"],
                weight_decay=hp["weight_decay"],
                milestones=tuple(e / epochs for e in range(step, epochs, step)),
                gamma=hp["gamma"],
                batch_size=hp["batch_size"],
            )
        ]

    def param_groups(self, model: nn.Module, phase: Phase, ctx: TaskContext) -> list[dict[str, Any]]:
        head = list(model.classifier.parameters())
        chosen = {id(p) for p in head}
        others = [p for p in model.parameters() if p.requires_grad and id(p) not in chosen]
        return [{"params": others}, {"params": head, "lr": ctx.hparams["classifier_lr"]}]

    def train_mode(self, model: nn.Module) -> None:
        model.train()
        if not any(p.requires_grad for bn in batchnorms(model) for p in bn.parameters()):
            for bn in batchnorms(model):
                bn.eval()  # frozen BN: the pre-trained running statistics stay untouched

    def end_phase(self, model: nn.Module, phase: Phase, ctx: TaskContext) -> nn.Module:
        return binarise(model)  # one phase: it ends training

    def structure(self, model: nn.Module) -> dict[str, Any]:
        return {"binarised": any(isinstance(m, BinaryMaskedLayer) for m in model.modules())}

    def restore_structure(self, model: nn.Module, structure: dict[str, Any], ctx: TaskContext) -> nn.Module:
        return binarise(model) if structure.get("binarised") else model


# --------------------------------------------------------------------------------- task files


def task_tensors(model: nn.Module) -> list[tuple[str, Tensor]]:
    """The task-specific state of a binarised model, in a fixed order: masks, classifier, trained BN state.

    BN state belongs to the task only when BN trained (``train_bn``); frozen BN is the shared backbone's.
    """
    trained_bn = any(p.requires_grad for bn in batchnorms(model) for p in bn.parameters())
    bn_names = {name for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    out = []
    for name, t in model.state_dict(keep_vars=True).items():
        owner = name.rpartition(".")[0]
        if t.dtype == torch.bool or name.startswith("classifier."):
            out.append((name, t))
        elif trained_bn and owner in bn_names and t.is_floating_point():
            out.append((name, t))
    return out


def _encode(t: Tensor) -> bytes:
    array = t.detach().cpu().numpy()
    if t.dtype == torch.bool:
        return np.packbits(array.reshape(-1)).tobytes()
    return array.astype("<f4").tobytes()


def save_task(model: nn.Module, path: Path) -> int:
    """Write the task-specific tensors of a binarised model, raw and headerless; returns the bytes written.

    The layout is implied by the architecture (the model :func:`load_task` rebuilds), so the file is
    exactly the storage that accounting reports as task-specific.
    """
    if not any(isinstance(m, BinaryMaskedLayer) for m in model.modules()):
        raise VddError("save_task needs a trained (binarised) Piggyback model")
    payload = b"".join(_encode(t) for _, t in task_tensors(model))
    atomic_write_bytes(Path(path), payload)
    return len(payload)


def load_task(path: Path, ctx: TaskContext) -> nn.Module:
    """The model a task file describes, on the pre-trained backbone of ``ctx``, in eval mode."""
    model = binarise(Piggyback().build(ctx))
    data = Path(path).read_bytes()
    offset = 0
    with torch.no_grad():
        for name, t in task_tensors(model):
            n = t.numel()
            size = -(-n // 8) if t.dtype == torch.bool else 4 * n
            if offset + size > len(data):
                raise VddError(f"task file {path} is too short for {name} (does it fit this backbone?)")
            chunk = np.frombuffer(data, dtype=np.uint8, count=size, offset=offset)
            if t.dtype == torch.bool:
                values = np.unpackbits(chunk, count=n).astype(bool)
            else:
                values = chunk.view("<f4")
            t.copy_(torch.from_numpy(values.copy()).reshape(t.shape))
            offset += size
    if offset != len(data):
        raise VddError(f"task file {path} has {len(data) - offset} bytes more than this backbone's task")
    for m in model.modules():
        if isinstance(m, BinaryMaskedLayer):
            m.materialise()
    return model.eval()
