"""Learning without Forgetting (Li & Hoiem, "Learning without forgetting", 2016/2017).

One shared network along a chain, one head per task (the continual protocol; the decathlon tables' LwF row
is one network per task, `lwf_per_task`). Before a task trains, the responses of the old heads
(the network as the previous step left it) on the task's images are the distillation targets; the loss is
`CE(new head) + distill_weight * sum over old heads of CE(softmax(old / T), softmax(new / T))` (soft-target
cross-entropy at temperature T without a T^2 factor, as the authors' `vl_nnsoftmaxdiff.m`). A warm-up first
trains only the new head (the shared network and its BN statistics frozen), then everything trains, old
heads included.

Defaults (lizhitwo/LearningWithoutForgetting; lines in docs/fidelity.md): `temperature` 2, `distill_weight`
1, weight decay 5e-4, and a warm-up as long as the main stage and on the same schedule (`warmup_epochs`,
`warmup_lr`). Their schedules are for AlexNet/VGG on VOC, MIT67 and CUB and there is no LwF decathlon
code, so the main stage's epochs, lr, milestones and batch are the decathlon recipe the baselines share.
Deviations, named:
- Targets: the code records the old heads' responses once, on un-augmented images; here a frozen copy of
  the previous step's network answers on each augmented batch (as Mallya's PyTorch LwF does).
- The code carries the warm-up's momentum into the main stage; here each phase starts a new optimizer.
- `distill_weight=0` with `warmup_epochs=0` is plain sequential fine-tuning with a head per task, the
  reference LwF is measured against.
- `source_first`: the chain starts with the backbone's own source task (set by `plan_chain`): its
  pre-trained classifier becomes the first head, untrained further.
- BN statistics: the authors' networks have no BN. By default the main stage trains everything, the running
  statistics included, so they follow the task being learned and nothing protects the earlier tasks' (the
  distillation loss reaches only what gradients train). `freeze_bn_statistics` keeps every BN layer's
  running statistics at the pre-trained network's in every stage (its affine weights still train), so the
  old heads are evaluated with the statistics they were trained with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from vdd_bench.methods._surgery import batchnorms

from vdd_bench.backbones import Backbone, BackboneSpec, build_backbone
from vdd_bench.chains import PREVIOUS
from vdd_bench.method import SGD_RECIPE, Phase, TaskContext, register_method
from vdd_bench.search import Choice, Distribution, LogUniform
from vdd_bench.sequential import PerTask, SequentialMethod, first_model


def with_heads(model: Backbone) -> Backbone:
    """The network with its classifier as the first of a list of per-task heads."""
    model.classifier = PerTask(model.classifier)
    return model


def soft_cross_entropy(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    targets = F.softmax(teacher / temperature, dim=1)
    return -(targets * F.log_softmax(student / temperature, dim=1)).sum(dim=1).mean()


LWF_DEFAULTS: dict[str, Any] = {
    **SGD_RECIPE,
    "weight_decay": 5e-4,
    "temperature": 2.0,
    "distill_weight": 1.0,
    "warmup_epochs": SGD_RECIPE["epochs"],
    "warmup_lr": SGD_RECIPE["lr"],
    "freeze_bn_statistics": False,
}
LWF_SEARCH: dict[str, Distribution] = {
    "lr": LogUniform(1e-3, 0.3),
    "temperature": Choice((1.0, 2.0, 4.0)),
    "distill_weight": LogUniform(0.1, 10.0),
    "freeze_bn_statistics": Choice((False, True)),
}


class OldHeadDistillation:
    """The training both LwF protocols share (the chain here, one network per task in `lwf_per_task`): a
    warm-up that trains only the new head (the last one) with the network and its BN statistics frozen, then
    everything; the loss is CE on the new head plus `distill_weight` times the soft cross-entropy of each
    old head against the teacher's answer on the same batch (`teacher_responses`)."""

    _phase = "train"
    _frozen_statistics = False

    def teacher_responses(self, ctx: TaskContext, images: Tensor) -> list[Tensor]:
        """The old heads' targets on `images`, one per old head, from the network before this task."""
        raise NotImplementedError

    @staticmethod
    def warmup_then_train(ctx: TaskContext, train: Phase) -> list[Phase]:
        hp = ctx.hparams
        return [Phase.of("warmup", hp, hp["warmup_epochs"], hp["warmup_lr"]), train]

    def param_groups(self, model: nn.Module, phase: Phase, ctx: TaskContext) -> list[dict[str, Any]]:
        self._phase = phase.name  # the engine asks for the groups at the start of every phase
        self._frozen_statistics = ctx.hparams["freeze_bn_statistics"]
        if phase.name == "warmup":
            return [{"params": list(model.classifier.tasks[-1].parameters())}]
        return [{"params": list(model.parameters())}]

    def train_mode(self, model: nn.Module) -> None:
        model.train(self._phase != "warmup")
        if self._frozen_statistics:
            for bn in batchnorms(model):
                bn.eval()  # normalise with the pre-trained running statistics and leave them unchanged

    def loss(self, model: nn.Module, images: Tensor, labels: Tensor, ctx: TaskContext) -> Tensor:
        features = model.forward_features(images)
        heads = model.classifier.tasks
        loss = F.cross_entropy(heads[-1](features), labels)
        weight = ctx.hparams["distill_weight"]
        if self._phase == "warmup" or weight == 0 or len(heads) == 1:
            return loss
        temperature = ctx.hparams["temperature"]
        for head, target in zip(heads[:-1], self.teacher_responses(ctx, images), strict=True):
            loss = loss + weight * soft_cross_entropy(head(features), target, temperature)
        return loss


@register_method("lwf")
class LearningWithoutForgetting(OldHeadDistillation, SequentialMethod):
    schedule_lengths: ClassVar[tuple[str, ...]] = ("epochs", "warmup_epochs")
    defaults: ClassVar[dict[str, Any]] = {**LWF_DEFAULTS, "source_first": False}
    search_space: ClassVar[dict[str, Distribution]] = LWF_SEARCH

    def __init__(self) -> None:
        self._teacher: tuple[Path, nn.Module] | None = None

    def skeleton(self, spec: BackboneSpec, structure: dict[str, Any]) -> nn.Module:
        model = with_heads(build_backbone(spec, structure["classes"][0]))
        for classes in structure["classes"][1:]:
            model.classifier.tasks.append(nn.Linear(model.feature_dim, classes))
        model.lwf_tasks = list(structure["tasks"])
        model.classifier.active = len(model.lwf_tasks) - 1
        return model

    def build(self, ctx: TaskContext) -> nn.Module:
        previous = self.load_previous(ctx)
        if previous is None:
            model = with_heads(first_model(ctx))
            model.lwf_tasks = [ctx.task]
        else:
            model, structure = previous
            model.classifier.tasks.append(nn.Linear(model.feature_dim, ctx.num_classes))
            model.lwf_tasks = [*structure["tasks"], ctx.task]
        model.classifier.active = len(model.lwf_tasks) - 1
        return model

    def phases(self, ctx: TaskContext) -> list[Phase]:
        if ctx.hparams["source_first"] and PREVIOUS not in ctx.inputs:
            return []  # the source task's head and network are the pre-trained ones
        return self.warmup_then_train(ctx, super().phases(ctx)[0])

    def teacher_responses(self, ctx: TaskContext, images: Tensor) -> list[Tensor]:
        folder = ctx.inputs[PREVIOUS]
        if self._teacher is None or self._teacher[0] != folder:
            teacher, _ = self.load_previous(ctx)
            teacher.eval().requires_grad_(False)
            self._teacher = (folder, teacher)
        teacher = self._teacher[1].to(images.device)
        with torch.no_grad():
            features = teacher.forward_features(images)
            return [head(features) for head in teacher.classifier.tasks]

    def structure(self, model: nn.Module) -> dict[str, Any]:
        return {
            "tasks": list(model.lwf_tasks),
            "classes": [head.out_features for head in model.classifier.tasks],
        }

    def select_task(self, model: nn.Module, task: str) -> nn.Module:
        model.classifier.active = model.lwf_tasks.index(task)
        return model
