"""Batched augmentation of uint8 image batches (the training data path; no per-image Python loop).

Images arrive as the stored centre squares (see `vdd_bench.images`), uint8 [B, 3, S, S] on any device, and
leave as normalised float32 [B, 3, crop, crop]. Two recipes:

`residual_adapters` (default), as in Rebuffi et al.'s code: tasks whose facts say no random crop (gtsrb,
omniglot, svhn) see the whole stored square in training and test, never flipped; every other task, official
or not, gets a random `crop` (64 of 72, i.e. round(S * 64 / 72)) plus a horizontal flip in training and the
centre `crop` at test time.

`nettailor` (an option), as NetTailor's decathlon data loader does, with pad = round(8 * S / 72):
- aircraft, cifar100, daimlerpedcls: reflect-pad, random crop of S, flip; test: the whole square.
- gtsrb: reflect-pad, random crop of S, colour jitter (brightness 0.5, contrast 0.2, saturation 0.2),
  no flip; test: the whole square.
- dtd: random crop of S (the whole square here) + flip; test: the whole square.
- svhn, omniglot: random crop of `crop`, no flip; test: centre `crop`.
- every other task: random crop of `crop` + flip; test: centre `crop`.
NetTailor squashes images to 72x72 before padding where we crop the centre square, and its colour jitter
applies the three adjustments in random order where we apply brightness, contrast, saturation in turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tasks.generic import task_facts
from vdd_bench.errors import VddError

RECIPES = ("residual_adapters", "nettailor")
_NETTAILOR_PADDED = ("aircraft", "cifar100", "daimlerpedcls", "gtsrb")
_NETTAILOR_NO_FLIP = ("gtsrb", "svhn", "omniglot")
_NETTAILOR_JITTER = {"gtsrb": 0.5}
_JITTER_CONTRAST_SATURATION = 0.4  # contrast and saturation strength relative to brightness (0.2 / 0.5)
_GRAY = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class AugmentSpec:
    stored: int  # size of the stored square (72 for the decathlon)
    crop: int  # network input size (64 for the decathlon)
    random_crop: bool
    flip: bool
    pad: int = 0  # reflect padding before the random crop (NetTailor recipe)
    jitter: float = 0.0  # brightness strength; contrast and saturation use 0.4 * jitter (NetTailor's gtsrb)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)


def make_spec(
    recipe: str, task: str, stored: int, mean: Sequence[float], std: Sequence[float]
) -> AugmentSpec:
    """The augmentation of `task` under `recipe` for images stored as `stored`-pixel squares."""
    crop = round(stored * 64 / 72)
    norm = {
        "mean": (float(mean[0]), float(mean[1]), float(mean[2])),
        "std": (float(std[0]), float(std[1]), float(std[2])),
    }
    if recipe == "residual_adapters":
        facts = task_facts(task)
        if facts is not None and not facts.random_crop:
            return AugmentSpec(stored, stored, random_crop=False, flip=facts.flip, **norm)
        return AugmentSpec(stored, crop, random_crop=True, flip=True, **norm)
    if recipe == "nettailor":
        flip = task not in _NETTAILOR_NO_FLIP
        if task in _NETTAILOR_PADDED:
            pad = round(8 * stored / 72)
            return AugmentSpec(
                stored, stored, True, flip, pad=pad, jitter=_NETTAILOR_JITTER.get(task, 0.0), **norm
            )
        return AugmentSpec(stored, stored if task == "dtd" else crop, True, flip, **norm)
    raise VddError(f"unknown augmentation recipe {recipe!r}; use one of {', '.join(RECIPES)}")


def augment_batch(
    images: torch.Tensor, spec: AugmentSpec, train: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """uint8 [B, 3, stored, stored] -> normalised float32 [B, 3, crop, crop] on the same device.

    Test mode is the deterministic centre crop. In train mode every random number comes from `generator`
    (the default CPU generator when None), drawn in a fixed order: crop offsets, flips, jitter factors.
    """
    if (
        images.dtype != torch.uint8
        or images.ndim != 4
        or tuple(images.shape[1:]) != (3, spec.stored, spec.stored)
    ):
        raise ValueError(
            f"expected uint8 [B, 3, {spec.stored}, {spec.stored}], got {images.dtype} {tuple(images.shape)}"
        )
    x, owned = images, False  # owned: x is a fresh tensor that may be changed in place
    if train and spec.random_crop:
        if spec.pad:
            x = F.pad(x.float(), (spec.pad,) * 4, mode="reflect")
        top = _randint(x.shape[-1] - spec.crop + 1, len(x), generator).to(x.device)
        left = _randint(x.shape[-1] - spec.crop + 1, len(x), generator).to(x.device)
        if spec.flip and x.device.type == "cpu":  # one copy: each window read in its final orientation
            flip = (_rand(len(x), generator) < 0.5).to(x.device)
            x, owned = crop_at(x, top, left, spec.crop, flip), True
        else:
            x, owned = crop_at(x, top, left, spec.crop), True
    else:
        offset = int(round((spec.stored - spec.crop) / 2.0))  # torchvision's CenterCrop rounding
        x = x[..., offset : offset + spec.crop, offset : offset + spec.crop]
    if train and spec.flip and not (spec.random_crop and x.device.type == "cpu"):
        flip = (_rand(len(x), generator) < 0.5).to(x.device)
        x = flip_where(x, flip, inplace=owned)
    # exact and in place: the same float operations as (x / 255 - mean) / std, without temporaries
    x = x.to(torch.float32, memory_format=torch.contiguous_format, copy=True)
    x.div_(255.0)
    if train and spec.jitter > 0:
        x = _jitter(x, spec.jitter, generator)
    mean = torch.tensor(spec.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std)


def take(images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """images[index] along the first dimension. On CPU through numpy's take, which copies whole images
    (several times faster than torch's advanced indexing of uint8 tensors)."""
    if images.device.type == "cpu" and index.device.type == "cpu":
        return torch.from_numpy(np.take(images.numpy(), index.numpy(), axis=0))
    return images.index_select(0, index.to(images.device))


def flip_where(x: torch.Tensor, flip: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """x with the images where `flip` is true mirrored horizontally (exact for any dtype); a copy unless
    `inplace`."""
    out = x if inplace else x.clone()
    chosen = flip.nonzero().squeeze(1)
    if len(chosen):
        out[chosen] = out.index_select(0, chosen).flip(-1)
    return out


def crop_at(
    x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int, flip: torch.Tensor | None = None
) -> torch.Tensor:
    """x[i, :, top[i]:top[i]+size, left[i]:left[i]+size] for every i (mirrored where `flip`, CPU only),
    without a per-image loop.

    On CPU: fancy-indexed copies out of numpy's strided views of every window (whole rows at a time, an
    order of magnitude faster than gathers); a flipped crop is the window of the mirrored view at the
    mirrored offset, so cropping and flipping cost one copy. Elsewhere: two batched gathers."""
    if x.device.type == "cpu" and top.device.type == "cpu" and left.device.type == "cpu":
        from numpy.lib.stride_tricks import sliding_window_view

        array, top_, left_ = x.numpy(), top.numpy(), left.numpy()
        windows = sliding_window_view(array, (size, size), axis=(2, 3))  # [B, C, H', W', size, size]
        if flip is None or not bool(flip.any()):
            return torch.from_numpy(windows[np.arange(len(x)), :, top_, left_])
        mirrored = sliding_window_view(array[..., ::-1], (size, size), axis=(2, 3))
        flip_ = flip.numpy()
        out = np.empty((len(x), x.shape[1], size, size), dtype=array.dtype)
        keep, turn = np.nonzero(~flip_)[0], np.nonzero(flip_)[0]
        out[keep] = windows[keep, :, top_[keep], left_[keep]]
        out[turn] = mirrored[turn, :, top_[turn], x.shape[-1] - size - left_[turn]]
        return torch.from_numpy(out)
    if flip is not None:
        raise ValueError("crop_at flips on CPU only; use flip_where on other devices")
    b, c, _, w = x.shape
    steps = torch.arange(size, device=x.device)
    rows = (top[:, None] + steps)[:, None, :, None].expand(b, c, size, w)
    x = x.gather(2, rows)
    cols = (left[:, None] + steps)[:, None, None, :].expand(b, c, size, size)
    return x.gather(3, cols)


def _device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _randint(high: int, n: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randint(0, high, (n,), generator=generator, device=_device(generator))


def _rand(n: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=_device(generator))


def _jitter(x: torch.Tensor, strength: float, generator: torch.Generator | None) -> torch.Tensor:
    """torchvision-style brightness, contrast and saturation jitter with per-image factors, on 0-1 images."""

    def factors(s: float) -> torch.Tensor:
        low, high = max(0.0, 1.0 - s), 1.0 + s
        return (low + (high - low) * _rand(len(x), generator)).to(x.device)[:, None, None, None]

    brightness = factors(strength)
    contrast = factors(strength * _JITTER_CONTRAST_SATURATION)
    saturation = factors(strength * _JITTER_CONTRAST_SATURATION)
    weights = torch.tensor(_GRAY, device=x.device).view(1, 3, 1, 1)
    x = (x * brightness).clamp(0, 1)
    gray_mean = (x * weights).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    x = (contrast * x + (1 - contrast) * gray_mean).clamp(0, 1)
    gray = (x * weights).sum(1, keepdim=True)
    return (saturation * x + (1 - saturation) * gray).clamp(0, 1)
