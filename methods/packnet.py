"""PackNet (Mallya & Lazebnik, "PackNet: adding multiple tasks to a single network by iterative pruning").

One network for all tasks of a chain. Every conv weight is owned by the task that trained it (an integer
mask, `owner`: 0 free, k the k-th task of the chain). A step trains the free weights on its task, prunes the
smallest-magnitude fraction of them per layer (freeing them for the next task) and retrains the kept ones.
Task k is inferred with the weights of tasks <= k only and its own head.

Weights of earlier tasks cannot move: each conv keeps them in a buffer (`frozen`) that no optimizer sees,
and its forward takes the trainable parameter only where the current task owns the weight, so gradients,
momentum and weight decay reach nothing an earlier task owns. Inference for an earlier task reads exactly
the tensors stored when that task finished, so its predictions stay bitwise identical.

Defaults are the authors' (arunmallya/packnet, `run_all_sequence.sh`, `run_sequence.sh`, `main.py`; lines in
docs/fidelity.md): a new task trains with SGD lr 1e-3 for 20 epochs, x0.1 after 10, weight decay 0, batch
32, then 75% of its weights are pruned (`prune`) and the rest retrained 10 epochs at a constant 1e-4; the
chain's first task prunes 50% (`prune_first`, the authors' ImageNet network); the last task of a chain
keeps every free weight, unpruned and not retrained, as the authors' sequence (`prune_last` False; the
step knows it is last from `last_in_chain`, which `plan_chain` sets). Freed weights start from zero.
BN ("nobias-nobn", the authors' default): one BN shared by every task, trained with the first task of the
chain, then frozen (eval mode: running statistics unchanged) for every later task; `train_bn` True gives
every task a BN of its own instead (starting from the previous task's), stored with the task.
`source_first`: the chain starts with the backbone's own source task (set by `plan_chain`): its pre-trained
classifier is kept and the step goes straight to pruning and retraining, as the authors do with ImageNet.

Accounting (`account`): the stored model keeps every weight twice (`layer.weight` and `frozen`), so counting
its tensors would double the network. Task k's network uses the conv weights owned by tasks 1..k, the BN
and its head; shared = the weights earlier tasks own (and a BN the first task trained); task-specific
storage = the weights it owns, its head, its BN when it trained one (with running statistics), and a 1-bit
mask of its weights.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from vdd_bench.methods._surgery import apply_layer, batchnorms, replace_layers

from vdd_bench.backbones import Backbone, BackboneSpec, build_backbone
from vdd_bench.chains import PREVIOUS
from vdd_bench.errors import VddError
from vdd_bench.method import Phase, TaskContext, register_method
from vdd_bench.search import Distribution, LogUniform, Uniform
from vdd_bench.sequential import PerTask, SequentialMethod, first_model


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
        """Free the smallest-magnitude `fraction` of the current task's weights (ties by position). Boolean
        masks read and write the weights in their logical order, whatever their memory layout
        (channels_last on a GPU)."""
        mine = self.owner == self.current
        magnitude = self.layer.weight[mine].abs()
        chosen = torch.zeros_like(magnitude, dtype=torch.bool)
        chosen[torch.argsort(magnitude, stable=True)[: round(fraction * len(magnitude))]] = True
        freed = torch.zeros_like(mine)
        freed[mine] = chosen
        self.owner[freed] = 0
        self.layer.weight[freed] = 0.0

    @torch.no_grad()
    def consolidate(self) -> None:
        """The task is finished: its weights join the frozen ones."""
        self.frozen.copy_(torch.where(self.owner >= 1, self.values(), torch.zeros_like(self.frozen)))
        self.layer.weight.copy_(self.frozen)


def _packed(model: nn.Module) -> list[PackedConv]:
    return [m for m in model.modules() if isinstance(m, PackedConv)]


def _per_task(model: nn.Module) -> list[PerTask]:
    return [m for m in model.modules() if isinstance(m, PerTask)]


def _per_task_bn(model: nn.Module) -> bool:
    return any(isinstance(m, PerTask) and m is not model.classifier for m in model.modules())


def _wrap(model: Backbone, per_task_bn: bool) -> Backbone:
    replace_layers(model, lambda m: True, PackedConv)
    if per_task_bn:
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
    schedule_lengths: ClassVar[tuple[str, ...]] = ("epochs", "retrain_epochs")
    defaults: ClassVar[dict[str, Any]] = {
        "epochs": 20,
        "lr": 1e-3,
        "optimizer": "sgd",
        "momentum": 0.9,
        "weight_decay": 0.0,
        "milestones": [0.5],
        "gamma": 0.1,
        "batch_size": 32,
        "prune_first": 0.5,
        "prune": 0.75,
        "prune_last": False,
        "retrain_epochs": 10,
        "retrain_lr": 1e-4,
        "train_bn": False,
        "source_first": False,
        "last_in_chain": False,
    }
    # the training lr from the authors' 1e-3 up to the decathlon recipe's 0.1 and beyond, the fine-tuning
    # lr after pruning, and the fractions pruned: of the source network, and of each task's free weights
    search_space: ClassVar[dict[str, Distribution]] = {
        "lr": LogUniform(1e-3, 0.3),
        "retrain_lr": LogUniform(1e-5, 1e-2),
        "prune_first": Uniform(0.3, 0.75),
        "prune": Uniform(0.5, 0.9),
    }

    def skeleton(self, spec: BackboneSpec, structure: dict[str, Any]) -> nn.Module:
        model = _wrap(build_backbone(spec, structure["classes"][0]), structure.get("per_task_bn", True))
        for classes in structure["classes"][1:]:
            _add_task(model, classes)
        model.packnet_tasks = list(structure["tasks"])
        k = len(structure["tasks"])
        _set_task(model, k, k)
        return model

    def build(self, ctx: TaskContext) -> nn.Module:
        previous = self.load_previous(ctx)
        if previous is None:
            model = _wrap(first_model(ctx), ctx.hparams["train_bn"])
            model.packnet_tasks = [ctx.task]
        else:
            model, structure = previous
            _add_task(model, ctx.num_classes)
            model.packnet_tasks = [*structure["tasks"], ctx.task]
        k = len(model.packnet_tasks)
        _set_task(model, k, k)
        for param in model.parameters():
            param.requires_grad_(False)
        if _per_task_bn(model) != ctx.hparams["train_bn"]:
            raise VddError(
                f"packnet train_bn={ctx.hparams['train_bn']} cannot continue a chain that has the other"
            )
        for conv in _packed(model):
            conv.layer.weight.requires_grad_(True)
        for module in _per_task(model):
            module.tasks[-1].requires_grad_(True)
        if self._first(model):  # the shared BN trains with the chain's first task only
            for bn in batchnorms(model):
                bn.requires_grad_(True)
        return model

    def _first(self, model: nn.Module) -> bool:
        return len(model.packnet_tasks) == 1

    def train_mode(self, model: nn.Module) -> None:
        model.train()
        if not _per_task_bn(model) and not self._first(model):
            for bn in batchnorms(model):
                bn.eval()  # the shared BN is frozen after the first task: running statistics too

    def _unpruned(self, ctx: TaskContext) -> bool:
        """The chain's last task keeps every free weight (the authors' sequence prunes it with -1: no-op)."""
        return ctx.hparams["last_in_chain"] and not ctx.hparams["prune_last"]

    def phases(self, ctx: TaskContext) -> list[Phase]:
        hp = ctx.hparams
        train = super().phases(ctx)[0]
        if hp["source_first"] and PREVIOUS not in ctx.inputs:
            train = Phase(name="train", epochs=0, lr=hp["lr"])  # the source task is already trained
        if self._unpruned(ctx):
            return [train]
        retrain = Phase.of("retrain", hp, hp["retrain_epochs"], hp["retrain_lr"], milestones=[])
        return [train, retrain]

    def end_phase(self, model: nn.Module, phase: Phase, ctx: TaskContext) -> nn.Module:
        if phase.name == "train" and not self._unpruned(ctx):
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
            "per_task_bn": _per_task_bn(model),
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
        if not _per_task_bn(model) and k == 1:
            own_modules += batchnorms(model)  # the shared BN, trained by the first task
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
