"""PackNet (Mallya & Lazebnik, "PackNet: adding multiple tasks to a single network by iterative pruning").

One network for all tasks of a chain. Every conv weight is owned by the task that trained it (an integer
mask, `owner`: 0 free, k the k-th task of the chain). A step trains the free weights on its task, prunes the
smallest-magnitude fraction of them per layer (freeing them for the next task) and retrains the kept ones.
Task k is inferred with the weights of tasks <= k only, its own BN layers and its own head.

Weights of earlier tasks cannot move: each conv keeps them in a buffer (`frozen`) that no optimizer sees,
and its forward takes the trainable parameter only where the current task owns the weight, so gradients,
momentum and weight decay reach nothing an earlier task owns. Inference for an earlier task reads exactly
the tensors stored when that task finished, so its predictions stay bitwise identical.

Defaults and deviations (named hyper-parameters):
- `prune_first` 0.5 (the source network's fraction, the chain's first task), `prune` 0.75 (new tasks).
- `retrain_epochs` 10 at `retrain_lr` 1e-4 (the authors' retraining); same optimizer, no lr drops.
- Training of a new task before pruning: the harness's SGD recipe (`epochs`, `lr`, ...), a deviation: the
  authors' per-task schedule is not in the sources this harness draws on.
- `source_first`: the chain starts with the backbone's own source task (set by `plan_chain`): its
  pre-trained classifier is kept and the step goes straight to pruning and retraining, as the authors do
  with ImageNet. Otherwise the first task trains every weight first, like any later task trains the free ones.
- BN per task (the authors freeze BN after the first task; per-task BN is the option the recipe names);
  a new task starts from the BN of the task before it. Freed weights start from zero.
- Accounting (`account`): the stored model keeps every weight twice (`layer.weight` and `frozen`), so
  counting its tensors would double the network. Task k's network uses the conv weights owned by tasks
  1..k, its BN layers and its head; shared = the weights earlier tasks own; task-specific storage = the
  weights it owns, its BN layers (with running statistics), its head and a 1-bit mask of its weights.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from methods._surgery import apply_layer, replace_layers
from vdd_bench.backbones import Backbone, BackboneSpec, build_backbone
from vdd_bench.continual import PREVIOUS, PerTask, SequentialMethod, first_model
from vdd_bench.method import SGD_RECIPE, Phase, TaskContext, register_method


class PackedConv(nn.Module):
    """A conv whose weights are owned by tasks: `layer.weight` trains the current task's, `frozen` keeps the
    earlier tasks' values out of the optimizer's reach."""

    def __init__(self, layer: nn.Conv2d) -> None:
        super().__init__()
        self.layer = layer
        self.register_buffer("frozen", torch.zeros_like(layer.weight))
        self.register_buffer("owner", torch.zeros(layer.weight.shape, dtype=torch.int16))
        self.current = 1  # the task being trained (the last of the chain so far)
        self.active = 1  # the task whose weights the forward uses: owners 1..active

    def values(self) -> Tensor:
        return torch.where(self.owner == self.current, self.layer.weight, self.frozen)

    def forward(self, x: Tensor) -> Tensor:
        used = (self.owner >= 1) & (self.owner <= self.active)
        weight = torch.where(used, self.values(), torch.zeros((), dtype=self.frozen.dtype, device=x.device))
        return apply_layer(self.layer, x, weight)

    @torch.no_grad()
    def prune(self, fraction: float) -> None:
        """Free the smallest-magnitude `fraction` of the current task's weights (ties by position)."""
        mine = (self.owner == self.current).flatten().nonzero().squeeze(1)
        count = round(fraction * len(mine))
        magnitude = self.layer.weight.flatten()[mine].abs()
        freed = mine[torch.argsort(magnitude, stable=True)[:count]]
        self.owner.view(-1)[freed] = 0
        self.layer.weight.view(-1)[freed] = 0.0

    @torch.no_grad()
    def consolidate(self) -> None:
        """The task is finished: its weights join the frozen ones."""
        self.frozen.copy_(torch.where(self.owner >= 1, self.values(), torch.zeros_like(self.frozen)))
        self.layer.weight.copy_(self.frozen)


def _packed(model: nn.Module) -> list[PackedConv]:
    return [m for m in model.modules() if isinstance(m, PackedConv)]


def _per_task(model: nn.Module) -> list[PerTask]:
    return [m for m in model.modules() if isinstance(m, PerTask)]


def _wrap(model: Backbone) -> Backbone:
    replace_layers(model, lambda m: True, PackedConv)
    replace_layers(model, lambda m: True, PerTask, kinds=(nn.BatchNorm2d,))
    model.classifier = PerTask(model.classifier)
    for conv in _packed(model):
        conv.owner.fill_(1)
    return model


def _add_task(model: Backbone, num_classes: int) -> None:
    """A new task: it owns the free weights, starts from the last task's BN, gets a fresh head."""
    k = len(model.classifier.tasks) + 1
    for conv in _packed(model):
        conv.owner[conv.owner == 0] = k
    for bns in _per_task(model):
        if bns is not model.classifier:
            last = bns.tasks[-1]
            bn = type(last)(last.num_features).to(last.weight.device)
            bn.load_state_dict(last.state_dict())
            bns.tasks.append(bn)
    old = model.classifier.tasks[0]
    model.classifier.tasks.append(nn.Linear(model.feature_dim, num_classes, device=old.weight.device))


def _set_task(model: nn.Module, active: int, current: int) -> None:
    """Route the forward to task `active` (1-based) while task `current` is the one that trains."""
    for conv in _packed(model):
        conv.active, conv.current = active, current
    for module in _per_task(model):
        module.active = active - 1


@register_method("packnet")
class PackNet(SequentialMethod):
    defaults: ClassVar[dict[str, Any]] = {
        **SGD_RECIPE,
        "prune_first": 0.5,
        "prune": 0.75,
        "retrain_epochs": 10,
        "retrain_lr": 1e-4,
        "source_first": False,
    }

    def skeleton(self, spec: BackboneSpec, structure: dict[str, Any]) -> nn.Module:
        model = _wrap(build_backbone(spec, structure["classes"][0]))
        for classes in structure["classes"][1:]:
            _add_task(model, classes)
        model.packnet_tasks = list(structure["tasks"])
        k = len(structure["tasks"])
        _set_task(model, k, k)
        return model

    def build(self, ctx: TaskContext) -> nn.Module:
        previous = self.load_previous(ctx)
        if previous is None:
            model = _wrap(first_model(ctx))
            model.packnet_tasks = [ctx.task]
        else:
            model, structure = previous
            _add_task(model, ctx.num_classes)
            model.packnet_tasks = [*structure["tasks"], ctx.task]
        k = len(model.packnet_tasks)
        _set_task(model, k, k)
        for param in model.parameters():
            param.requires_grad_(False)
        for conv in _packed(model):
            conv.layer.weight.requires_grad_(True)
        for module in _per_task(model):
            module.tasks[-1].requires_grad_(True)
        return model

    def _first(self, model: nn.Module) -> bool:
        return len(model.packnet_tasks) == 1

    def phases(self, ctx: TaskContext) -> list[Phase]:
        hp = ctx.hparams
        train = super().phases(ctx)[0]
        if hp["source_first"] and PREVIOUS not in ctx.inputs:
            train = Phase(name="train", epochs=0, lr=hp["lr"])  # the source task is already trained
        retrain = Phase(
            name="retrain",
            epochs=hp["retrain_epochs"],
            lr=hp["retrain_lr"],
            optimizer=hp["optimizer"],
            momentum=hp["momentum"],
            weight_decay=hp["weight_decay"],
            batch_size=hp["batch_size"],
        )
        return [train, retrain]

    def end_phase(self, model: nn.Module, phase: Phase, ctx: TaskContext) -> nn.Module:
        if phase.name == "train":
            fraction = ctx.hparams["prune_first" if self._first(model) else "prune"]
            for conv in _packed(model):
                conv.prune(fraction)
        else:
            for conv in _packed(model):
                conv.consolidate()
        return model

    def structure(self, model: nn.Module) -> dict[str, Any]:
        return {
            "tasks": list(model.packnet_tasks),
            "classes": [head.out_features for head in model.classifier.tasks],
        }

    def select_task(self, model: nn.Module, task: str) -> nn.Module:
        _set_task(model, model.packnet_tasks.index(task) + 1, len(model.packnet_tasks))
        return model

    def account(self, model: nn.Module, ctx: TaskContext) -> dict[str, Any]:
        k = len(model.packnet_tasks)
        owners = torch.cat([conv.owner.flatten() for conv in _packed(model)])
        owned = int((owners == k).sum())
        shared = int(((owners >= 1) & (owners < k)).sum())
        own_modules = [per_task.tasks[k - 1] for per_task in _per_task(model)]
        own_params = sum(p.numel() for m in own_modules for p in m.parameters())
        own_stats = sum(b.numel() for m in own_modules for b in m.buffers() if b.is_floating_point())
        task_bytes = 4 * (owned + own_params + own_stats) + -(-len(owners) // 8)
        return {
            "params_total": shared + owned + own_params,
            "params_shared": shared,
            "params_task": owned + own_params,
            "task_bytes": task_bytes,
            "params_task_equiv": task_bytes / 4,
        }

    def report(self, model: nn.Module, ctx: TaskContext) -> dict[str, Any]:
        owners = torch.cat([conv.owner.flatten() for conv in _packed(model)])
        counts = torch.bincount(owners.long(), minlength=len(model.packnet_tasks) + 1)
        share = (counts.double() / len(owners)).tolist()
        return {
            "tasks": list(model.packnet_tasks),
            "weights_free": round(share[0], 6),
            "weights_owned": {t: round(s, 6) for t, s in zip(model.packnet_tasks, share[1:], strict=True)},
        }
