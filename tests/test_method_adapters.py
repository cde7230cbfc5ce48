"""Residual adapters, series and parallel: frozen 3x3 weights, trained adapters and BNs, beat features."""

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
)
from vdd_bench.methods.adapters_parallel import ParallelAdapter
from vdd_bench.methods.adapters_series import SeriesAdapter

from vdd_bench.accounting import count_macs

# zero-initialised adapters: a short run on a narrow network cannot recover from the random start
OVERRIDES = {**FEATURE_OVERRIDES, "adapter_init": "zero"}
ADAPTERS = [("adapters_series", SeriesAdapter), ("adapters_parallel", ParallelAdapter)]


@pytest.mark.parametrize("method", [name for name, _ in ADAPTERS])
def test_adapters_keep_the_backbone_train_the_adapters_and_beat_features(
    toy_env: ToyEnv, method: str
) -> None:
    run = run_method(toy_env, method, OVERRIDES)
    feature = run_method(toy_env, "feature", FEATURE_OVERRIDES)
    state, pretrained = run.state, toy_env.pretrained
    assert assert_frozen_weights_unchanged(state, pretrained) == 25  # stem + 24 block convs
    start = initial_model(run).state_dict()
    adapters = [k for k in state if ".adapter." in k]
    assert len(adapters) == 25 and all(changed(start[k], state[k]) for k in adapters)
    assert changed(pretrained["blocks.0.bn1.weight"], state["blocks.0.bn1.weight"])
    assert changed(pretrained["blocks.0.bn1.running_mean"], state["blocks.0.bn1.running_mean"])
    assert run.record.accounting.params_task > 0
    assert run.held_out_acc > feature.held_out_acc + 5, (run.record.metrics, feature.record.metrics)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
@pytest.mark.parametrize(("method", "wrapper"), ADAPTERS)
def test_adapters_wrap_the_spatial_convs_of_torchvision_resnets(
    backbone: str, method: str, wrapper: type
) -> None:
    ctx = random_context(method, backbone, 0.125, 32)
    model = train_steps(method, ctx)
    wrapped = [m for m in model.modules() if isinstance(m, wrapper)]
    assert all(max(m.layer.kernel_size) > 1 for m in wrapped)
    spatial = sum(1 for t in ctx.pretrained.values() if t.dim() == 4 and t.shape[-1] > 1)
    assert len(wrapped) == spatial  # the 7x7 stem and every 3x3; ResNet-50's 1x1 convs stay plain
    assert_frozen_weights_unchanged(model.state_dict(), ctx.pretrained)
    assert torch.isfinite(model(torch.randn(2, 3, 32, 32))).all()
    assert count_macs(model, 32) > 0
