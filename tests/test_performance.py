"""The fast data path gives exactly what the plain tensor code gives, and `vdd bench` reports its ratios.

Speed itself is never asserted here: `vdd bench` measures it as ratios against baselines.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from vdd_bench import augment as aug
from vdd_bench.augment import augment_batch, make_spec, take
from vdd_bench.batches import epoch_batches


def reference_augment(images, spec, train, generator=None):
    """The plain formulation: reflect padding of the whole batch, batched gathers, float flips, then the
    documented normalisation ``x * (1 / (255 std)) - mean / std`` (jitter: on x / 255 first)."""
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
    x = x.float()
    if train and spec.flip:
        flip = aug._rand(len(x), generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    mean = torch.tensor(spec.mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float64).view(1, 3, 1, 1)
    shift = (-mean / std).float()
    if train and spec.jitter > 0:
        x = aug._jitter(
            x * torch.tensor(1 / 255.0, dtype=torch.float32),
            aug._jitter_factors(spec.jitter, len(x), generator),
        )
        return x * (1 / std).float() + shift
    return x * (1 / (255 * std)).float() + shift


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


@pytest.mark.parametrize("recipe", ["residual_adapters", "nettailor"])
@pytest.mark.parametrize("task", ["cifar100", "gtsrb", "my-task"])
def test_compiled_kernel_and_tensor_path_give_the_same_bits(recipe: str, task: str) -> None:
    """The CPU kernel against the tensor gathers a GPU runs (here on CPU tensors), on a subset of a larger
    array in a shuffled order, flipped, padded and plain crops alike."""
    images = torch.randint(
        0, 256, (40, 3, 36, 36), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    spec = make_spec(recipe, task, 36, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    index = np.array([39, 0, 7, 7, 21, 3, 30, 12, 5, 18, 26, 1])
    for train in (True, False):
        batch = aug.draw(spec, len(index), train, torch.Generator().manual_seed(2))
        scale, shift = aug._affine(spec, from_bytes=True)
        fast = aug.crop_normalise_cpu(images.numpy(), index, batch.rows, batch.cols, scale, shift)
        tensor = aug.crop_normalise_torch(images, index, batch.rows, batch.cols, scale, shift)
        assert torch.equal(fast, tensor)
        whole = augment_batch(images[index], spec, train, torch.Generator().manual_seed(2))
        assert torch.equal(aug.apply(images.numpy(), index, batch, spec), whole)


def test_apply_reads_a_read_only_memory_map_and_checks_indices(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (10, 3, 9, 9), dtype=np.uint8)
    images.tofile(tmp_path / "images.bin")
    mapped = np.memmap(tmp_path / "images.bin", dtype=np.uint8, mode="r", shape=images.shape)
    spec = make_spec("residual_adapters", "my-task", 9, (0.5,) * 3, (0.25,) * 3)
    batch = aug.draw(spec, 3, True, torch.Generator().manual_seed(0))
    assert torch.equal(
        aug.apply(mapped, np.array([9, 2, 4]), batch, spec),
        aug.apply(images, np.array([9, 2, 4]), batch, spec),
    )
    with pytest.raises(IndexError, match="out of range for 10 images"):
        aug.apply(mapped, np.array([9, 10, 4]), batch, spec)


def test_take_matches_indexing() -> None:
    x = torch.randint(0, 256, (9, 3, 10, 10), dtype=torch.uint8)
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
    report = json.loads(result.stdout)  # stderr may carry the compiler's warnings
    rows = report["rows"]
    assert {r["section"] for r in rows} == {"data", "tailored", "harness"}
    baselines = {r["baseline"] for r in rows}
    assert "memory copy of the same bytes" in baselines and "MACs ratio" in baselines
    assert any(b.startswith("PIL+torchvision, 1 workers") for b in baselines)
    assert any(b.startswith("--jobs ") for b in baselines)  # a toy sweep in worker processes
    for r in rows:
        assert r["value"] > 0 and r["baseline_value"] > 0
        assert r["ratio"] == pytest.approx(r["value"] / r["baseline_value"])
    assert "no GPU" in report["setup"]["machine"] or "GPU:" in report["setup"]["machine"]


def _epoch(images, labels, spec, workers: int, seed: int = 3) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(images), generator=generator).numpy()
    batches = [order[s : s + 8] for s in range(0, len(order), 8)]
    return list(epoch_batches(images, labels, batches, spec, generator, torch.device("cpu"), workers))


@pytest.mark.parametrize("recipe", ["residual_adapters", "nettailor"])
def test_epoch_batches_do_not_depend_on_workers_and_are_the_serial_loop(recipe: str) -> None:
    """Workers only copy: every batch (held all at once here, so none may be written over) is bitwise the
    one a plain loop over the same generator makes, for any number of workers."""
    images = np.random.default_rng(0).integers(0, 256, (45, 3, 36, 36), dtype=np.uint8)
    labels = torch.arange(45) * 10
    spec = make_spec(recipe, "gtsrb", 36, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    generator = torch.Generator().manual_seed(3)
    order = torch.randperm(45, generator=generator)
    serial = [augment_batch(take(images, order[s : s + 8]), spec, True, generator) for s in range(0, 45, 8)]
    for workers in (0, 1, 3):
        batches = _epoch(images, labels, spec, workers)
        assert [len(x) for x, _ in batches] == [8, 8, 8, 8, 8, 5]
        for (x, y), expected, start in zip(batches, serial, range(0, 45, 8), strict=True):
            assert torch.equal(x, expected)
            assert torch.equal(y, order[start : start + 8] * 10)


def test_epoch_batches_reuse_an_output_only_once_it_is_released() -> None:
    images = np.random.default_rng(1).integers(0, 256, (64, 3, 9, 9), dtype=np.uint8)
    spec = make_spec("residual_adapters", "my-task", 9, (0.5,) * 3, (0.25,) * 3)
    order = [np.arange(s, s + 4) for s in range(0, 64, 4)]
    storages = set()
    for x, _ in epoch_batches(
        images,
        torch.zeros(64, dtype=torch.int64),
        order,
        spec,
        torch.Generator().manual_seed(0),
        torch.device("cpu"),
        2,
    ):
        storages.add(x.untyped_storage().data_ptr())
    assert len(storages) <= 4  # released batches' memory is used again (16 batches, a few arrays)


def test_epoch_batches_stop_cleanly_when_the_consumer_does() -> None:
    images = np.zeros((200, 3, 9, 9), dtype=np.uint8)
    spec = make_spec("residual_adapters", "my-task", 9, (0.5,) * 3, (0.25,) * 3)
    stream = epoch_batches(
        images,
        torch.zeros(200, dtype=torch.int64),
        [np.arange(4)] * 50,
        spec,
        torch.Generator().manual_seed(0),
        torch.device("cpu"),
        2,
    )
    next(stream)
    stream.close()  # an error in the training step: the queued batches are dropped, the threads end
    assert not any(t.name.startswith("vdd-batches") for t in threading.enumerate())


def test_a_tailored_architecture_is_rebuilt_at_the_decathlon_scale() -> None:
    from vdd_bench.accounting import count_macs
    from vdd_bench.backbones import BackboneSpec
    from vdd_bench.bench.tailored import at_decathlon_scale, random_student

    small = random_student(BackboneSpec("resnet26", width=0.25), 32, remove_blocks=6)
    scaled, full, size = at_decathlon_scale(small)
    assert size == 64 and scaled.paths == small.paths
    removed = [i for i, paths in enumerate(small.paths) if ("main", i) not in paths]
    assert len(removed) >= 6 and not any(
        k.startswith(f"mains.{i}.") for i in removed for k in scaled.state_dict()
    )
    assert scaled.stem[0].out_channels == 4 * small.stem[0].out_channels  # width 1 against 0.25
    assert count_macs(scaled, size) < 0.75 * count_macs(full, size)
