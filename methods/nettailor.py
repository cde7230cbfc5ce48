"""NetTailor (Morgado & Vasconcelos, CVPR 2019): tailor the architecture, not just the weights, to a task.

The procedure is a chain of runs, each a pure function of its config, so every step is reused from the run
store and the SLURM launcher orders them through the run dependencies:

1. teacher: a ``finetune`` run with the teacher recipe (``teacher_*`` keys);
2. ``nettailor_student``: frozen pre-trained blocks + proxies + attention logits (+ the head's BN, trained
   per task), trained on CE + complexity_weight * E[C] + teacher_weight * teacher loss;
3. ``nettailor_prune`` (one run per ``remove_blocks``): the student pruned for real (proxies with
   alpha <= proxy_threshold and the k pre-trained blocks of smallest alpha, then input/output exclusion)
   and retrained without the complexity term; the harness evaluates it on val like any run;
4. ``nettailor``: the selection; it reads every candidate's record and keeps the leanest (fewest MACs) whose
   validation accuracy is within ``tolerance`` points of the teacher's; no training of its own. Under the
   ``trainval`` protocol (how the published decathlon numbers were made) it is the refit: the architecture
   chosen by the train-protocol selection, cut out of a student trained on train+val and retrained there
   with a teacher fitted on train+val.

Defaults are the authors' decathlon script (``main_student_decathlon.py``); the demo scripts' values and the
paper's are presets. docs/fidelity.md gives the source of every value; docs/nettailor.md the procedure.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from vdd_bench.methods._nettailor_graph import (
    MAIN,
    TailoredNet,
    choose_paths,
    parse_skips,
    paths_from_json,
    paths_to_json,
)

from vdd_bench.architectures import TIMING_KEY
from vdd_bench.backbones import Backbone, BackboneSpec, build_backbone
from vdd_bench.config import Planner, RunRequest
from vdd_bench.errors import VddError
from vdd_bench.latency import interleaved_median_seconds
from vdd_bench.method import Method, Phase, TaskContext, pretrained_backbone, register_method
from vdd_bench.record import RunRecord
from vdd_bench.runner import load_run_model
from vdd_bench.score import accuracy_floor, learned_nothing
from vdd_bench.search import Choice, Distribution, LogUniform
from vdd_bench.store import read_record

# The teacher: the authors' teacher script for the wide ResNet-26 (main_teacher.py; the decathlon teacher
# script their README names was never published): 90 epochs, lr 0.01 x0.1 every 30, batch 256, wd 5e-4.
TEACHER_DEFAULTS: dict[str, Any] = {
    "teacher_epochs": 90,
    "teacher_lr": 0.01,
    "teacher_batch_size": 256,
    "teacher_weight_decay": 5e-4,
    "teacher_milestones": [1 / 3, 2 / 3],
}
# The student: main_student_decathlon.py's defaults (50 epochs, lr 0.01 x0.1 every 20 epochs, batch 32).
STUDENT_DEFAULTS: dict[str, Any] = {
    **TEACHER_DEFAULTS,
    "epochs": 50,
    "lr": 0.01,
    "batch_size": 32,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "milestones": [0.4, 0.8],
    "gamma": 0.1,
    "skips": "3",
    "complexity_weight": 1.0,
    "teacher_weight": 10.0,
    "complexity_form": "code",
    "main_path": "backbone",
    "head_bn": "fresh",
}
PRUNE_DEFAULTS: dict[str, Any] = {
    **STUDENT_DEFAULTS,
    "proxy_threshold": 0.075,
    "keep_one_path": "when_disconnected",
    "retrain_epochs": 50,
    "retrain_lr": 0.01,
}
SELECT_DEFAULTS: dict[str, Any] = {**PRUNE_DEFAULTS, "candidates": "all", "tolerance": 0.5}
COMPLEXITY_FORMS = ("code", "paper")
HEAD_BN = ("fresh", "pretrained", "frozen")

PRESETS: dict[str, dict[str, Any]] = {
    "nettailor-decathlon": {},  # the defaults: main_student_decathlon.py
    # demo_svhn.py (ResNet-34 on SVHN): teacher 20 epochs at batch 64, student lr 0.1 for 20 epochs, the
    # lr x0.1 every 8 epochs, complexity 0.3, 11 pre-trained blocks removed, retraining 20 epochs.
    "nettailor-demo": {
        "teacher_epochs": 20,
        "teacher_batch_size": 64,
        "teacher_milestones": [0.4, 0.8],
        "epochs": 20,
        "lr": 0.1,
        "complexity_weight": 0.3,
        "retrain_epochs": 20,
        "candidates": [11],
    },
    # the paper where it differs from the code: complexity 0.3 (Sec. 4.1), proxies pruned at 0.05
    # (Sec. 3.5), and the input-exclusion term of each path from its own source node (Eq. 9).
    "nettailor-paper": {"complexity_weight": 0.3, "proxy_threshold": 0.05, "complexity_form": "paper"},
}


def parse_candidates(value: Any) -> str | list[int]:
    """ "all" (every k from 0 to the number of blocks - 1) or k values: a list or "0,4,8"."""
    if value == "all":
        return "all"
    items = value.split(",") if isinstance(value, str) else value
    try:
        ks = sorted({int(k) for k in items if k != ""})
    except (TypeError, ValueError):
        raise VddError(
            f"nettailor candidates must be 'all' or non-negative integers, got {value!r}"
        ) from None
    if not ks or ks[0] < 0:
        raise VddError(f"nettailor candidates must be 'all' or non-negative integers, got {value!r}")
    return ks


def candidate_ks(hparams: dict[str, Any], spec: BackboneSpec) -> list[int]:
    """The k values tried on this backbone; "all" is 0 .. number of blocks - 1."""
    with torch.device("meta"):
        blocks = len(build_backbone(spec, 1).blocks)
    ks = list(range(blocks)) if hparams["candidates"] == "all" else hparams["candidates"]
    if ks[-1] >= blocks:
        raise VddError(f"nettailor candidates: {spec} has {blocks} blocks, so k goes up to {blocks - 1}")
    return ks


def _subset(hparams: dict[str, Any], keys: dict[str, Any]) -> dict[str, Any]:
    return {k: hparams[k] for k in keys}


def plan_teacher(hparams: dict[str, Any], plan: Planner) -> RunRequest:
    """The fine-tuned teacher: a plain ``finetune`` run, so an existing one with this recipe is reused."""
    recipe = {
        "epochs": hparams["teacher_epochs"],
        "lr": hparams["teacher_lr"],
        "batch_size": hparams["teacher_batch_size"],
        "weight_decay": hparams["teacher_weight_decay"],
        "milestones": hparams["teacher_milestones"],
    }
    return plan("finetune", recipe)


def student_graph(ctx: TaskContext) -> TailoredNet:
    """The untrained student: the pre-trained network (frozen) with proxies and attention logits; the head's
    BN trains per task, re-initialised (`head_bn` "fresh", the authors' ``ends_bn``), from the pre-trained
    values ("pretrained") or not at all ("frozen")."""
    hp = ctx.hparams
    if hp["complexity_form"] not in COMPLEXITY_FORMS:
        raise VddError(f"nettailor complexity_form must be one of {', '.join(COMPLEXITY_FORMS)}")
    if hp["head_bn"] not in HEAD_BN:
        raise VddError(f"nettailor head_bn must be one of {', '.join(HEAD_BN)}")
    model = TailoredNet(pretrained_backbone(ctx), parse_skips(hp["skips"]), ctx.input_size, hp["main_path"])
    for bn in (m for m in model.head.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
        if hp["head_bn"] == "fresh":
            bn.reset_parameters()  # weight 1, bias 0 and fresh running statistics
        bn.requires_grad_(hp["head_bn"] != "frozen")
    return model


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
    """What the student, the candidates and the refit share: the loss, the optimizer groups, the structure."""

    schedule_lengths: ClassVar[tuple[str, ...]] = ("teacher_epochs", "epochs", "retrain_epochs")

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
        """No weight decay on the attention logits; the phase's on proxies, the head's BN and classifier."""
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
        return self.restore_structure(student_graph(ctx), structure, ctx)  # no other runs needed

    def report(self, model: nn.Module, ctx: TaskContext) -> dict[str, Any]:
        return architecture(model)


def _retrain(ctx: TaskContext) -> list[Phase]:
    return [Phase.of("retrain", ctx.hparams, ctx.hparams["retrain_epochs"], ctx.hparams["retrain_lr"])]


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
        return [Phase.of("student", ctx.hparams, ctx.hparams["epochs"], ctx.hparams["lr"])]


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
        paths, _ = choose_paths(model, hp["remove_blocks"], hp["proxy_threshold"], hp["keep_one_path"])
        model.restrict(paths)
        return model

    def phases(self, ctx: TaskContext) -> list[Phase]:
        return _retrain(ctx)

    def complexity_weight(self, ctx: TaskContext) -> float:
        return 0.0

    def report(self, model: nn.Module, ctx: TaskContext) -> dict[str, Any]:
        """The architecture, and the blocks that kept their strongest proxy so that the network stays
        connected (`keep_one_path`), recomputed from the student (a resumed run did not build)."""
        hp = ctx.hparams
        student = load_tailored(ctx, ctx.inputs["student"])
        _, rescued = choose_paths(student, hp["remove_blocks"], hp["proxy_threshold"], hp["keep_one_path"])
        return {**architecture(model), "kept_one_path": rescued}


@register_method("nettailor")
class NetTailor(_TailoredMethod):
    """Step 4: the leanest candidate within ``tolerance`` points of the teacher on validation (protocol
    ``train``); under ``trainval``, that architecture refitted on train+val."""

    defaults: ClassVar[dict[str, Any]] = SELECT_DEFAULTS
    presets: ClassVar[dict[str, dict[str, Any]]] = PRESETS
    converters: ClassVar[dict[str, Callable[[Any], Any]]] = {"candidates": parse_candidates}
    # the teacher's and the student's lr around the authors' 0.01 (a trial with another teacher lr trains
    # its own teacher), the weights of the complexity and teacher terms, and the selection's tolerance
    search_space: ClassVar[dict[str, Distribution]] = {
        "teacher_lr": LogUniform(1e-3, 0.1),
        "lr": LogUniform(1e-3, 0.1),
        "complexity_weight": LogUniform(0.1, 10.0),
        "teacher_weight": LogUniform(1.0, 100.0),
        "tolerance": Choice((0.5, 1.0, 2.0)),
    }

    def dependencies(self, hparams: dict[str, Any], plan: Planner) -> dict[str, RunRequest]:
        student = plan("nettailor_student", _subset(hparams, STUDENT_DEFAULTS))
        needs = {"teacher": plan_teacher(hparams, plan), "student": student}
        if plan.protocol == "trainval":  # choose on train/val, then refit on train+val
            return {**needs, "selection": plan("nettailor", hparams, protocol="train")}
        prune = _subset(hparams, PRUNE_DEFAULTS)
        for k in candidate_ks(hparams, plan.spec):
            needs[f"candidate_{k}"] = plan("nettailor_prune", {**prune, "remove_blocks": k})
        return needs

    def _refit(self, ctx: TaskContext) -> bool:
        return "selection" in ctx.inputs

    def build(self, ctx: TaskContext) -> nn.Module:
        if not self._refit(ctx):
            return load_tailored(ctx, ctx.inputs[f"candidate_{select(ctx)['chosen']}"])
        _, structure = load_run_model(ctx.inputs["selection"])
        model = load_tailored(ctx, ctx.inputs["student"])  # the student fitted on train+val
        model.restrict(paths_from_json(structure["paths"]))
        return model

    def phases(self, ctx: TaskContext) -> list[Phase]:
        return _retrain(ctx) if self._refit(ctx) else []

    def complexity_weight(self, ctx: TaskContext) -> float:
        return 0.0

    def report(self, model: nn.Module, ctx: TaskContext) -> dict[str, Any]:
        if not self._refit(ctx):
            return {**select(ctx), **architecture(model)}
        chosen = _record(ctx.inputs["selection"]).method_report
        facts = {k: chosen[k] for k in SELECTION_FACTS}
        return {**facts, **architecture(model), "refit": True, "selection_run": ctx.inputs["selection"].name}

    def timings(self, model: nn.Module, ctx: TaskContext) -> dict[str, Any]:
        teacher_state, _ = load_run_model(ctx.inputs["teacher"])
        teacher = build_backbone(ctx.spec, ctx.num_classes)
        teacher.load_state_dict(teacher_state)
        return {TIMING_KEY: speed(model, teacher, ctx.input_size)}


def _record(folder: Path) -> RunRecord:
    return read_record(str(folder / "record.json"))


SELECTION_FACTS = ("teacher_val_acc", "student_val_acc", "candidates", "chosen", "within_tolerance")


def select(ctx: TaskContext) -> dict[str, Any]:
    """Every candidate's facts and the choice: fewest MACs (then parameters) within the tolerance of the
    teacher's validation accuracy and above chance; when none is, the most accurate one, and the record
    says so."""
    teacher_acc = _record(ctx.inputs["teacher"]).accuracy("val")
    if teacher_acc is None:
        raise VddError("nettailor selects on validation accuracy: the teacher has none (is val labelled?)")
    candidates = []
    for k in sorted(int(name.split("_")[1]) for name in ctx.inputs if name.startswith("candidate_")):
        record = _record(ctx.inputs[f"candidate_{k}"])
        candidates.append(
            {
                "remove_blocks": k,
                "kept_blocks": record.method_report["kept_blocks"],
                "kept_proxies": record.method_report["kept_proxies"],
                "kept_one_path": record.method_report.get("kept_one_path", []),
                "params_total": record.accounting.params_total,
                "params_task": record.accounting.params_task,
                "macs": record.accounting.macs,
                "val_acc": record.accuracy("val"),
                "learned_nothing": learned_nothing(
                    record.accuracy("val"),
                    accuracy_floor(record.num_classes, record.metrics.get("val_majority_acc")),
                ),
            }
        )
    # a candidate at chance or at the majority class's share (it predicts one class) is never "within the
    # tolerance", even of a teacher as bad: the harness's guard, not a rule of the authors' code
    good = [
        c
        for c in candidates
        if not c["learned_nothing"] and c["val_acc"] >= teacher_acc - ctx.hparams["tolerance"]
    ]
    if good:
        chosen = min(good, key=lambda c: (c["macs"], c["params_total"], c["remove_blocks"]))
    else:
        chosen = max(candidates, key=lambda c: (c["val_acc"], -c["macs"]))
    return {
        "teacher_val_acc": teacher_acc,
        "student_val_acc": _record(ctx.inputs["student"]).accuracy("val"),
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
