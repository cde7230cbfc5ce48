"""SpotTune: per-image routing between a frozen and a fine-tuned copy of every block, chosen by a policy
network; the frozen copy stays the pre-trained network and a deployment pays for one copy per block."""

from __future__ import annotations

import pytest
import torch
from method_helpers import (
    FEATURE_OVERRIDES,
    ToyEnv,
    changed,
    random_context,
    run_method,
    trained_model,
)
from torch import nn
from vdd_bench.methods.spottune import GlobalPolicy, SpotTuneNet, gumbel_choice, routed

from vdd_bench.accounting import count_macs
from vdd_bench.backbones import build_backbone
from vdd_bench.engine import make_optimizer
from vdd_bench.method import get_method

# The routing is random at first (both copies equally likely), so the tuned copies learn more slowly than
# plain fine-tuning: 24 epochs on the toy, for SpotTune and the feature extractor it is compared with.
LONGER = {**FEATURE_OVERRIDES, "epochs": 24}


def test_spottune_trains_the_tuned_copies_keeps_the_frozen_convs_and_beats_features(toy_env: ToyEnv) -> None:
    run = run_method(toy_env, "spottune", LONGER)
    state, pretrained = run.state, toy_env.pretrained
    block_convs = [k for k, t in pretrained.items() if k.startswith("blocks.") and t.dim() == 4]
    assert len(block_convs) == 24
    for name in block_convs:
        assert torch.equal(state[name], pretrained[name]), f"frozen {name} changed"
        assert changed(state[name.replace("blocks.", "tuned.", 1)], pretrained[name])  # its tuned copy
    assert changed(state["stem.0.weight"], pretrained["stem.0.weight"])  # the authors train the stem conv
    report = run.record.method_report
    fractions = report["tuned_fraction"]
    assert len(fractions) == 12 and all(0.0 <= f <= 1.0 for f in fractions)
    assert report["mean_tuned_fraction"] == pytest.approx(sum(fractions) / 12, abs=1e-4)
    accounting = run.record.accounting
    frozen = sum(pretrained[name].numel() for name in block_convs)
    assert accounting.params_shared == frozen
    assert accounting.params_task == accounting.params_total - frozen
    # a deployment runs one copy per block: the backbone's MACs plus the policy's, whatever the routing
    model = trained_model(run)
    plain = build_backbone(run.ctx.spec, run.ctx.num_classes)
    size = accounting.input_size
    assert accounting.macs == count_macs(plain, size) + count_macs(model.policy, size)
    feature = run_method(toy_env, "feature", LONGER)
    assert run.held_out_acc > feature.held_out_acc + 5, (run.record.metrics, feature.record.metrics)


def _forced(model: SpotTuneNet, choices: list[int]) -> None:
    """Make a global policy choose ``choices`` (1: the tuned copy) for every image."""
    logits = torch.tensor([[0.0, 5.0] if c else [5.0, 0.0] for c in choices]).reshape(-1)
    with torch.no_grad():
        model.policy.logits.copy_(logits)


def test_each_image_goes_through_the_copy_its_policy_chose() -> None:
    ctx = random_context("spottune", "resnet26", 0.25, 32, policy="global")
    model = get_method("spottune").build(ctx).eval()
    with torch.no_grad():
        for p in model.tuned.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(6, 3, 32, 32)
    _forced(model, [0] * 12)
    backbone = build_backbone(ctx.spec, ctx.pretrained_classes)
    backbone.load_state_dict(ctx.pretrained)
    backbone.classifier = model.classifier
    torch.testing.assert_close(model(x), backbone.eval()(x))  # all frozen: the pre-trained network
    _forced(model, [0] * 11 + [1])
    backbone.blocks[11] = model.tuned[11]
    torch.testing.assert_close(model(x), backbone(x))  # the last block through its tuned copy
    # per-image routing equals mixing the two copies' outputs with the one-hot choice
    h = torch.randn(6, *_block_input(model, x).shape[1:])
    choice = torch.tensor([1, 0, 0, 1, 1, 0])
    w = choice.view(-1, 1, 1, 1).float()
    mixed = model.blocks[11](h) * (1 - w) + model.tuned[11](h) * w
    torch.testing.assert_close(routed(h, choice.bool(), model.blocks[11], model.tuned[11]), mixed)


def _block_input(model: SpotTuneNet, x: torch.Tensor) -> torch.Tensor:
    h = model.stem(x)
    for block in model.blocks[:11]:
        h = block(h)
    return h


def test_gumbel_choice_is_one_hot_forward_and_softmax_backward() -> None:
    logits = torch.randn(5, 12, 2, requires_grad=True)
    weight = gumbel_choice(logits, 5.0, torch.Generator().manual_seed(0))
    assert set(weight.detach().unique().tolist()) <= {0.0, 1.0}
    weight.sum().backward()
    assert logits.grad is not None and bool((logits.grad != 0).all())  # through the soft sample
    torch.testing.assert_close(logits.grad[..., 0], -logits.grad[..., 1])


def test_frozen_convs_stay_bitwise_the_policy_learns_and_the_noise_replays_from_the_count() -> None:
    ctx = random_context("spottune", "resnet26", 0.25, 32)
    method = get_method("spottune")
    torch.manual_seed(3)
    model = method.build(ctx)
    assert isinstance(model.policy, nn.Module) and not isinstance(model.policy, GlobalPolicy)
    policy_before = {k: v.clone() for k, v in model.policy.state_dict().items()}
    phase = method.phases(ctx)[0]
    groups = method.param_groups(model, phase, ctx)
    assert [g.get("lr") for g in groups] == [None, 0.01] and groups[1]["weight_decay"] == 1e-3
    optimizer = make_optimizer(groups, phase)
    for _ in range(3):
        method.train_mode(model)
        loss = method.loss(model, torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4,)), ctx)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for name, tensor in model.blocks.state_dict().items():
        if tensor.dim() == 4:
            assert torch.equal(tensor, ctx.pretrained[f"blocks.{name}"])
    assert any(changed(policy_before[k], v) for k, v in model.policy.state_dict().items())
    assert int(model.draws) == 3
    first = gumbel_choice(torch.zeros(4, 12, 2), 5.0, model.noise_at(0))
    again = gumbel_choice(torch.zeros(4, 12, 2), 5.0, model.noise_at(0))
    assert torch.equal(first, again)


def test_the_authors_weight_decay_per_dataset_and_the_paper_steps() -> None:
    method = get_method("spottune")
    for task, decay in (("dtd", 0.0), ("aircraft", 5e-4), ("vgg-flowers", 1e-4), ("digits", 5e-4)):
        ctx = random_context("spottune", "resnet26", 0.25, 32)
        ctx.task = task
        model = method.build(ctx)
        assert method.param_groups(model, method.phases(ctx)[0], ctx)[0]["weight_decay"] == decay
    [phase] = method.phases(random_context("spottune", "resnet26", 0.25, 32))
    assert [phase.lr_at(e) for e in (39, 40, 60, 80)] == pytest.approx([0.1, 0.01, 0.01, 0.01])
    hp = method.resolve({"preset": "paper-steps"}, "spottune")
    assert [round(m * 110) for m in hp["milestones"]] == [40, 60, 80]
