"""Backbones: the decathlon ResNet-26 and torchvision's ResNet-18/34/50, all exposed the same way.

Every backbone is a :class:`Backbone`: ``stem -> blocks (one residual block each) -> head -> classifier``,
so methods that work block by block (NetTailor's proxies, adapters) see one layout for every family.

Width multiplier (for small, fast runs): ResNet-26 scales its stem (32) and stage widths (64/128/256);
ResNet-18/34/50 scale the stem (64) and the stage widths (64/128/256/512, times 4 after a bottleneck).
At width 1 the torchvision nets are built by torchvision's own constructors; at other widths the same
layout is assembled from torchvision's ``BasicBlock`` / ``Bottleneck`` with the same initialisation.
Channel counts are ``max(1, round(c * width))``.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vdd_bench.config import BackboneSpec
from vdd_bench.errors import VddError
from vdd_bench.safeload import load_tensors

CHECKPOINT_FORMAT = "vdd-backbone/1"

_TORCHVISION_LAYERS = {"resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3], "resnet50": [3, 4, 6, 3]}


class Backbone(nn.Module):
    """stem -> blocks (ordered, one residual block each) -> head (features to a vector) -> classifier."""

    def __init__(
        self,
        spec: BackboneSpec,
        stem: nn.Module,
        blocks: list[nn.Module],
        head: nn.Module,
        classifier: nn.Linear,
        block_strides: list[int],
        block_channels: list[tuple[int, int]],
    ) -> None:
        super().__init__()
        self.spec = spec
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)
        self.head = head
        self.classifier = classifier
        self.feature_dim = classifier.in_features
        self.block_strides = list(block_strides)
        self.block_channels = list(block_channels)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """A new linear classifier (PyTorch default init, as both families use) on the old one's device."""
        old = self.classifier.weight
        self.classifier = nn.Linear(self.feature_dim, num_classes, device=old.device, dtype=old.dtype)


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


# ----------------------------------------------------------------------------------------- ResNet-26


class _PadShortcut(nn.Module):
    """Parameter-free shortcut: 2x2 average pooling when strided, zero-padded extra channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.extra = out_channels - in_channels
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            # ceil_mode keeps the size equal to the strided conv's on odd inputs (no effect on even ones).
            x = F.avg_pool2d(x, self.stride, ceil_mode=True)
        if self.extra:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra))
        return x


class _BasicBlock26(nn.Module):
    """conv3x3(stride)-BN-ReLU-conv3x3-BN, plus shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        needs_shortcut = stride != 1 or in_channels != out_channels
        self.shortcut = _PadShortcut(in_channels, out_channels, stride) if needs_shortcut else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


def build_resnet26(spec: BackboneSpec, num_classes: int, blocks_per_stage: int = 4) -> Backbone:
    """Rebuffi et al.'s ResNet-26 (three stages of ``blocks_per_stage`` blocks); with one block per stage it
    is also the small ResNet SpotTune's policy network is."""
    stem_width = _scaled(32, spec.width)
    stem: list[nn.Module] = [nn.Conv2d(3, stem_width, 3, 1, 1, bias=False), nn.BatchNorm2d(stem_width)]
    if spec.stem_relu:
        stem.append(nn.ReLU(inplace=True))
    blocks, strides, channels = [], [], []
    in_ch = stem_width
    for stage_width in (64, 128, 256):
        out_ch = _scaled(stage_width, spec.width)
        for i in range(blocks_per_stage):
            stride = 2 if i == 0 else 1
            blocks.append(_BasicBlock26(in_ch, out_ch, stride))
            strides.append(stride)
            channels.append((in_ch, out_ch))
            in_ch = out_ch
    head_relu: list[nn.Module] = [nn.ReLU(inplace=True)] if spec.head_relu else []
    head = nn.Sequential(nn.BatchNorm2d(in_ch), *head_relu, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    model = Backbone(
        spec, nn.Sequential(*stem), blocks, head, nn.Linear(in_ch, num_classes), strides, channels
    )
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / k))
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


# ---------------------------------------------------------------------------- torchvision ResNets


def _torchvision_scaled(name: str, width: float, num_classes: int) -> nn.Module:
    """torchvision's ResNet layout (conv1, bn1, relu, maxpool, layer1-4, avgpool, fc) at another width."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    block = Bottleneck if name == "resnet50" else BasicBlock
    net = nn.Module()
    in_ch = _scaled(64, width)
    net.conv1 = nn.Conv2d(3, in_ch, 7, 2, 3, bias=False)
    net.bn1 = nn.BatchNorm2d(in_ch)
    net.relu = nn.ReLU(inplace=True)
    net.maxpool = nn.MaxPool2d(3, 2, 1)
    for stage, (planes, n) in enumerate(zip((64, 128, 256, 512), _TORCHVISION_LAYERS[name], strict=True)):
        planes = _scaled(planes, width)
        out_ch = planes * block.expansion
        layer = []
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            downsample = None
            if stride != 1 or in_ch != out_ch:
                downsample = nn.Sequential(
                    nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
                )
            layer.append(block(in_ch, planes, stride, downsample))
            in_ch = out_ch
        setattr(net, f"layer{stage + 1}", nn.Sequential(*layer))
    net.avgpool = nn.AdaptiveAvgPool2d(1)
    net.fc = nn.Linear(in_ch, num_classes)
    for m in net.modules():  # torchvision's ResNet initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return net


def _build_torchvision(spec: BackboneSpec, num_classes: int) -> Backbone:
    if spec.width == 1.0:
        import torchvision.models

        net = getattr(torchvision.models, spec.name)(weights=None, num_classes=num_classes)
    else:
        net = _torchvision_scaled(spec.name, spec.width, num_classes)
    blocks = [b for layer in (net.layer1, net.layer2, net.layer3, net.layer4) for b in layer]
    last_conv = "conv3" if spec.name == "resnet50" else "conv2"
    channels = [(b.conv1.in_channels, getattr(b, last_conv).out_channels) for b in blocks]
    return Backbone(
        spec,
        nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool),
        blocks,
        nn.Sequential(net.avgpool, nn.Flatten(1)),
        net.fc,
        [b.stride for b in blocks],
        channels,
    )


def build_backbone(spec: BackboneSpec, num_classes: int) -> Backbone:
    if not isinstance(num_classes, int) or num_classes < 1:
        raise VddError(f"num_classes must be a positive integer, got {num_classes!r}")
    if spec.name == "resnet26":
        return build_resnet26(spec, num_classes)
    return _build_torchvision(spec, num_classes)


# ------------------------------------------------------------------------------------ checkpoints

_PLAIN = (str, int, float, bool, type(None))


def _check_plain(value: object, where: str) -> None:
    """Refuse what ``torch.load(weights_only=True)`` could not read back."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str | int):
                raise VddError(f"checkpoint {where}: key {k!r} is not a str or int")
            _check_plain(v, f"{where}.{k}")
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]")
    elif not isinstance(value, (*_PLAIN, Tensor)):
        raise VddError(f"checkpoint {where}: {type(value).__name__} cannot be stored (use plain values)")


def save_checkpoint(path: Path, model: Backbone, meta: dict) -> None:
    """Write atomically: a temporary file in the same folder, then ``os.replace``."""
    path = Path(path)
    _check_plain(meta, "meta")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "spec": model.spec.to_dict(),
        "num_classes": model.classifier.out_features,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": meta,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_checkpoint(path: Path, check: bool = True) -> dict:
    path = Path(path)
    if not path.is_file():
        raise VddError(f"backbone checkpoint {path} does not exist")
    payload = load_tensors(path, "backbone checkpoint")
    if not (isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT):
        raise VddError(f"{path} is not a {CHECKPOINT_FORMAT} backbone checkpoint")
    missing = {"spec", "num_classes", "state_dict", "meta"} - set(payload)
    if missing:
        raise VddError(f"backbone checkpoint {path} lacks {', '.join(sorted(missing))}")
    try:
        payload["spec"] = BackboneSpec.from_dict(payload["spec"])
    except (VddError, TypeError, AttributeError) as e:
        raise VddError(f"backbone checkpoint {path} has a bad spec: {e}") from e
    if check:
        _check_fits(path, payload["spec"], payload["num_classes"], payload["state_dict"])
    return payload


def _check_fits(path: Path, spec: BackboneSpec, num_classes: object, state: object) -> None:
    """The weights must be those of the architecture the checkpoint names, with a head of `num_classes`
    outputs: compared key by key and shape by shape with the net built on the meta device (no memory)."""
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise VddError(f"backbone checkpoint {path}: num_classes {num_classes!r} is not a positive integer")
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise VddError(f"backbone checkpoint {path}: state_dict is not a mapping of names to tensors")
    expected = _state_shapes(spec, num_classes)
    found = {k: tuple(v.shape) for k, v in state.items()}
    wrong = sorted(k for k in expected if k in found and found[k] != expected[k])
    if set(found) == set(expected) and wrong and all(k.startswith("classifier.") for k in wrong):
        raise VddError(
            f"backbone checkpoint {path}: its classifier has {found['classifier.weight'][0]} outputs, "
            f"its num_classes says {num_classes}: the file is inconsistent; save it again (vdd pretrain)"
        )
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    if missing or extra or wrong:
        what = [
            f"{label} {', '.join(keys[:2])}" + (f" (+{len(keys) - 2} more)" if len(keys) > 2 else "")
            for label, keys in (("missing", missing), ("unexpected", extra), ("other shapes", wrong))
            if keys
        ]
        raise VddError(
            f"backbone checkpoint {path} says {spec} but holds the weights of another architecture "
            f"({'; '.join(what)}): pass a checkpoint saved for {spec.name} at width {spec.width}"
        )


@functools.lru_cache(maxsize=16)
def _state_shapes(spec: BackboneSpec, num_classes: int) -> dict[str, tuple[int, ...]]:
    """The weight shapes of `spec` with a head of `num_classes`, from the net built on the meta device (no
    memory); kept, since every run of a sweep checks its checkpoint and a meta build costs a third of a
    second on a small CPU."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in build_backbone(spec, num_classes).state_dict().items()}


def load_checkpoint(path: Path, check: bool = True) -> tuple[BackboneSpec, dict[str, Tensor], dict]:
    """The checkpoint's architecture, weights and meta; `check` (the default) makes sure the weights are
    those of that architecture (planning, which reads the spec only, skips it: it costs an import)."""
    payload = _read_checkpoint(path, check)
    return payload["spec"], payload["state_dict"], payload["meta"]


def load_weights(model: nn.Module, state: dict[str, Tensor], source: Path | str) -> nn.Module:
    """`model.load_state_dict(state)`, refusing in one line naming `source` weights that do not fit (a
    model.pt of a task with another class count, or of another architecture)."""
    own = model.state_dict()
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    if wrong or missing or extra:

        def some(keys: list[str]) -> str:
            return keys[0] + (f" (+{len(keys) - 1} more)" if len(keys) > 1 else "")

        parts = [f"{k} is {tuple(state[k].shape)} there, {tuple(own[k].shape)} here" for k in wrong[:1]]
        parts += [f"{len(wrong)} tensors of other shapes"] if len(wrong) > 1 else []
        parts += [f"missing {some(missing)}"] if missing else []
        parts += [f"unexpected {some(extra)}"] if extra else []
        raise VddError(
            f"{source}: the weights do not fit this model ({'; '.join(parts)}): they belong to another task "
            "(class count) or architecture"
        )
    model.load_state_dict(state)
    return model


def load_pretrained(path: Path, num_classes: int, expect: BackboneSpec | None = None) -> Backbone:
    """Build the checkpoint's backbone with its weights; a new classifier unless the class count matches.

    ``expect`` must equal the checkpoint's spec exactly (name, width and stem_relu).
    """
    payload = _read_checkpoint(path)
    spec = payload["spec"]
    if expect is not None and expect != spec:
        raise VddError(f"backbone checkpoint {path} holds {spec}, but {expect} was expected")
    model = build_backbone(spec, int(payload["num_classes"]))
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        raise VddError(f"backbone checkpoint {path} does not fit {spec}: {e}") from e
    if num_classes != payload["num_classes"]:
        model.reset_classifier(num_classes)
    return model
