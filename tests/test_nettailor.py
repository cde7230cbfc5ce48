"""NetTailor mechanisms on small graphs: initial attention, expected complexity, local teacher term, pruning
that really removes modules, exclusion rules, and the student on every backbone family."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from method_helpers import random_context, train_steps
from record_helpers import make_record
from torch import nn
from vdd_bench.methods._nettailor_graph import MAIN, PROXY, TailoredNet, choose_paths, exclude, proxy_stride

from vdd_bench.accounting import count_macs, count_parameters
from vdd_bench.backbones import Backbone, BackboneSpec, build_backbone
from vdd_bench.config import RunConfig
from vdd_bench.errors import VddError
from vdd_bench.method import get_method
from vdd_bench.record import Accounting


def tiny_graph() -> TailoredNet:
    """Two ResNet-26 blocks, two skips: block 0 = {main, proxy<0}, block 1 = {main, proxy<1, proxy<0}."""
    torch.manual_seed(0)
    spec = BackboneSpec("resnet26", width=0.25)
    full = build_backbone(spec, 5)
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    blocks = list(full.blocks[:2])
    backbone = Backbone(spec, full.stem, blocks, head, nn.Linear(16, 5), [2, 1], [(8, 16), (16, 16)])
    model = TailoredNet(backbone, skips=2, input_size=16, main_path="preactivation")
    model.complexity = {
        (0, (MAIN, 0)): 0.4,
        (0, (PROXY, 0)): 0.1,
        (1, (MAIN, 1)): 0.5,
        (1, (PROXY, 1)): 0.05,
        (1, (PROXY, 0)): 0.02,
    }
    with torch.no_grad():
        for logits in model.logits.values():
            logits.zero_()  # uniform attention: alphas 1/2 and 1/3
    return model


def test_expected_complexity_value_and_gradient_by_hand() -> None:
    model = tiny_graph()
    assert model.paths == [[(MAIN, 0), (PROXY, 0)], [(MAIN, 1), (PROXY, 1), (PROXY, 0)]]
    # block 0: P_in = 1 (nothing flows into node 0), P_out = (1 - 1/3)^2 (block 1 paths from node 1);
    # block 1: P_in = (1 - 1/2)^2 (block 0's paths), P_out = 1 (only the head reads the last node)
    expected = 0.5 * (1 / 2 - 1 - 4 / 9) + 0.57 * (1 / 3 - 1 / 4 - 1)
    value = model.expected_complexity()
    assert value.item() == pytest.approx(expected, abs=1e-6)
    # the paper's form: proxy<0 of block 1 is cleared by its own source node (the stem's: P_in = 1)
    paper = expected + 0.02 * (1 / 4 - 1)
    assert model.expected_complexity("paper").item() == pytest.approx(paper, abs=1e-6)
    value.backward()
    # d/d(logit of block 1's main) = a(C_main - sum_j C_j a_j) - 0.5 * d[(1 - a_main)(1 - a_proxy<1)]
    #                             = (0.5 - 0.19) / 3 - 0.5 * (-2/27)
    grad = model.logits["1"].grad
    assert grad[0].item() == pytest.approx(0.31 / 3 + 1 / 27, abs=1e-6)
    # and every logit's gradient agrees with central differences
    for key, logits in model.logits.items():
        for j in range(len(logits)):
            with torch.no_grad():
                logits[j] += 1e-3
                up = model.expected_complexity().item()
                logits[j] -= 2e-3
                down = model.expected_complexity().item()
                logits[j] += 1e-3
            assert logits.grad[j].item() == pytest.approx((up - down) / 2e-3, abs=1e-3), (key, j)


@pytest.mark.parametrize(
    ("skips", "counts"), [("3", [1, 2] + [3] * 10), ("1", [1] * 12), ("dense", range(1, 13))]
)
def test_initial_attention_favours_the_pretrained_blocks(skips: str, counts: list[int]) -> None:
    ctx = random_context("nettailor_student", "resnet26", 0.25, 32, skips=skips)
    model = get_method("nettailor_student").build(ctx)
    assert [len(p) - 1 for p in model.paths] == list(counts)
    for i, paths in enumerate(model.paths):
        assert paths[0] == (MAIN, i)
        assert model.logits[str(i)].tolist() == [2.0] + [-2.0] * (len(paths) - 1)
    assert not any(p.requires_grad for p in model.mains.parameters())
    assert not any(p.requires_grad for p in model.stem.parameters())
    groups = get_method("nettailor_student").param_groups(
        model, get_method("nettailor_student").phases(ctx)[0], ctx
    )
    assert groups[0]["weight_decay"] == 0.0 and len(groups[0]["params"]) == 12  # logits: no weight decay
    # proxies: max-pool (kernel s+1, stride s, padding s//2) when the resolution drops, 1x1 conv, BN
    proxy = model.proxies["4_4"]  # node 4 (16 px) to node 5 (8 px)
    assert [type(m) for m in proxy] == [nn.MaxPool2d, nn.Conv2d, nn.BatchNorm2d]
    assert (proxy[0].kernel_size, proxy[0].stride, proxy[0].padding) == (3, 2, 1)
    assert proxy[1].bias is None and proxy[1].weight.std().item() == pytest.approx(0.01, rel=0.3)


def test_teacher_term_trains_each_block_locally() -> None:
    ctx = random_context("nettailor_student", "resnet26", 0.25, 32)
    model = get_method("nettailor_student").build(ctx)
    nodes = model.nodes(torch.randn(4, 3, 32, 32))
    local = model.mix(5, nodes, detach=True)
    F.mse_loss(local, torch.zeros_like(local)).backward()
    trained = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trained and all(name.startswith(("proxies.5_", "logits.5")) for name in trained), trained
    # the same term on the live (non-detached) inputs would reach the earlier blocks
    model.zero_grad()
    F.mse_loss(model.mix(5, nodes), torch.zeros_like(local)).backward()
    assert model.proxies["2_2"][0].weight.grad.abs().sum() > 0


def test_pruning_removes_modules_from_state_forward_and_counts() -> None:
    ctx = random_context("nettailor_student", "resnet26", 0.25, 32)
    method = get_method("nettailor_student")
    model = method.build(ctx).eval()
    with torch.no_grad():
        model.logits["3"].copy_(torch.tensor([0.0, 3.0, -5.0, -5.0]))  # block 3: proxy<3 strong, main weak
        model.logits["7"].copy_(torch.tensor([1.0, 1.0, -5.0, -5.0]))
    full_macs, full_params = count_macs(model, 32), count_parameters(model)
    kept, rescued = choose_paths(model, remove_blocks=2, threshold=0.05)
    assert rescued == []
    removed_mains = {i for i, paths in enumerate(kept) if (MAIN, i) not in paths}
    assert removed_mains == {3, 7}  # the two smallest main alphas (about 0.05 and 0.5)
    assert kept[3] == [(PROXY, 3)] and kept[7] == [(PROXY, 7)]
    model.restrict(kept)
    state = model.state_dict()
    for i in removed_mains:
        assert not any(k.startswith(f"mains.{i}.") for k in state)
    assert sorted(k.split(".")[1] for k in state if k.startswith("proxies.") and k.endswith("1.weight")) == [
        "3_3",
        "7_7",
    ]
    called: set[str] = set()
    hooks = [
        m.register_forward_hook(lambda mod, args, out, name=name: called.add(name))
        for name, m in model.named_modules()
        if name
    ]
    model(torch.randn(2, 3, 32, 32))
    for hook in hooks:
        hook.remove()
    ran_mains = {int(n.split(".")[1]) for n in called if n.startswith("mains.") and n.count(".") == 1}
    assert ran_mains == set(range(12)) - removed_mains
    assert {n for n in called if n.startswith("proxies.") and n.count(".") == 1} == {
        "proxies.3_3",
        "proxies.7_7",
    }
    assert count_macs(model, 32) < full_macs and count_parameters(model) < full_params
    # the structure rebuilds the same module from a fresh build (resume, loading a finished run)
    rebuilt = method.restore_structure(method.build(ctx), method.structure(model), ctx)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(rebuilt.eval()(x), model(x))


def test_input_and_output_exclusion() -> None:
    # input exclusion: block 1 lost every path, so block 2's proxy from node 2 has no input
    assert exclude([[(MAIN, 0)], [], [(PROXY, 2), (PROXY, 1)]]) == [[(MAIN, 0)], [], [(PROXY, 1)]]
    # output exclusion: nothing reads node 2, so block 1 (which only feeds it) goes
    assert exclude([[(MAIN, 0)], [(MAIN, 1)], [(PROXY, 1)]]) == [[(MAIN, 0)], [], [(PROXY, 1)]]


def test_a_block_left_without_paths_loses_its_node_unless_that_disconnects_the_network() -> None:
    ctx = random_context("nettailor_student", "resnet26", 0.25, 32)
    model = get_method("nettailor_student").build(ctx)
    with torch.no_grad():
        model.logits["6"].copy_(torch.tensor([-9.0, -2.0, -1.0, -3.0]))  # main weakest, proxies weak too
    # every proxy under the threshold: without block 6's node nothing reaches the head
    with pytest.raises(VddError, match="disconnected"):
        choose_paths(model, remove_blocks=1, threshold=0.99, keep_one_path="never")
    kept, rescued = choose_paths(model, remove_blocks=1, threshold=0.99)
    assert rescued == [6] and kept[6] == [(PROXY, 5)]  # the strongest proxy stays
    # output exclusion: that proxy reads node 5, so node 6 (block 5's output) has no reader left
    assert kept[5] == [] and sum((MAIN, i) in p for i, p in enumerate(kept)) == 10
    # when a later block bridges the gap (block 7's proxy from node 6), block 6's node goes, as in the code
    with torch.no_grad():
        model.logits["7"].copy_(torch.tensor([0.0, -9.0, 3.0, -9.0]))  # proxy<6 strong
    kept, rescued = choose_paths(model, remove_blocks=1, threshold=0.7)
    assert rescued == [] and kept[6] == [] and kept[7] == [(PROXY, 6)]
    kept, rescued = choose_paths(model, remove_blocks=1, threshold=0.7, keep_one_path="always")
    assert rescued == [6] and kept[6] == [(PROXY, 5)]


def test_the_merged_block_is_the_formula_of_the_backbone_family() -> None:
    """ResNet-26 (the authors' wide model): ReLU(a_main * ReLU(main) + sum a_p proxy_p); torchvision
    blocks: ReLU(a_main * (y + shortcut) + sum a_p proxy_p). Checked on hand-made node tensors."""
    for name, form in (("resnet26", "activated"), ("resnet18", "preactivation")):
        ctx = random_context("nettailor_student", name, 0.25, 32)
        model = get_method("nettailor_student").build(ctx).eval()
        assert model.main_path == form
        with torch.no_grad():
            model.logits["3"].copy_(torch.tensor([0.3, -0.2, 0.5, 0.1]))
        torch.manual_seed(0)
        shapes = [n.shape[1:] for n in model.nodes(torch.zeros(1, 3, 32, 32)) if n is not None]
        nodes = [torch.randn(2, *shape) for shape in shapes]
        block, x = model.mains["3"].block, nodes[3]
        with torch.no_grad():
            y = F.relu(block.bn1(block.conv1(x)))
            y = block.bn2(block.conv2(y))
            shortcut = block.shortcut(x) if name == "resnet26" else x
            main = F.relu(y + shortcut) if form == "activated" else y + shortcut
            alpha = torch.softmax(torch.tensor([0.3, -0.2, 0.5, 0.1]), 0)
            proxies = [model.proxies[f"3_{src}"](nodes[src]) for src in (3, 2, 1)]
            expected = F.relu(alpha[0] * main + sum(a * p for a, p in zip(alpha[1:], proxies, strict=True)))
            torch.testing.assert_close(model.mix(3, nodes), expected)
    # the other form is a named option
    ctx = random_context("nettailor_student", "resnet26", 0.25, 32, main_path="preactivation")
    assert get_method("nettailor_student").build(ctx).main_path == "preactivation"


def test_the_head_bn_trains_per_task_while_the_blocks_stay_bitwise_frozen() -> None:
    ctx = random_context("nettailor_student", "resnet26", 0.25, 32, teacher_weight=0.0)
    method = get_method("nettailor_student")
    model = method.build(ctx)
    head_bn = model.head[0]
    # fresh, as the authors' ends_bn (never loaded from the pre-trained network, whose BN is randomised here)
    assert torch.equal(head_bn.weight.detach(), torch.ones(64)) and not head_bn.bias.detach().any()
    assert torch.equal(head_bn.running_var, torch.ones(64)) and not torch.equal(
        ctx.pretrained["head.0.weight"], head_bn.weight.detach()
    )
    groups = method.param_groups(model, method.phases(ctx)[0], ctx)
    decayed = {id(p) for p in groups[1]["params"]}
    assert id(head_bn.weight) in decayed and "weight_decay" not in groups[1]  # the phase's 5e-4
    trained = train_steps("nettailor_student", ctx)
    state = trained.state_dict()
    assert not torch.equal(state["head.0.weight"], torch.ones(64))
    blocks = {k: v for k, v in state.items() if k.startswith(("stem.", "mains.")) and "running" not in k}
    assert blocks and all(
        torch.equal(v, ctx.pretrained[k.replace("mains.", "blocks.").replace(".block.", ".")])
        for k, v in blocks.items()
        if not k.endswith("num_batches_tracked")
    )
    frozen = random_context("nettailor_student", "resnet26", 0.25, 32, teacher_weight=0.0, head_bn="frozen")
    state = train_steps("nettailor_student", frozen).state_dict()
    assert torch.equal(state["head.0.weight"], frozen.pretrained["head.0.weight"])


@pytest.mark.parametrize("backbone", ["resnet18", "resnet34", "resnet50"])
def test_student_and_pruning_on_torchvision_resnets(backbone: str) -> None:
    ctx = random_context("nettailor_student", backbone, 0.125, 32, teacher_weight=0.0)
    model = train_steps("nettailor_student", ctx)
    assert model.logits["0"].grad is not None
    bottleneck = backbone == "resnet50"
    proxy = model.proxies["1_1"]
    assert sum(isinstance(m, nn.Conv2d) for m in proxy) == (2 if bottleneck else 1)
    full = count_macs(model, 32)
    model.restrict(choose_paths(model, remove_blocks=3, threshold=0.05)[0])
    assert sum(p[0] == MAIN for paths in model.paths for p in paths) <= len(model.paths) - 3
    assert count_macs(model, 32) < full
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, ctx.num_classes)


@pytest.mark.parametrize("size", [32, 36, 38])
def test_proxies_match_the_blocks_at_odd_resolutions(size: int) -> None:
    """Uncropped 36 px inputs (GTSRB, Omniglot, SVHN at the small scale) reach 9 -> 5 px: every proxy's
    pooling must land on its block's output size."""
    torch.manual_seed(0)
    model = TailoredNet(build_backbone(BackboneSpec("resnet26", width=0.25), 5), 3, size, "backbone")
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 5)
    assert proxy_stride(9, 5) == 2 and proxy_stride(18, 5) == 4 and proxy_stride(36, 5) == 8


def test_a_candidate_that_learned_nothing_is_never_within_the_tolerance(tmp_path: Path) -> None:
    """A network at chance, or at the share of the most common val class (one that predicts one class), is
    not "within the tolerance" even of a teacher as bad; a real one close to the teacher is."""
    from vdd_bench.methods.nettailor import select

    from vdd_bench.method import TaskContext

    def fake_run(name: str, val_acc: float, majority: float | None = None, kept: int = 12) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        metrics = {"val_acc": val_acc, **({"val_majority_acc": majority} if majority is not None else {})}
        config = RunConfig("b", "custom", "t", name.replace("_", "-"), {}, {}, 32)
        accounting = Accounting(
            params_total=kept, params_shared=0, params_task=1, params_task_equiv=1.0, macs=kept
        )
        report = {"kept_blocks": kept, "kept_proxies": 0}
        record = make_record(config, metrics, accounting=accounting, method_report=report)
        (folder / "record.json").write_text(json.dumps(record.to_json()))
        return folder

    def choice(teacher: float, candidates: dict[int, tuple[float, float | None]]) -> dict:
        for folder in tmp_path.iterdir():
            shutil.rmtree(folder)
        inputs = {"teacher": fake_run("teacher", teacher), "student": fake_run("student", teacher)}
        for k, (acc, majority) in candidates.items():
            inputs[f"candidate_{k}"] = fake_run(f"candidate_{k}", acc, majority, kept=12 - k)
        ctx = TaskContext("t", 10, BackboneSpec("resnet26"), None, 10, {"tolerance": 0.5}, 32, inputs)
        return select(ctx)

    real = choice(50.0, {0: (50.5, 12.0), 6: (49.8, 12.0)})
    assert real["within_tolerance"] and real["chosen"] == 6
    at_chance = choice(10.0, {0: (10.0, None), 6: (10.0, None)})  # 10 classes: 10% is chance
    assert not at_chance["within_tolerance"] and [c["learned_nothing"] for c in at_chance["candidates"]] == [
        True,
        True,
    ]
    one_class = choice(30.2, {0: (31.0, 30.0), 6: (30.0, 30.0)})  # k = 6 predicts the majority class
    assert one_class["within_tolerance"] and one_class["chosen"] == 0
