"""DAN: frozen filters recombined by near-identity controllers, every conv controlled, BN affine frozen with
task statistics, a task head; better than frozen features; inference with the combined weights
materialised once."""

from __future__ import annotations

import pytest
import torch
from method_helpers import (
    FEATURE_OVERRIDES,
    ToyEnv,
    assert_frozen_weights_unchanged,
    changed,
    initial_model,
    random_context,
    run_method,
    train_steps,
    trained_model,
)
from vdd_bench.methods.dan import ControlledConv

from vdd_bench.accounting import count_macs
from vdd_bench.backbones import build_backbone
from vdd_bench.method import get_method


def test_dan_keeps_the_backbone_trains_the_controllers_and_beats_features(toy_env: ToyEnv) -> None:
    run = run_method(toy_env, "dan", FEATURE_OVERRIDES)
    feature = run_method(toy_env, "feature", FEATURE_OVERRIDES)
    state, pretrained = run.state, toy_env.pretrained
    assert assert_frozen_weights_unchanged(state, pretrained) == 25
    start = initial_model(run).state_dict()
    controllers = [k for k in state if k.endswith(".controller")]
    assert len(controllers) == 25 and all(changed(start[k], state[k]) for k in controllers)
    first = start[controllers[0]]  # the notebook's start: the identity, small noise on the diagonal only
    off_diagonal = first - torch.diag(torch.diagonal(first))
    assert not off_diagonal.any() and 0 < (torch.diagonal(first) - 1).abs().max() < 5 / len(first)
    # BN: affine parameters shared with the backbone, running statistics the task's own
    assert torch.equal(pretrained["blocks.0.bn1.weight"], state["blocks.0.bn1.weight"])
    assert changed(pretrained["blocks.0.bn1.running_mean"], state["blocks.0.bn1.running_mean"])
    assert run.held_out_acc > feature.held_out_acc + 5, (run.record.metrics, feature.record.metrics)
    model = trained_model(run)
    plain = build_backbone(run.ctx.spec, run.ctx.num_classes)
    assert run.record.accounting.macs == count_macs(plain, run.ctx.input_size)
    # the materialised weights (rebuilt on load) give the same outputs as recombining at every forward
    x = torch.randn(2, 3, run.ctx.input_size, run.ctx.input_size)
    fast = model(x)
    for m in model.modules():
        if isinstance(m, ControlledConv):
            m.combined = None
    torch.testing.assert_close(model(x), fast)


def test_identity_controllers_reproduce_the_pretrained_network() -> None:
    ctx = random_context("dan", "resnet26", 0.25, 32, controller_init="identity")
    model = get_method("dan").build(ctx).eval()
    plain = build_backbone(ctx.spec, ctx.pretrained_classes)
    plain.load_state_dict(ctx.pretrained)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.forward_features(x), plain.eval().forward_features(x))


def test_every_conv_is_controlled_by_default_the_resnet26_stem_included() -> None:
    """At width 1 the stem's controller (32 x 32) costs more than its weight (32 x 3 x 3 x 3): the authors'
    code controls it anyway, `control_expanding=False` leaves it frozen."""
    ctx = random_context("dan", "resnet26", 1.0, 32)
    assert isinstance(get_method("dan").build(ctx).stem[0], ControlledConv)
    ctx = random_context("dan", "resnet26", 1.0, 32, control_expanding=False)
    assert not isinstance(get_method("dan").build(ctx).stem[0], ControlledConv)


@pytest.mark.parametrize(
    ("backbone", "control_expanding"), [("resnet34", False), ("resnet50", False), ("resnet50", True)]
)
def test_dan_on_torchvision_resnets(backbone: str, control_expanding: bool) -> None:
    ctx = random_context("dan", backbone, 0.125, 32, control_expanding=control_expanding)
    model = train_steps("dan", ctx)
    controlled = [m for m in model.modules() if isinstance(m, ControlledConv)]
    convs = [t for t in ctx.pretrained.values() if t.dim() == 4]
    cheap = [t for t in convs if t.shape[0] <= t[0].numel()]
    assert len(controlled) == len(convs if control_expanding else cheap)
    assert_frozen_weights_unchanged(model.state_dict(), ctx.pretrained)
    plain = build_backbone(ctx.spec, ctx.num_classes)
    assert count_macs(model, 32) == count_macs(plain, 32)
