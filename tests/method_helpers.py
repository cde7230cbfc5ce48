"""Shared machinery of the method tests: a toy decathlon with a small pre-trained ResNet-26, runs of a method
through the real runner, and checks of what a parameter-sharing method must leave unchanged.

conftest.py's ``toy_env`` fixture makes it with ``make_toy_env``. Everything lands under pytest's session base
temporary folder and every step is idempotent (the toy's marker, the run store, the backbone checkpoint), so
the toy is generated and the backbone pre-trained once per session even if several modules use the fixture.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from vdd_bench.tasks.generic import native_resolution
from vdd_bench.tasks.toy import TOY_SOURCE, generate_toy

from vdd_bench.backbones import BackboneSpec, build_backbone, load_checkpoint
from vdd_bench.benchmark import Benchmark
from vdd_bench.cache import load_split_images
from vdd_bench.config import RunSettings
from vdd_bench.device import pick_device
from vdd_bench.engine import make_optimizer, predict
from vdd_bench.method import METHODS, TaskContext, get_method, resolve_hparams
from vdd_bench.pretrain import PretrainPlan, pretrain
from vdd_bench.record import RunRecord
from vdd_bench.runner import execute, plan_run, task_transform
from vdd_bench.store import RunStore

# Seven-segment digits among distractors: the frozen features leave it far from solved (about 35% of 10
# classes after 8 epochs), while adapting the backbone helps.
TOY_TASK = "digits"
# Short runs: 8 epochs, the recipe's two lr drops at the same fractions of the run.
FEATURE_OVERRIDES: dict[str, Any] = {"epochs": 8, "batch_size": 32, "milestones": [0.5, 0.75]}


@dataclass(frozen=True)
class ToyEnv:
    bench: Benchmark
    results: Path
    checkpoint: Path

    @property
    def pretrained(self) -> dict[str, Tensor]:
        return load_checkpoint(self.checkpoint)[1]

    @property
    def settings(self) -> RunSettings:
        """Runs on the toy from the pre-trained backbone."""
        return RunSettings.of(self.bench, backbone_checkpoint=self.checkpoint)


@dataclass(frozen=True)
class Run:
    record: RunRecord
    folder: Path
    ctx: TaskContext

    @property
    def state(self) -> dict[str, Tensor]:
        return torch.load(self.folder / "model.pt", map_location="cpu", weights_only=True)["model"]

    @property
    def held_out_acc(self) -> float:
        """Mean of validation and test accuracy (the toy task's 200 held-out images)."""
        metrics = self.record.metrics
        return (metrics["val_acc"] + metrics["test_acc"]) / 2


def toy_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "method-toy" / "toy"


def make_toy_env(tmp_path_factory: pytest.TempPathFactory) -> ToyEnv:
    """The `toy_env` fixture of conftest.py; idempotent, so the work happens once a session."""
    base = tmp_path_factory.getbasetemp() / "method-toy"
    bench = Benchmark.open(generate_toy(toy_path(tmp_path_factory)))
    results = base / "results"
    settings = RunSettings.of(bench, backbone=BackboneSpec("resnet26", width=0.25))
    plan = PretrainPlan(settings, TOY_SOURCE, {"epochs": 6, "batch_size": 64})
    checkpoint = pretrain(plan, results, progress=False)
    return ToyEnv(bench, results, checkpoint)


def run_method(env: ToyEnv, method: str, overrides: dict[str, Any], task: str = TOY_TASK) -> Run:
    """Plan and execute a run (or reuse the finished one); returns its record, folder and task context."""
    request = plan_run(env.settings, task, method, overrides)
    record = execute(request, env.results, progress=False)
    config = request.config
    spec, pretrained, _ = load_checkpoint(env.checkpoint)
    ctx = TaskContext(
        task=task,
        num_classes=env.bench.tasks[task].num_classes,
        spec=spec,
        pretrained=pretrained,
        pretrained_classes=pretrained["classifier.weight"].shape[0],
        hparams=config.hparams,
        input_size=record.accounting.input_size,
        inputs={name: RunStore(env.results).run_dir(run_id) for name, run_id in config.inputs.items()},
    )
    return Run(record, RunStore(env.results).run_dir(config.run_id), ctx)


def initial_model(run: Run) -> nn.Module:
    """The model the run started from (the runner seeds with the run's seed, 0 here, before ``build``)."""
    torch.manual_seed(0)
    return get_method(run.record.method).build(run.ctx)


def trained_model(run: Run) -> nn.Module:
    """The run's final model, rebuilt from ``model.pt`` (with the structure its method's surgery left)."""
    method = get_method(run.record.method)
    payload = torch.load(run.folder / "model.pt", map_location="cpu", weights_only=True)
    model = method.restore_structure(method.build(run.ctx), payload["structure"], run.ctx)
    model.load_state_dict(payload["model"])
    return model.eval()


def predict_test_split(env: ToyEnv, model: nn.Module, task: str = TOY_TASK) -> np.ndarray:
    """Predicted classes of the task's test images, through the runner's own evaluation path."""
    split = env.bench.split(task, "test")
    size = native_resolution(env.bench)
    augment = task_transform(env.bench, task, size, "residual_adapters", env.results)
    images = torch.from_numpy(load_split_images(env.bench, split, size))
    return predict(model, images, augment, pick_device("cpu"))


def frozen_name(name: str) -> str:
    """The pre-trained state-dict key of a wrapped layer's tensor (wrappers hold the layer as ``layer``)."""
    return name.replace(".layer.", ".")


def assert_frozen_weights_unchanged(state: dict[str, Tensor], pretrained: dict[str, Tensor]) -> int:
    """Every pre-trained conv weight is in the final model, bitwise equal; returns how many were checked."""
    final = {frozen_name(name): tensor for name, tensor in state.items()}
    convs = [name for name, tensor in pretrained.items() if tensor.dim() == 4]
    for name in convs:
        assert torch.equal(final[name], pretrained[name]), f"pre-trained {name} changed"
    return len(convs)


def changed(before: Tensor, after: Tensor) -> bool:
    return not torch.equal(before, after)


def random_context(method: str, backbone: str, width: float, size: int, **overrides: Any) -> TaskContext:
    """A context on a randomly initialised backbone whose BN state is randomised like a trained one's."""
    spec = BackboneSpec(backbone, width=width)
    torch.manual_seed(1)
    model = build_backbone(spec, 7)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    hparams = resolve_hparams(METHODS.get(method).defaults, overrides, method)
    return TaskContext("t", 5, spec, model.state_dict(), 7, hparams, size)


def train_steps(method_name: str, ctx: TaskContext, steps: int = 2, batch: int = 4) -> nn.Module:
    """Build, take a few optimizer steps on random images through the method's own hooks, end the phase."""
    method = get_method(method_name)
    model = method.build(ctx)
    phase = method.phases(ctx)[0]
    optimizer = make_optimizer(method.param_groups(model, phase, ctx), phase)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        method.train_mode(model)
        images = torch.randn(batch, 3, ctx.input_size, ctx.input_size, generator=generator)
        labels = torch.randint(0, ctx.num_classes, (batch,), generator=generator)
        loss = method.loss(model, images, labels, ctx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return method.end_phase(model, phase, ctx).eval()
