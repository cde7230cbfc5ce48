from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vdd_bench.accounting import count_macs, count_parameters, parameter_split, tensor_fingerprints
from vdd_bench.backbones import BackboneSpec, build_backbone
from vdd_bench.errors import VddError


def test_resnet34_matches_nettailors_table():
    model = build_backbone(BackboneSpec("resnet34"), 1000)
    assert count_parameters(model, include_classifier=False) == pytest.approx(21.28e6, rel=1e-3)
    assert count_macs(model, 224) == pytest.approx(3.6e9, rel=0.03)


def test_resnet26_at_64px():
    model = build_backbone(BackboneSpec("resnet26"), 1000).train()
    assert count_macs(model, 64) == pytest.approx(0.87e9, rel=0.05)
    assert model.training  # mode restored
    assert count_parameters(model) == pytest.approx(6.0e6, rel=0.03)
    assert count_parameters(model) - count_parameters(model, include_classifier=False) == 256 * 1000 + 1000


def test_count_parameters_needs_a_classifier_to_leave_out():
    with pytest.raises(VddError):
        count_parameters(nn.Linear(3, 4), include_classifier=False)


class MaskedConv(nn.Conv2d):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("mask", torch.ones_like(self.weight, dtype=torch.bool))

    def forward(self, x):
        return F.conv2d(x, self.weight * self.mask, self.bias, self.stride, self.padding)


def test_masked_conv_is_counted_like_a_plain_conv():
    plain = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 8, 3, stride=2))
    masked = nn.Sequential(MaskedConv(3, 16, 3, padding=1), nn.ReLU(), MaskedConv(16, 8, 3, stride=2))
    expected = 3 * 16 * 9 * 32 * 32 + 16 * 8 * 9 * 15 * 15
    assert count_macs(plain, 32) == expected
    assert count_macs(masked, 32) == expected


def _pretrained():
    torch.manual_seed(0)
    model = build_backbone(BackboneSpec("resnet26", width=0.25), 1000)
    with torch.no_grad():  # stand-in for training: BN weights and statistics no longer at their init
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                for t in (m.weight, m.bias, m.running_mean, m.running_var):
                    t.add_(torch.rand_like(t))
    return model


def test_fresh_copy_with_a_new_classifier_shares_everything_else():
    pretrained = _pretrained()
    model = copy.deepcopy(pretrained)
    model.reset_classifier(10)
    split = parameter_split(model, pretrained.state_dict())
    classifier = 64 * 10 + 10
    assert split["params_total"] == count_parameters(model)
    assert split["params_task"] == classifier
    assert split["params_shared"] == split["params_total"] - classifier
    assert split["task_bytes"] == 4 * classifier
    assert split["params_task_equiv"] == classifier


def test_a_modified_conv_becomes_task_specific():
    pretrained = _pretrained()
    model = copy.deepcopy(pretrained)
    model.reset_classifier(10)
    conv = model.blocks[3].conv1.weight
    with torch.no_grad():
        conv[0, 0, 0, 0] += 1.0
    split = parameter_split(model, pretrained.state_dict())
    assert split["params_task"] == 650 + conv.numel()


def test_task_specific_bn_statistics_and_masks_count_in_bytes():
    pretrained = _pretrained()
    model = copy.deepcopy(pretrained)
    model.reset_classifier(10)
    base = parameter_split(model, pretrained.state_dict())["task_bytes"]
    with torch.no_grad():
        model.head[0].running_mean.add_(1.0)  # a buffer: storage, not a parameter
    split = parameter_split(model, pretrained.state_dict())
    assert split["params_task"] == 650 and split["task_bytes"] == base + 4 * 64
    n = 8 * 1000
    model.blocks[0].register_buffer("mask", torch.ones(n, dtype=torch.bool))
    model.blocks[0].register_buffer("scratch", torch.ones(n, dtype=torch.bool), persistent=False)
    assert parameter_split(model, pretrained.state_dict())["task_bytes"] == base + 4 * 64 + n // 8
    model.blocks[1].register_buffer("bf16_scale", torch.randn(100, dtype=torch.bfloat16))
    assert parameter_split(model, pretrained.state_dict())["task_bytes"] == base + 4 * 64 + n // 8 + 200


def test_fingerprints_follow_content_dtype_and_shape():
    a = torch.arange(6, dtype=torch.float32)
    prints = tensor_fingerprints({"a": a, "i": torch.arange(3)})
    assert len(prints) == 1
    assert tensor_fingerprints({"b": a.clone()}) == prints
    assert tensor_fingerprints({"b": a.reshape(2, 3)}) != prints
    assert tensor_fingerprints({"b": a.double()}) != prints
    assert tensor_fingerprints({"b": a.to(torch.bfloat16)}) != prints
