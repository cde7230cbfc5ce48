from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision import transforms

from vdd_bench.augment import AugmentSpec, augment_batch, make_spec
from vdd_bench.benchmark import Benchmark
from vdd_bench.cache import load_split_images
from vdd_bench.errors import VddError

MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)


def _images(n: int = 6, size: int = 72) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return transforms.Normalize(MEAN, STD)(x.float() / 255.0)


def test_residual_adapters_specs() -> None:
    def spec(task: str, stored: int = 72) -> tuple:
        s = make_spec("residual_adapters", task, stored, MEAN, STD)
        return s.crop, s.random_crop, s.flip, s.pad, s.jitter

    assert spec("gtsrb") == spec("omniglot") == spec("svhn") == (72, False, False, 0, 0.0)
    assert spec("aircraft") == spec("ucf101") == spec("my-own-task") == (64, True, True, 0, 0.0)
    assert spec("cifar100", 36) == (32, True, True, 0, 0.0)
    assert make_spec("residual_adapters", "dtd", 72, MEAN, STD).mean == MEAN


def test_nettailor_specs() -> None:
    def spec(task: str, stored: int = 72) -> tuple:
        s = make_spec("nettailor", task, stored, MEAN, STD)
        return s.crop, s.random_crop, s.flip, s.pad, s.jitter

    assert spec("aircraft") == spec("cifar100") == spec("daimlerpedcls") == (72, True, True, 8, 0.0)
    assert spec("gtsrb") == (72, True, False, 8, 0.5)
    assert spec("gtsrb", 36) == (36, True, False, 4, 0.5)
    assert spec("svhn") == spec("omniglot") == (64, True, False, 0, 0.0)
    assert spec("dtd") == (72, True, True, 0, 0.0)
    assert spec("vgg-flowers") == spec("my-own-task") == (64, True, True, 0, 0.0)
    with pytest.raises(VddError, match="unknown augmentation recipe 'autoaugment'"):
        make_spec("autoaugment", "dtd", 72, MEAN, STD)


@pytest.mark.parametrize(("stored", "crop"), [(72, 64), (72, 72), (36, 32), (9, 6)])
def test_test_mode_is_torchvision_center_crop_and_normalize(stored: int, crop: int) -> None:
    images = _images(size=stored)
    spec = AugmentSpec(stored, crop, random_crop=True, flip=True, pad=2, jitter=0.5, mean=MEAN, std=STD)
    expected = transforms.Normalize(MEAN, STD)(transforms.CenterCrop(crop)(images.float() / 255.0))
    out = augment_batch(images, spec, train=False)
    assert out.dtype == torch.float32 and out.shape == (len(images), 3, crop, crop)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("pad", [0, 8])
def test_train_crops_and_flips_are_the_drawn_slices(pad: int) -> None:
    images = _images(n=16)
    spec = AugmentSpec(72, 64, random_crop=True, flip=True, pad=pad, mean=MEAN, std=STD)
    out = augment_batch(images, spec, train=True, generator=torch.Generator().manual_seed(7))
    # re-derive the draws in the documented order: rows, columns, flips
    gen = torch.Generator().manual_seed(7)
    padded = F.pad(images.float(), (pad,) * 4, mode="reflect") if pad else images
    span = padded.shape[-1] - 64 + 1
    top, left = torch.randint(0, span, (16,), generator=gen), torch.randint(0, span, (16,), generator=gen)
    flips = torch.rand(16, generator=gen) < 0.5
    assert 0 < int(flips.sum()) < 16
    for i in range(16):
        crop = padded[i, :, top[i] : top[i] + 64, left[i] : left[i] + 64]
        expected = _normalise(crop.flip(-1) if flips[i] else crop)
        torch.testing.assert_close(out[i], expected, rtol=0, atol=1e-6)


def test_train_mode_is_deterministic_given_the_generator() -> None:
    images = _images()
    spec = make_spec("nettailor", "gtsrb", 72, MEAN, STD)

    def run(seed: int) -> torch.Tensor:
        return augment_batch(images, spec, train=True, generator=torch.Generator().manual_seed(seed))

    torch.testing.assert_close(run(3), run(3), rtol=0, atol=0)
    assert not torch.equal(run(3), run(4))
    plain = dataclasses.replace(spec, jitter=0.0)
    jittered = augment_batch(images, spec, train=True, generator=torch.Generator().manual_seed(3))
    assert not torch.equal(
        jittered, augment_batch(images, plain, train=True, generator=torch.Generator().manual_seed(3))
    )
    low, high = (0 - torch.tensor(MEAN)) / torch.tensor(STD), (1 - torch.tensor(MEAN)) / torch.tensor(STD)
    assert (jittered >= low.view(1, 3, 1, 1) - 1e-5).all() and (
        jittered <= high.view(1, 3, 1, 1) + 1e-5
    ).all()


def test_rejects_wrong_input() -> None:
    spec = make_spec("residual_adapters", "dtd", 72, MEAN, STD)
    with pytest.raises(ValueError, match="expected uint8"):
        augment_batch(_images().float(), spec, train=False)
    with pytest.raises(ValueError, match="expected uint8"):
        augment_batch(_images(size=64), spec, train=False)


@pytest.mark.parametrize("task", ["daimlerpedcls", "mnist"])
def test_grayscale_mini_tasks_give_three_identical_channels(mini_root: Path, task: str) -> None:
    bench = Benchmark.open(mini_root)
    index = bench.split(task, "train")
    index = dataclasses.replace(index, files=index.files[:32], image_ids=index.image_ids[:32])
    images = torch.from_numpy(load_split_images(bench, index, 72))
    assert torch.equal(images[:, 0], images[:, 1]) and torch.equal(images[:, 0], images[:, 2])
    spec = make_spec("residual_adapters", task, 72, (0.3,) * 3, (0.2,) * 3)
    for train in (False, True):
        out = augment_batch(images, spec, train=train, generator=torch.Generator().manual_seed(0))
        assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    images = _images()
    spec = make_spec("nettailor", "gtsrb", 72, MEAN, STD)
    cpu = augment_batch(images, spec, train=True, generator=torch.Generator().manual_seed(5))
    cuda = augment_batch(images.cuda(), spec, train=True, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=0, atol=1e-5)
