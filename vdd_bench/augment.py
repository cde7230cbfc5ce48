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
Under `nettailor`, aircraft, cifar100, daimlerpedcls and gtsrb are read squashed (the whole image resized
to S x S without keeping its aspect ratio, at training and test time, as NetTailor's loaders do; see
`geometry`); every other task and recipe reads the centre square. NetTailor's colour jitter applies the
three adjustments in random order where we apply brightness, contrast, saturation in turn.

A batch is made in two steps: `draw` takes the batch's random numbers and resolves them into pixel maps
(which stored row and column every output pixel comes from: crop, reflect padding and flip in one), and
`apply` reads the pixels through those maps and normalises them in one pass (on the CPU a compiled kernel,
elsewhere tensor gathers). Normalisation is ``x * (1 / (255 std)) - mean / std`` in float32, within 5e-7 of
torchvision's ``Normalize(mean, std)(ToTensor()(x))``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vdd_bench.errors import VddError
from vdd_bench.tasks.generic import task_facts

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


def geometry(recipe: str, task: str) -> str:
    """How `task`'s images are stored for `recipe`: "squash" for the tasks NetTailor's loaders resize to a
    square without keeping the aspect ratio, else "square" (`vdd_bench.images`)."""
    return "squash" if recipe == "nettailor" and task in _NETTAILOR_PADDED else "square"


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


@dataclass(frozen=True)
class BatchDraw:
    """A batch's random draws resolved into pixel maps: output row y of image b is stored row rows[b, y],
    output column x is stored column cols[b, x] (reflect padding resolved, flips reversed), and the colour
    jitter factors [3, B] (brightness, contrast, saturation), or None."""

    rows: np.ndarray  # int64 [B, crop]
    cols: np.ndarray  # int64 [B, crop]
    jitter: torch.Tensor | None = None


def draw(spec: AugmentSpec, n: int, train: bool, generator: torch.Generator | None = None) -> BatchDraw:
    """The placement of `n` images. Test mode is the deterministic centre crop. In train mode every random
    number comes from `generator` (the default CPU generator when None), drawn in a fixed order: crop rows,
    crop columns, flips, jitter factors."""
    steps = np.arange(spec.crop)
    if train and spec.random_crop:
        span = spec.stored + 2 * spec.pad - spec.crop + 1
        top = _randint(span, n, generator).cpu().numpy() - spec.pad
        left = _randint(span, n, generator).cpu().numpy() - spec.pad
    else:
        offset = int(round((spec.stored - spec.crop) / 2.0))  # torchvision's CenterCrop rounding
        top = left = np.full(n, offset)
    rows, cols = top[:, None] + steps, left[:, None] + steps
    if spec.pad:
        rows, cols = _reflect(rows, spec.stored), _reflect(cols, spec.stored)
    if train and spec.flip:
        flip = (_rand(n, generator) < 0.5).cpu().numpy()
        cols = np.where(flip[:, None], cols[:, ::-1], cols)
    jitter = _jitter_factors(spec.jitter, n, generator) if train and spec.jitter > 0 else None
    return BatchDraw(rows, cols, jitter)


def apply(
    images: torch.Tensor | np.ndarray,
    index: np.ndarray,
    batch: BatchDraw,
    spec: AugmentSpec,
    out: np.ndarray | None = None,
) -> torch.Tensor:
    """images[index] cropped, flipped, jittered and normalised as `batch` says: float32 [B, 3, crop, crop].

    `images` (uint8 [N, 3, stored, stored]) may be a numpy array (a memory-mapped cache, say): on the CPU
    the batch is made by the compiled kernel in one pass (`vdd_bench.crop_kernel`), into `out` when given;
    on another device by tensor gathers there. Both give the same bits."""
    _check(images, spec)
    index = np.asarray(index, dtype=np.int64)
    if len(index) and (index.min() < 0 or index.max() >= len(images)):
        raise IndexError(f"image index out of range for {len(images)} images")
    if batch.jitter is None:
        scale, shift = _affine(spec, from_bytes=True)
    else:  # jitter works on 0-1 images: normalise after it
        scale, shift = np.full(3, 1 / 255.0, dtype=np.float32), np.zeros(3, dtype=np.float32)
    if isinstance(images, np.ndarray) or images.device.type == "cpu":
        array = images if isinstance(images, np.ndarray) else images.numpy()
        made = crop_normalise_cpu(array, index, batch.rows, batch.cols, scale, shift, out)
    else:
        made = crop_normalise_torch(images, index, batch.rows, batch.cols, scale, shift)
    if batch.jitter is not None:
        made = _jitter(made, batch.jitter)
        scale, shift = _affine(spec, from_bytes=False)
        made = made.mul_(torch.tensor(scale).to(made.device).view(1, 3, 1, 1))
        made = made.add_(torch.tensor(shift).to(made.device).view(1, 3, 1, 1))
    return made


def augment_batch(
    images: torch.Tensor, spec: AugmentSpec, train: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """uint8 [B, 3, stored, stored] -> normalised float32 [B, 3, crop, crop] on the same device (`draw`
    then `apply` on the whole batch)."""
    return apply(images, np.arange(len(images)), draw(spec, len(images), train, generator), spec)


def crop_normalise_cpu(
    array: np.ndarray,
    index: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    scale: np.ndarray,
    shift: np.ndarray,
    out: np.ndarray | None = None,
) -> torch.Tensor:
    """The compiled one-pass kernel (indices already checked), into `out` or a new array."""
    from vdd_bench.crop_kernel import crop_normalise  # numba's import and compile: only on this path

    shape = (len(index), array.shape[1], rows.shape[1], cols.shape[1])
    if out is None:
        out = np.empty(shape, dtype=np.float32)
    elif out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a contiguous float32 array of shape {shape}")
    crop_normalise(array, index, rows, cols, scale, shift, out)
    return torch.from_numpy(out)


def crop_normalise_torch(
    images: torch.Tensor,
    index: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    scale: np.ndarray,
    shift: np.ndarray,
) -> torch.Tensor:
    """The same batch with tensor operations on the images' device: one gather, a multiply and an add."""
    device = images.device
    picked = images[
        torch.from_numpy(index).to(device)[:, None, None],
        :,
        torch.from_numpy(np.ascontiguousarray(rows)).to(device)[:, :, None],
        torch.from_numpy(np.ascontiguousarray(cols)).to(device)[:, None, :],
    ]  # [B, crop, crop, 3]: the advanced indices come first
    out = picked.permute(0, 3, 1, 2).to(torch.float32, memory_format=torch.contiguous_format)
    out = out.mul_(torch.tensor(scale).to(device).view(1, 3, 1, 1))
    return out.add_(torch.tensor(shift).to(device).view(1, 3, 1, 1))


def take(images: torch.Tensor | np.ndarray, index: torch.Tensor | np.ndarray) -> torch.Tensor:
    """images[index] along the first dimension, on the CPU, through numpy's take (whole images at a time,
    several times faster than torch's advanced indexing of uint8 tensors)."""
    array = images if isinstance(images, np.ndarray) else images.numpy()
    chosen = index if isinstance(index, np.ndarray) else index.numpy()
    return torch.from_numpy(np.take(array, chosen, axis=0))


def _check(images: torch.Tensor | np.ndarray, spec: AugmentSpec) -> None:
    if (
        images.dtype not in (torch.uint8, np.uint8)
        or images.ndim != 4
        or tuple(images.shape[1:]) != (3, spec.stored, spec.stored)
    ):
        raise ValueError(
            f"expected uint8 [B, 3, {spec.stored}, {spec.stored}], got {images.dtype} {tuple(images.shape)}"
        )


@functools.lru_cache(maxsize=64)
def _affine(spec: AugmentSpec, from_bytes: bool) -> tuple[np.ndarray, np.ndarray]:
    """float32 (scale, shift) of the normalisation, from 0-255 values or from 0-1 values."""
    mean, std = np.asarray(spec.mean, dtype=np.float64), np.asarray(spec.std, dtype=np.float64)
    scale = (1.0 / ((255.0 if from_bytes else 1.0) * std)).astype(np.float32)
    shift = (-mean / std).astype(np.float32)
    scale.flags.writeable = shift.flags.writeable = False  # shared by every call (cached)
    return scale, shift


def _reflect(positions: np.ndarray, size: int) -> np.ndarray:
    """Positions of a reflect-padded axis (as torch's ``F.pad(mode="reflect")``) in the unpadded one."""
    positions = np.abs(positions)
    return np.where(positions > size - 1, 2 * (size - 1) - positions, positions)


def _device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _randint(high: int, n: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randint(0, high, (n,), generator=generator, device=_device(generator))


def _rand(n: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=_device(generator))


def _jitter_factors(strength: float, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """[3, n] brightness, contrast and saturation factors, drawn in that order."""

    def factors(s: float) -> torch.Tensor:
        low, high = max(0.0, 1.0 - s), 1.0 + s
        return low + (high - low) * _rand(n, generator).cpu()

    strength_cs = strength * _JITTER_CONTRAST_SATURATION
    return torch.stack([factors(strength), factors(strength_cs), factors(strength_cs)])


def _jitter(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """torchvision-style brightness, contrast and saturation jitter with per-image factors, on 0-1 images."""
    brightness, contrast, saturation = (f.to(x.device)[:, None, None, None] for f in factors)
    weights = torch.tensor(_GRAY, device=x.device).view(1, 3, 1, 1)
    x = (x * brightness).clamp(0, 1)
    gray_mean = (x * weights).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    x = (contrast * x + (1 - contrast) * gray_mean).clamp(0, 1)
    gray = (x * weights).sum(1, keepdim=True)
    return (saturation * x + (1 - saturation) * gray).clamp(0, 1)
