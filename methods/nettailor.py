"""NetTailor (Morgado & Vasconcelos, CVPR 2019): tailor the architecture, not just the weights, to a task.

The procedure is a chain of runs, each a pure function of its config, so every step is reused from the run
store and the SLURM launcher orders them through the run dependencies:

1. teacher: a ``finetune`` run with the authors' teacher recipe (SGD lr 0.01, batch 64, wd 5e-4);
2. ``nettailor_student``: frozen pre-trained blocks + proxies + attention logits, trained on
   CE + complexity_weight * E[C] + teacher_weight * teacher loss;
3. ``nettailor_prune`` (one run per ``remove_blocks``): the student pruned for real (proxies with
   alpha <= proxy_threshold and the k pre-trained blocks of smallest alpha, then input/output exclusion)
   and retrained without the complexity term; the harness evaluates it on val like any run;
4. ``nettailor``: the selection; it reads every candidate's record and keeps the leanest (fewest MACs) whose
   validation accuracy is within ``tolerance`` points of the teacher's; no training of its own.

Facts from the authors' code are the defaults (see docs/nettailor.md for every option and deviation).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods._nettailor_graph import (
    MAIN,
    TailoredNet,
    choose_paths,
    parse_skips,
    paths_from_json,
    paths_to_json,
)
from vdd_bench.architectures import TIMING_KEY
from vdd_bench.backbones import Backbone, build_backbone
from vdd_bench.errors import VddError
from vdd_bench.latency import interleaved_median_seconds
from vdd_bench.method import Method, Phase, TaskContext, pretrained_backbone, register_method
from vdd_bench.runner import load_run_model

if TYPE_CHECKING:
    from vdd_bench.runner import RunRequest

Planner = Callable[[str, dict[str, Any]], "RunRequest"]

# The authors' demo schedules: 20 epochs, lr x0.1 every 8 epochs (fractions 0.4 and 0.8 of the phase).
TEACHER_DEFAULTS: dict[str, Any] = {"teacher_epochs": 20}
STUDENT_DEFAULTS: dict[str, Any] = {
    **TEACHER_DEFAULTS,
    "epochs": 20,
    "lr": 0.1,
    "batch_size": 32,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "milestones": [0.4, 0.8],
    "gamma": 0.1,
    "skips": "3",
    "complexity_weight": 0.3,
    "teacher_weight": 10.0,
    "complexity_form": "code",
}
PRUNE_DEFAULTS: dict[str, Any] = {
    **STUDENT_DEFAULTS,
    "proxy_threshold": 0.05,
    "keep_one_path": True,
    "retrain_epochs": 20,
    "retrain_lr": 0.01,
}
SELECT_DEFAULTS: dict[str, Any] = {**PRUNE_DEFAULTS, "candidates": [0, 2, 4, 6, 8, 10], "tolerance": 0.5}
COMPLEXITY_FORMS = ("code", "paper")


def _subset(hparams: dict[str, Any], keys: dict[str, Any]) -> dict[str, Any]:
    return {k: hparams[k] for k in keys}


def plan_teacher(hparams: dict[str, Any], plan: Planner) -> RunRequest:
    """The fine-tuned teacher: a plain ``finetune`` run, so an existing one with this recipe is reused."""
    recipe = {"lr": 0.01, "batch_size": 64, "weight_decay": 5e-4, "milestones": [0.4, 0.8]}
    return plan("finetune", {"epochs": hparams["teacher_epochs"], **recipe})


def student_graph(ctx: TaskContext) -> TailoredNet:
    """The untrained student: the pre-trained network (frozen) with proxies and attention logits."""
    if ctx.hparams["complexity_form"] not in COMPLEXITY_FORMS:
        raise VddError(f"nettailor complexity_form must be one of {COMPLEXITY_FORMS}")
    return TailoredNet(pretrained_backbone(ctx), parse_skips(ctx.hparams["skips"]), ctx.input_size)


def load_tailored(ctx: TaskContext, folder: Path) -> TailoredNet:
    """A finished student or candidate run's network, rebuilt to its structure with its weights."""
    state, structure = load_run_model(folder)
    model = student_graph(ctx)
    if structure:
        model.restrict(paths_from_json(structure["paths"]))
    model.load_state_dict(state)
    return model


def teacher_outputs(teacher: Backbone, images: Tensor) -> tuple[Tensor, list[Tensor]]:
    """The teacher's logits and every block's output."""
    x = teacher.stem(images)
    blocks = []
    for block in teacher.blocks:
        x = block(x)
        blocks.append(x)
    return teacher.classifier(teacher.head(x)), blocks


class _TailoredMethod(Method):
    """What the student and the candidates share: the loss, the optimizer groups, the structure."""

    def __init__(self) -> None:
        self._teacher: Backbone | None = None

    def teacher(self, ctx: TaskContext, like: Tensor) -> Backbone:
        if self._teacher is None:
            state, _ = load_run_model(ctx.inputs["teacher"])
            teacher = build_backbone(ctx.spec, ctx.num_classes)
            teacher.load_state_dict(state)
            self._teacher = teacher.eval().requires_grad_(False)
        return self._teacher.to(like.device)

    def complexity_weight(self, ctx: TaskContext) -> float:
        return ctx.hparams["complexity_weight"]

    def loss(self, model: nn.Module, images: Tensor, labels: Tensor, ctx: TaskContext) -> Tensor:
        """CE + complexity_weight * E[C] + teacher_weight * [MSE(logits) + sum_i MSE(block i)] / #blocks,
        each student block re-run on detached inputs, so the teacher term trains every block locally."""
        nodes = model.nodes(images)
        logits = model.classifier(model.head(nodes[-1]))
        loss = F.cross_entropy(logits, labels)
        gamma1, gamma2 = self.complexity_weight(ctx), ctx.hparams["teacher_weight"]
        if gamma1:
            loss = loss + gamma1 * model.expected_complexity(ctx.hparams["complexity_form"])
        if gamma2:
            with torch.no_grad():
                teacher_logits, teacher_blocks = teacher_outputs(self.teacher(ctx, images), images)
            mimic = F.mse_loss(logits, teacher_logits)
            for i, paths in enumerate(model.paths):
                if paths:
                    mimic = mimic + F.mse_loss(model.mix(i, nodes, detach=True), teacher_blocks[i])
            loss = loss + gamma2 * mimic / len(model.paths)
        return loss

    def param_groups(self, model: nn.Module, phase: Phase, ctx: TaskContext) -> list[dict[str, Any]]:
        logits = list(model.logits.parameters())
        chosen = {id(p) for p in logits}
        others = [p for p in model.parameters() if p.requires_grad and id(p) not in chosen]
        return [{"params": logits, "weight_decay": 0.0}, {"params": others}]

    def structure(self, model: nn.Module) -> dict[str, Any]:
        return {"paths": paths_to_json(model.paths)}

    def restore_structure(self, model: nn.Module, structure: dict[str, Any], ctx: TaskContext) -> nn.Module:
        if structure:
            model.restrict(paths_from_json(structure["paths"]))
        return model

    def inference_model(self, ctx: TaskContext, structure: dict[str, Any]) -> nn.Module:
        return self.restore_structure(student_graph(ctx), structure, ctx)  # no candidate runs needed

    def report(self, model: nn.Module, ctx: TaskContext) -> dict[str, Any]:
        return architecture(model)


@register_method("nettailor_student")
class NetTailorStudent(_TailoredMethod):
    """Step 2: the student trained with the complexity and teacher terms (no pruning)."""

    listed: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = STUDENT_DEFAULTS

    def dependencies(self, hparams: dict[str, Any], plan: Planner) -> dict[str, RunRequest]:
        return {"teacher": plan_teacher(hparams, plan)}

    def build(self, ctx: TaskContext) -> nn.Module:
        return student_graph(ctx)

    def phases(self, ctx: TaskContext) -> list[Phase]:
        return [_phase("student", ctx.hparams, ctx.hparams["epochs"], ctx.hparams["lr"])]


@register_method("nettailor_prune")
class NetTailorPrune(_TailoredMethod):
    """Step 3, one candidate: the student pruned for real, then retrained without the complexity term."""

    listed: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {**PRUNE_DEFAULTS, "remove_blocks": 0}

    def dependencies(self, hparams: dict[str, Any], plan: Planner) -> dict[str, RunRequest]:
        student = plan("nettailor_student", _subset(hparams, STUDENT_DEFAULTS))
        return {"teacher": plan_teacher(hparams, plan), "student": student}

    def build(self, ctx: TaskContext) -> nn.Module:
        hp = ctx.hparams
        model = load_tailored(ctx, ctx.inputs["student"])
        model.restrict(choose_paths(model, hp["remove_blocks"], hp["proxy_threshold"], hp["keep_one_path"]))
        return model

    def phases(self, ctx: TaskContext) -> list[Phase]:
        return [_phase("retrain", ctx.hparams, ctx.hparams["retrain_epochs"], ctx.hparams["retrain_lr"])]

    def complexity_weight(self, ctx: TaskContext) -> float:
        return 0.0


@register_method("nettailor")
class NetTailor(Method):
    """Step 4: the leanest candidate within ``tolerance`` points of the teacher on validation."""

    defaults: ClassVar[dict[str, Any]] = SELECT_DEFAULTS

    def dependencies(self, hparams: dict[str, Any], plan: Planner) -> dict[str, RunRequest]:
        prune = _subset(hparams, PRUNE_DEFAULTS)
        needs = {"teacher": plan_teacher(hparams, plan)}
        for k in sorted(set(hparams["candidates"])):
            needs[f"candidate_{k}"] = plan("nettailor_prune", {**prune, "remove_blocks": k})
        return needs

    def build(self, ctx: TaskContext) -> nn.Module:
        return load_tailored(ctx, ctx.inputs[f"candidate_{select(ctx)['chosen']}"])

    def phases(self, ctx: TaskContext) -> list[Phase]:
        return []

    def structure(self, model: nn.Module) -> dict[str, Any]:
        return {"paths": paths_to_json(model.paths)}

    def restore_structure(self, model: nn.Module, structure: dict[str, Any], ctx: TaskContext) -> nn.Module:
        if structure:
            model.restrict(paths_from_json(structure["paths"]))
        return model

    def inference_model(self, ctx: TaskContext, structure: dict[str, Any]) -> nn.Module:
        return self.restore_structure(student_graph(ctx), structure, ctx)  # no candidate runs needed

    def report(self, model: nn.Module, ctx: TaskContext) -> dict[str, Any]:
        return {**select(ctx), **architecture(model)}

    def timings(self, model: nn.Module, ctx: TaskContext) -> dict[str, Any]:
        teacher_state, _ = load_run_model(ctx.inputs["teacher"])
        teacher = build_backbone(ctx.spec, ctx.num_classes)
        teacher.load_state_dict(teacher_state)
        return {TIMING_KEY: speed(model, teacher, ctx.input_size)}


def _phase(name: str, hp: dict[str, Any], epochs: int, lr: float) -> Phase:
    return Phase(
        name=name,
        epochs=epochs,
        lr=lr,
        momentum=hp["momentum"],
        weight_decay=hp["weight_decay"],
        milestones=tuple(hp["milestones"]),
        gamma=hp["gamma"],
        batch_size=hp["batch_size"],
    )


def _record(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "record.json").read_text())


def select(ctx: TaskContext) -> dict[str, Any]:
    """Every candidate's facts and the choice: fewest MACs (then parameters) within the tolerance of the
    teacher's validation accuracy; when none is, the most accurate one, and the record says so."""
    teacher_acc = _record(ctx.inputs["teacher"])["metrics"]["val_acc"]
    if teacher_acc is None:
        raise VddError(
            "nettailor selects its candidate on the validation split, which the trainval protocol trains on: "
            "select with the train protocol, then run nettailor_prune with the chosen remove_blocks"
        )
    candidates = []
    for k in sorted(set(ctx.hparams["candidates"])):
        record = _record(ctx.inputs[f"candidate_{k}"])
        candidates.append(
            {
                "remove_blocks": k,
                "kept_blocks": record["method_report"]["kept_blocks"],
                "kept_proxies": record["method_report"]["kept_proxies"],
                "params_total": record["accounting"]["params_total"],
                "params_task": record["accounting"]["params_task"],
                "macs": record["accounting"]["macs"],
                "val_acc": record["metrics"]["val_acc"],
            }
        )
    good = [c for c in candidates if c["val_acc"] >= teacher_acc - ctx.hparams["tolerance"]]
    if good:
        chosen = min(good, key=lambda c: (c["macs"], c["params_total"], c["remove_blocks"]))
    else:
        chosen = max(candidates, key=lambda c: (c["val_acc"], -c["macs"]))
    return {
        "teacher_val_acc": teacher_acc,
        "candidates": candidates,
        "chosen": chosen["remove_blocks"],
        "within_tolerance": bool(good),
    }


def architecture(model: TailoredNet) -> dict[str, Any]:
    """The kept architecture as JSON and as a text diagram (one line per block)."""
    blocks = model.describe()
    lines = []
    for b in blocks:
        alphas = b["alphas"]
        if not alphas:
            lines.append(f"block {b['block']:2d}  -- removed --")
            continue
        main = f"[pre-trained {alphas['main']:.2f}]" if b["main"] else "[     ----      ]"
        proxies = " ".join(f"proxy<node{src} {alphas[f'proxy<{src}']:.2f}" for src in b["proxies"])
        lines.append(f"block {b['block']:2d}  {main}  {proxies}")
    kept = [b["block"] for b in blocks if b["main"]]
    return {
        "blocks": blocks,
        "kept_pretrained": kept,
        "kept_blocks": len(kept),
        "total_blocks": len(blocks),
        "kept_proxies": sum(len(b["proxies"]) for b in blocks),
        "diagram": "\n".join(lines),
        "complexity_of_path": {
            f"{i}:{'main' if p[0] == MAIN else f'proxy<{p[1]}'}": round(c, 5)
            for (i, p), c in model.complexity.items()
        },
    }


def speed(model: nn.Module, teacher: nn.Module, size: int, batch: int = 32) -> dict[str, Any]:
    """Tailored network vs the full fine-tuned teacher on the same device (the record's CPU copy)."""
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    tailored_s, teacher_s = interleaved_median_seconds([model, teacher], images)
    return {
        "device": f"cpu ({torch.get_num_threads()} threads)",
        "batch": batch,
        "tailored_ms": round(1000 * tailored_s, 3),
        "teacher_ms": round(1000 * teacher_s, 3),
        "speedup": round(teacher_s / tailored_s, 3),
    }
