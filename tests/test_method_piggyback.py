"""Piggyback: frozen weights and BN, learned binary masks, a task stored as its bits plus head (and BN)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from method_helpers import (
    FEATURE_OVERRIDES,
    ToyEnv,
    assert_frozen_weights_unchanged,
    frozen_name,
    predict_test_split,
    random_context,
    run_method,
    train_steps,
    trained_model,
)
from vdd_bench.methods.piggyback import BinaryMaskedLayer, load_task, save_task

from vdd_bench.accounting import count_macs, parameter_split
from vdd_bench.backbones import build_backbone

# The recipe's lr (1e-4) needs thousands of steps to move a mask from 1e-2 across 5e-3; the toy run has 56.
OVERRIDES = {"epochs": 8, "batch_size": 32, "lr": 3e-4, "classifier_lr": 3e-2, "lr_step_epochs": 6}


def test_piggyback_keeps_weights_and_bn_learns_masks_and_beats_features(toy_env: ToyEnv, tmp_path) -> None:
    run = run_method(toy_env, "piggyback", OVERRIDES)
    feature = run_method(toy_env, "feature", FEATURE_OVERRIDES)
    state, pretrained = run.state, toy_env.pretrained
    assert_frozen_weights_unchanged(state, pretrained)
    final = {frozen_name(k): v for k, v in state.items()}
    for name, tensor in pretrained.items():  # BN affine parameters and running statistics included
        if not name.startswith("classifier."):
            assert torch.equal(final[name], tensor), f"{name} changed"
    masks = [v for v in state.values() if v.dtype == torch.bool]
    assert len(masks) == 25
    zeroed = sum(int((~m).sum()) for m in masks)
    assert 0 < zeroed < sum(m.numel() for m in masks) // 2
    assert run.held_out_acc > feature.held_out_acc + 5, (run.record.metrics, feature.record.metrics)

    accounting = run.record.accounting
    plain = build_backbone(run.ctx.spec, run.ctx.num_classes)
    assert accounting.macs == count_macs(plain, run.ctx.input_size)
    path = tmp_path / "digits.task"
    written = save_task(trained_model(run), path)
    assert written == path.stat().st_size == accounting.task_bytes
    loaded = load_task(path, run.ctx)
    recorded = np.load(run.folder / "predictions.npz")["test_pred"]
    np.testing.assert_array_equal(predict_test_split(toy_env, loaded), recorded)
    x = torch.randn(4, 3, run.ctx.input_size, run.ctx.input_size)
    assert torch.equal(loaded(x), trained_model(run)(x))


@pytest.mark.parametrize(("backbone", "train_bn"), [("resnet26", True), ("resnet50", False)])
def test_task_file_round_trip_and_size(backbone: str, train_bn: bool, tmp_path) -> None:
    ctx = random_context("piggyback", backbone, 0.125, 32, lr=3e-3, train_bn=train_bn)
    model = train_steps("piggyback", ctx, steps=3)
    assert all(isinstance(m, BinaryMaskedLayer) for m in model.modules() if hasattr(m, "mask"))
    path = tmp_path / "task.bin"
    written = save_task(model, path)
    assert written == parameter_split(copy.deepcopy(model), ctx.pretrained)["task_bytes"]
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(load_task(path, ctx)(x), model(x))
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(Exception, match="too short"):
        load_task(path, ctx)
