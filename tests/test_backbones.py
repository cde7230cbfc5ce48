from __future__ import annotations

import pytest
import torch
from torch import nn

from vdd_bench.backbones import (
    build_backbone,
    load_checkpoint,
    load_pretrained,
    save_checkpoint,
)
from vdd_bench.config import BACKBONE_NAMES, BackboneSpec
from vdd_bench.errors import VddError


def _blocks_output_sizes(model, size):
    sizes = []
    hooks = [b.register_forward_hook(lambda m, i, o: sizes.append(o.shape[-1])) for b in model.blocks]
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, size, size))
    for h in hooks:
        h.remove()
    return sizes


def test_resnet26_layout_at_64px():
    model = build_backbone(BackboneSpec("resnet26"), 1000)
    assert len(model.blocks) == 12
    assert model.block_strides == [2, 1, 1, 1] * 3
    assert model.block_channels[0] == (32, 64) and model.block_channels[4] == (64, 128)
    assert model.block_channels[8] == (128, 256) and model.feature_dim == 256
    assert _blocks_output_sizes(model, 64) == [32] * 4 + [16] * 4 + [8] * 4
    n = sum(p.numel() for p in model.parameters())
    assert 5.9e6 <= n <= 6.2e6
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


def test_resnet26_shortcuts_have_no_parameters_and_pad_channels():
    model = build_backbone(BackboneSpec("resnet26"), 10)
    for block in model.blocks:
        assert sum(p.numel() for p in block.shortcut.parameters()) == 0
    first = model.blocks[0]
    x = torch.randn(1, 32, 8, 8)
    y = first.shortcut(x)
    assert y.shape == (1, 64, 4, 4)
    assert torch.allclose(y[:, :32], nn.functional.avg_pool2d(x, 2)) and not y[:, 32:].any()


def test_resnet26_odd_input_still_runs():
    model = build_backbone(BackboneSpec("resnet26", width=0.25), 3).eval()
    assert model(torch.randn(1, 3, 36, 36)).shape == (1, 3)  # 36 -> 18 -> 9 -> 5


def test_resnet26_init():
    model = build_backbone(BackboneSpec("resnet26"), 10)
    conv = model.blocks[8].conv2  # 256 -> 256, 3x3: std sqrt(2 / (9 * 256))
    assert conv.weight.std().item() == pytest.approx((2 / (9 * 256)) ** 0.5, rel=0.05)
    bn = model.head[0]
    assert torch.equal(bn.weight, torch.ones(256)) and not bn.bias.any()


def test_stem_relu_changes_the_forward():
    torch.manual_seed(0)
    plain = build_backbone(BackboneSpec("resnet26", width=0.25), 5).eval()
    relu = build_backbone(BackboneSpec("resnet26", width=0.25, stem_relu=True), 5).eval()
    relu.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert (plain.stem(x) < 0).any() and not (relu.stem(x) < 0).any()
    assert not torch.allclose(plain(x), relu(x))
    with pytest.raises(VddError):
        BackboneSpec("resnet34", stem_relu=True)


def test_head_relu_option_and_the_ids_of_existing_runs():
    torch.manual_seed(0)
    plain = build_backbone(BackboneSpec("resnet26", width=0.25), 5).eval()
    spec = BackboneSpec("resnet26", width=0.25, stem_relu=True, head_relu=False)
    nettailor = build_backbone(spec, 5).eval()
    nettailor.load_state_dict(plain.state_dict())  # the same tensors: only the ReLUs differ
    last_block = torch.randn(2, 64, 4, 4)
    assert (nettailor.head(last_block) < 0).any()  # pooled without a ReLU after the final BN
    assert not (plain.head(last_block) < 0).any()
    assert BackboneSpec.from_dict(spec.to_dict()) == spec
    # the default is left out of the dict that run ids hash, so ids made before the option stay valid
    assert BackboneSpec("resnet26").to_dict() == {"name": "resnet26", "width": 1.0, "stem_relu": False}
    with pytest.raises(VddError):
        BackboneSpec("resnet18", head_relu=False)


def test_width_shrinks_channels():
    small = build_backbone(BackboneSpec("resnet26", width=0.25), 10)
    assert small.block_channels[0] == (8, 16) and small.feature_dim == 64
    assert sum(p.numel() for p in small.parameters()) < 0.1 * 6e6
    assert _blocks_output_sizes(small, 32) == [16] * 4 + [8] * 4 + [4] * 4


@pytest.mark.parametrize(
    "name, n_blocks, feat", [("resnet18", 8, 512), ("resnet34", 16, 512), ("resnet50", 16, 2048)]
)
def test_torchvision_nets_expose_their_blocks(name, n_blocks, feat):
    import torchvision.models

    model = build_backbone(BackboneSpec(name), 7)
    assert len(model.blocks) == n_blocks and model.feature_dim == feat
    assert model.block_strides.count(2) == 3
    reference = getattr(torchvision.models, name)(weights=None, num_classes=7)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())
    # same tensors in the same order: torchvision weights load by position
    assert [t.shape for t in model.state_dict().values()] == [
        t.shape for t in reference.state_dict().values()
    ]


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_torchvision_nets_at_a_width(name):
    from vdd_bench.backbones import _torchvision_scaled

    full = _torchvision_scaled(name, 1.0, 5)  # the width path at width 1 is torchvision's layout
    import torchvision.models

    reference = getattr(torchvision.models, name)(weights=None, num_classes=5)
    assert [t.shape for t in full.state_dict().values()] == [t.shape for t in reference.state_dict().values()]
    small = build_backbone(BackboneSpec(name, width=0.25), 5)
    assert small.block_channels[0][0] == 16
    assert small(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def test_spec_round_trip_and_validation():
    spec = BackboneSpec("resnet26", 0.5, True)
    assert BackboneSpec.from_dict(spec.to_dict()) == spec
    assert set(BACKBONE_NAMES) == {"resnet26", "resnet18", "resnet34", "resnet50"}
    for bad in ({"name": "vgg16"}, {"name": "resnet26", "width": 0}, {"name": "resnet26", "depth": 3}):
        with pytest.raises(VddError):
            BackboneSpec.from_dict(bad)


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_backbone(BackboneSpec("resnet26", width=0.25), 10)
    model.train()(torch.randn(4, 3, 32, 32))  # move the BN running statistics off their init
    path = tmp_path / "ckpt" / "backbone.pt"
    save_checkpoint(path, model, {"epochs": 3, "acc": 51.5, "tags": ["a"], "note": None})
    assert [p.name for p in path.parent.iterdir()] == ["backbone.pt"]
    spec, state, meta = load_checkpoint(path)
    assert spec == model.spec and meta["epochs"] == 3 and meta["tags"] == ["a"]
    loaded = load_pretrained(path, 10, expect=BackboneSpec("resnet26", width=0.25))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.eval()(x), loaded.eval()(x))


def test_load_pretrained_resets_the_classifier(tmp_path):
    model = build_backbone(BackboneSpec("resnet26", width=0.25), 10)
    save_checkpoint(tmp_path / "b.pt", model, {})
    loaded = load_pretrained(tmp_path / "b.pt", 3)
    assert loaded.classifier.out_features == 3
    assert torch.equal(loaded.blocks[0].conv1.weight, model.blocks[0].conv1.weight)


def test_load_pretrained_refuses_another_architecture(tmp_path):
    save_checkpoint(tmp_path / "b.pt", build_backbone(BackboneSpec("resnet26", width=0.25), 10), {})
    with pytest.raises(VddError, match=r"resnet26\(width=0.25\).*resnet18"):
        load_pretrained(tmp_path / "b.pt", 10, expect=BackboneSpec("resnet18"))


def test_bad_checkpoints_raise_naming_the_file(tmp_path):
    path = tmp_path / "b.pt"
    save_checkpoint(path, build_backbone(BackboneSpec("resnet26", width=0.25), 10), {})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(VddError, match="b.pt"):
        load_checkpoint(path)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(VddError, match="other.pt"):
        load_pretrained(other, 10)
    with pytest.raises(VddError, match="absent.pt"):
        load_checkpoint(tmp_path / "absent.pt")


def test_meta_must_be_plain(tmp_path):
    with pytest.raises(VddError):
        save_checkpoint(
            tmp_path / "b.pt", build_backbone(BackboneSpec("resnet26", width=0.25), 2), {"x": object()}
        )
    assert not list(tmp_path.iterdir())
