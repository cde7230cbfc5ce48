"""Learning without Forgetting with one network per task: the decathlon tables' LwF row.

Each task starts from the pre-trained network and keeps its classifier as the old head: the new task's
head and the whole network train on `CE(new head) + distill_weight * CE(softmax(old / T), softmax(pre-trained
/ T))`, the pre-trained network answering on each batch, after a warm-up that trains only the new head. This
is LwF as its authors' code runs it (one new task added to an ImageNet network, the original task kept) and
as the decathlon tables report it: Rebuffi et al. 2017's LwF row, copied by NetTailor's Table 3, scores
ImageNet at 59.87, the pre-trained network's own accuracy (the fine-tuning baseline's), and sits within a few
points of fine-tuning on every other task, so no network there learned the ten tasks in turn. The chain
(`lwf`), where one network learns every task in turn, is the continual protocol. The training, defaults and
search space are `lwf`'s (docs/fidelity.md).

On the backbone's source task (`source_task`, set per run by `plan_runs`) the run is the pre-trained
network with its own classifier, untrained, as the decathlon's ImageNet column.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from vdd_bench.methods.lwf import LWF_DEFAULTS, LWF_SEARCH, OldHeadDistillation, with_heads

from vdd_bench.config import RunRequest, TaskPlanner
from vdd_bench.method import (
    Method,
    Phase,
    TaskContext,
    pretrained_network,
    register_method,
    source_task_network,
)
from vdd_bench.search import Distribution


@register_method("lwf_per_task")
class LearningWithoutForgettingPerTask(OldHeadDistillation, Method):
    schedule_lengths: ClassVar[tuple[str, ...]] = ("epochs", "warmup_epochs")
    defaults: ClassVar[dict[str, Any]] = {**LWF_DEFAULTS, "source_task": False}
    search_space: ClassVar[dict[str, Distribution]] = LWF_SEARCH

    def __init__(self) -> None:
        self._teacher: tuple[TaskContext, nn.Module] | None = None

    def plan_runs(self, tasks: list[str], plan: TaskPlanner) -> list[RunRequest]:
        if "source_task" in plan.overrides:
            return [plan(task) for task in tasks]
        return [plan(task, {"source_task": task == plan.source_task}) for task in tasks]

    def build(self, ctx: TaskContext) -> nn.Module:
        if ctx.hparams["source_task"]:
            return with_heads(source_task_network(ctx, "source_task"))
        model = with_heads(pretrained_network(ctx))
        model.classifier.tasks.append(nn.Linear(model.feature_dim, ctx.num_classes))
        model.classifier.active = 1
        return model

    def phases(self, ctx: TaskContext) -> list[Phase]:
        if ctx.hparams["source_task"]:
            return []  # the source task's network is the pre-trained one
        return self.warmup_then_train(ctx, super().phases(ctx)[0])

    def teacher_responses(self, ctx: TaskContext, images: Tensor) -> list[Tensor]:
        if self._teacher is None or self._teacher[0] is not ctx:
            self._teacher = (ctx, pretrained_network(ctx).eval().requires_grad_(False))
        teacher = self._teacher[1].to(images.device)
        with torch.no_grad():
            return [teacher(images)]
