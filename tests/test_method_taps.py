"""TAPS: gated full-size deltas on frozen convs; the penalty switches layers off and a task stores only the
deltas of the layers it adapted."""

from __future__ import annotations

from pathlib import Path

import torch
from method_helpers import (
    FEATURE_OVERRIDES,
    ToyEnv,
    assert_frozen_weights_unchanged,
    random_context,
    run_method,
    trained_model,
)
from torch import nn
from vdd_bench.methods.taps import GatedDelta, gated_layers

from vdd_bench.method import get_method
from vdd_bench.plots import adapted_layers


def test_taps_keeps_some_layers_stores_only_their_deltas_and_beats_features(
    toy_env: ToyEnv, tmp_path: Path
) -> None:
    run = run_method(toy_env, "taps", FEATURE_OVERRIDES)
    state, pretrained = run.state, toy_env.pretrained
    assert assert_frozen_weights_unchanged(state, pretrained) == 25
    adapted = run.record.method_report["adapted_layers"]
    assert 0 < len(adapted) < 25  # the penalty switched some layers off, not all
    assert sorted(k.removesuffix(".delta") for k in state if k.endswith(".delta")) == sorted(adapted)
    assert set(adapted) < set(run.record.method_report["layers"])
    model = trained_model(run)
    assert sorted(gated_layers(model)) == sorted(adapted)
    deltas = sum(state[f"{name}.delta"].numel() + 1 for name in adapted)  # + its score
    bn = sum(m.weight.numel() + m.bias.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    head = sum(p.numel() for p in model.classifier.parameters())
    assert run.record.accounting.params_task == deltas + bn + head
    feature = run_method(toy_env, "feature", FEATURE_OVERRIDES)
    assert run.held_out_acc > feature.held_out_acc + 5, (run.record.metrics, feature.record.metrics)
    [figure] = adapted_layers([run.record, feature.record], tmp_path, ("png",))  # one grid, TAPS's run
    assert figure.name.endswith("-taps-layers.png") and figure.stat().st_size > 0


def test_the_gate_switches_the_delta_and_passes_the_gradient_to_the_score() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    gated = GatedDelta(conv, score_init=0.15, threshold=0.1)
    with torch.no_grad():
        gated.delta.normal_()
    x = torch.randn(2, 3, 5, 5)
    with_delta = nn.functional.conv2d(x, conv.weight + gated.delta, padding=1)
    out = gated(x)
    torch.testing.assert_close(out, with_delta)
    out.sum().backward()
    assert gated.delta.grad is not None and gated.score.grad is not None
    assert torch.isclose(gated.score.grad, (gated.delta.grad * gated.delta).sum())  # straight through
    with torch.no_grad():
        gated.score.fill_(0.05)  # below the threshold: the plain shared conv
    torch.testing.assert_close(gated(x), conv(x))


def test_the_penalty_starts_after_the_warm_up_and_is_lam_times_the_l1_of_the_scores() -> None:
    ctx = random_context("taps", "resnet26", 0.25, 32, lam=2.0)
    method = get_method("taps")
    model = method.build(ctx)
    warmup, main = method.phases(ctx)
    images, labels = torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4,))
    method.param_groups(model, warmup, ctx)
    plain = method.loss(model, images, labels, ctx)
    method.param_groups(model, main, ctx)
    penalised = method.loss(model, images, labels, ctx)
    assert torch.isclose(penalised - plain, torch.tensor(2.0 * 25 * 0.15 / 52))
    assert warmup.epochs == 3 and main.epochs == 120
