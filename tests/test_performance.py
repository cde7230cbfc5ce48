"""The fast data path gives exactly what the plain tensor code gives, and `vdd bench` reports its ratios.

Speed itself is never asserted here: `vdd bench` measures it as ratios against baselines.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from vdd_bench import augment as aug
from vdd_bench.augment import augment_batch, crop_at, make_spec, take


def reference_augment(images, spec, train, generator=None):
    """The plain formulation (batched gathers, float flips, out-of-place normalisation)."""
    x = images
    if train and spec.random_crop:
        if spec.pad:
            x = F.pad(x.float(), (spec.pad,) * 4, mode="reflect")
        top = aug._randint(x.shape[-1] - spec.crop + 1, len(x), generator)
        left = aug._randint(x.shape[-1] - spec.crop + 1, len(x), generator)
        b, c, _, w = x.shape
        steps = torch.arange(spec.crop)
        x = x.gather(2, (top[:, None] + steps)[:, None, :, None].expand(b, c, spec.crop, w))
        x = x.gather(3, (left[:, None] + steps)[:, None, None, :].expand(b, c, spec.crop, spec.crop))
    else:
        offset = int(round((spec.stored - spec.crop) / 2.0))
        x = x[..., offset : offset + spec.crop, offset : offset + spec.crop]
    x = x.float() / 255.0
    if train and spec.flip:
        flip = aug._rand(len(x), generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    if train and spec.jitter > 0:
        x = aug._jitter(x, spec.jitter, generator)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    return (x - mean) / std


@pytest.mark.parametrize("recipe", ["residual_adapters", "nettailor"])
@pytest.mark.parametrize("task", ["cifar100", "gtsrb", "dtd", "svhn", "my-task"])
def test_fast_augmentation_is_bitwise_the_plain_one(recipe: str, task: str) -> None:
    images = torch.randint(
        0, 256, (19, 3, 36, 36), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    before = images.clone()
    spec = make_spec(recipe, task, 36, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    for train in (True, False):
        fast = augment_batch(images, spec, train, torch.Generator().manual_seed(5))
        plain = reference_augment(images, spec, train, torch.Generator().manual_seed(5))
        assert torch.equal(fast, plain) and fast.is_contiguous()
    assert torch.equal(images, before)  # the input batch is never changed in place


def test_crop_and_take_match_indexing() -> None:
    x = torch.randint(0, 256, (9, 3, 10, 10), dtype=torch.uint8)
    top, left = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3, 2]), torch.tensor([3, 2, 1, 0, 0, 1, 2, 3, 3])
    expected = torch.stack([x[i, :, top[i] : top[i] + 7, left[i] : left[i] + 7] for i in range(9)])
    assert torch.equal(crop_at(x, top, left, 7), expected)
    index = torch.tensor([4, 0, 8, 4])
    assert torch.equal(take(x, index), x[index])


def test_block_shuffle_reader_sees_every_image_once(tmp_path: Path) -> None:
    import h5py

    from vdd_bench.cache import BlockShuffleReader

    images = np.arange(50, dtype=np.uint8)[:, None, None, None] * np.ones((1, 3, 4, 4), dtype=np.uint8)
    with h5py.File(tmp_path / "c.h5", "w") as h5:
        h5["t/train/images"] = images
        h5["t/train/labels"] = np.arange(50, dtype=np.int64) * 10
    reader = BlockShuffleReader(tmp_path / "c.h5", "t", block=8, window=2)

    def epoch(seed: int) -> list[int]:
        seen = []
        for batch, labels in reader.batches(torch.Generator().manual_seed(seed), 6):
            ids = batch[:, 0, 0, 0].tolist()
            assert labels.tolist() == [10 * i for i in ids]
            seen += ids
        return seen

    first = epoch(1)
    assert sorted(first) == list(range(50)) and first != list(range(50))
    assert epoch(1) == first and epoch(2) != first


def test_checkpoint_spec_is_read_once_per_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vdd_bench import runner
    from vdd_bench.backbones import BackboneSpec, build_backbone, save_checkpoint

    path = tmp_path / "b.pt"
    save_checkpoint(path, build_backbone(BackboneSpec("resnet26", width=0.25), 3), {})
    calls = []
    real = runner.load_checkpoint
    monkeypatch.setattr(runner, "load_checkpoint", lambda p, **kw: calls.append(p) or real(p, **kw))
    assert (
        runner.checkpoint_spec(path) == runner.checkpoint_spec(path) == BackboneSpec("resnet26", width=0.25)
    )
    assert len(calls) == 1
    os.utime(path, ns=(1, 1))  # a rewritten checkpoint is read again
    runner.checkpoint_spec(path)
    assert len(calls) == 2


def test_vdd_bench_prints_ratios_with_their_baselines() -> None:
    from vdd_bench.cli import main

    args = ["bench", "--quick", "--workers", "1", "--json", "--only", "data,tailored,harness"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    rows = report["rows"]
    assert {r["section"] for r in rows} == {"data", "tailored", "harness"}
    baselines = {r["baseline"] for r in rows}
    assert "memory copy of the same bytes" in baselines and "MACs ratio" in baselines
    assert any(b.startswith("PIL+torchvision, 1 workers") for b in baselines)
    for r in rows:
        assert r["value"] > 0 and r["baseline_value"] > 0
        assert r["ratio"] == pytest.approx(r["value"] / r["baseline_value"])
    assert "no GPU" in report["setup"]["machine"] or "GPU:" in report["setup"]["machine"]
