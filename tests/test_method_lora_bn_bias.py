"""LoRA on convolutions and BN + bias tuning: what trains, what stays frozen, what a task stores."""

from __future__ import annotations

import copy

import pytest
import torch
from method_helpers import (
    FEATURE_OVERRIDES,
    ToyEnv,
    assert_frozen_weights_unchanged,
    changed,
    random_context,
    run_method,
    train_steps,
    trained_model,
)
from torch import nn
from vdd_bench.methods.lora import LoRAConv

from vdd_bench.accounting import count_macs
from vdd_bench.errors import VddError
from vdd_bench.method import get_method, pretrained_backbone


def test_lora_trains_only_its_low_rank_updates_and_the_classifier(toy_env: ToyEnv) -> None:
    run = run_method(toy_env, "lora", FEATURE_OVERRIDES)
    state, pretrained = run.state, toy_env.pretrained
    assert assert_frozen_weights_unchanged(state, pretrained) == 25
    for name, tensor in pretrained.items():  # BN frozen by default: affine and statistics
        if ".bn" in name or name.startswith("bn"):
            assert torch.equal(state[name], tensor), name
    updates = [k for k in state if k.endswith(".lora_B")]
    assert len(updates) == 25 and all(state[k].abs().sum() > 0 for k in updates)  # B starts at zero
    low_rank = sum(state[k].numel() for k in state if ".lora_" in k)
    classifier = sum(state[k].numel() for k in state if k.startswith("classifier."))
    assert run.record.accounting.params_task == low_rank + classifier
    feature = run_method(toy_env, "feature", FEATURE_OVERRIDES)
    assert run.held_out_acc > feature.held_out_acc + 5, (run.record.metrics, feature.record.metrics)


def test_lora_starts_from_the_pretrained_network_and_folds_to_the_same_predictions() -> None:
    ctx = random_context("lora", "resnet26", 0.25, 32, rank=2)
    method = get_method("lora")
    torch.manual_seed(0)
    start = method.build(ctx).eval()
    images = torch.randn(4, 3, 32, 32)
    plain = pretrained_backbone(ctx).eval()
    plain.classifier.load_state_dict(start.classifier.state_dict())
    torch.testing.assert_close(start(images), plain(images))  # B = 0: exactly the pre-trained network
    folded = train_steps("lora", ctx, steps=3)  # ends the phase: the updates are folded
    assert not torch.allclose(folded(images), start(images))  # the updates change the computation
    unfolded = copy.deepcopy(folded)
    wrappers = [m for m in unfolded.modules() if isinstance(m, LoRAConv)]
    assert len(wrappers) == 25 and all(m.folded is not None for m in wrappers)
    for m in wrappers:
        m.folded = None
    torch.testing.assert_close(folded(images), unfolded(images), rtol=1e-4, atol=1e-5)
    assert count_macs(folded, 32) == count_macs(plain, 32) < count_macs(unfolded, 32)
    conv = wrappers[0]
    assert torch.linalg.matrix_rank(conv.lora_B @ conv.lora_A) <= 2 * conv.layer.kernel_size[0]


def test_lora_refuses_a_rank_below_one() -> None:
    with pytest.raises(VddError, match="lora.rank: it must be at least 1"):
        get_method("lora").resolve({"rank": 0}, "lora")


def test_bn_bias_trains_bn_and_the_classifier_only_and_beats_features(toy_env: ToyEnv) -> None:
    run = run_method(toy_env, "bn_bias", FEATURE_OVERRIDES)
    state, pretrained = run.state, toy_env.pretrained
    assert assert_frozen_weights_unchanged(state, pretrained) == 25
    assert changed(pretrained["blocks.0.bn1.weight"], state["blocks.0.bn1.weight"])
    assert changed(pretrained["blocks.0.bn1.bias"], state["blocks.0.bn1.bias"])
    assert changed(pretrained["blocks.0.bn1.running_mean"], state["blocks.0.bn1.running_mean"])
    model = trained_model(run)
    trainable = {n for n, p in get_method("bn_bias").build(run.ctx).named_parameters() if p.requires_grad}
    bns = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    head = {"classifier.weight", "classifier.bias"}
    assert trainable == {f"{n}.{kind}" for n in bns for kind in ("weight", "bias")} | head
    task_params = sum(p.numel() for n, p in model.named_parameters() if n in trainable)
    assert run.record.accounting.params_task == task_params
    feature = run_method(toy_env, "feature", FEATURE_OVERRIDES)
    assert run.held_out_acc > feature.held_out_acc + 5, (run.record.metrics, feature.record.metrics)


def test_a_conv_bias_feeding_a_bn_gets_no_gradient() -> None:
    """Why bn_bias adds no bias of its own to a conv that feeds a BN: the BN's mean subtraction cancels it."""
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 4, 3, bias=True), nn.BatchNorm2d(4)
    bn(conv(torch.randn(8, 3, 6, 6))).pow(2).mul(torch.randn(8, 4, 4, 4)).sum().backward()
    assert conv.bias.grad.abs().max() < 1e-5 < conv.weight.grad.abs().max()
