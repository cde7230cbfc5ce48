"""The `data` section of `vdd bench`: the harness's read path against the usual loader and a memory copy."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from vdd_bench.augment import augment_batch, make_spec
from vdd_bench.batches import epoch_batches
from vdd_bench.bench.common import CPU, BenchOptions, best_rate, gpu_name, row, toy_root
from vdd_bench.bench.method_costs import measured_rows
from vdd_bench.benchmark import Benchmark
from vdd_bench.cache import BlockShuffleReader, pack, read_split
from vdd_bench.normalization import channel_mean_std


def _data_root(options: BenchOptions, tmp: Path) -> Path:
    return options.data_root if options.data_root is not None else toy_root(tmp)


class _JpegDataset(torch.utils.data.Dataset):
    """The usual loader: PIL decode + torchvision transforms, one image at a time."""

    def __init__(self, files: list[Path], labels: np.ndarray, size: int, crop: int, mean, std) -> None:
        from torchvision import transforms

        self.files, self.labels = files, labels
        self.transform = transforms.Compose(
            [
                transforms.Resize(size),
                transforms.CenterCrop(size),
                transforms.RandomCrop(crop),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(mean, std),
            ]
        )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.files[i]) as img:
            return self.transform(img.convert("RGB")), int(self.labels[i])


def bench_data(options: BenchOptions, tmp: Path) -> tuple[list[dict], dict]:

    root = _data_root(options, tmp)
    bench = Benchmark.open(root)
    pick = min if options.quick else max  # quick: the smallest task; else the largest
    task = pick(bench.task_names(), key=lambda t: len(bench.split(t, "train")))
    size = 36 if bench.kind == "toy" else 72
    index = bench.split(task, "train")
    cache = pack(bench, tmp / "cache.h5", size, [task], progress=False)
    batch, workers = 128, options.workers
    n = len(index)
    labels = torch.from_numpy(index.labels)
    packed = read_split(cache, bench, index, size)
    spec = make_spec("residual_adapters", "any-task", size, *channel_mean_std(packed[:256]))
    resident: dict[str, np.ndarray] = {}

    def harness_epoch(seed: int, read: bool = True, device: torch.device = CPU) -> float:
        """Cache read (`read_split`: the contiguous dataset memory-mapped; `read=False`: already mapped and
        paged in, as from the second epoch on) + one epoch of shuffled, augmented batches made by
        `epoch_batches` exactly as the engine asks for them, with `workers` threads."""
        start = time.perf_counter()
        if read or "images" not in resident:
            resident["images"] = read_split(cache, bench, index, size)
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(n, generator=generator).numpy()
        batches = [order[s : s + batch] for s in range(0, n, batch)]
        for _ in epoch_batches(resident["images"], labels, batches, spec, generator, device, workers):
            pass
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return n / (time.perf_counter() - start)

    def block_epoch(seed: int) -> float:
        start = time.perf_counter()
        reader = BlockShuffleReader(cache, task, "train", block=1024, window=2)
        generator = torch.Generator().manual_seed(seed)
        for images, _ in reader.batches(generator, batch):
            augment_batch(images, spec, train=True, generator=generator)
        return n / (time.perf_counter() - start)

    files = [bench.root / f for f in index.files]
    crop = round(size * 64 / 72)

    def baseline_epoch(seed: int) -> float:
        dataset = _JpegDataset(files, index.labels, size, crop, spec.mean, spec.std)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch,
            shuffle=True,
            num_workers=workers,
            generator=torch.Generator().manual_seed(seed),
        )
        start = time.perf_counter()
        for _ in loader:
            pass
        return n / (time.perf_counter() - start)

    target = np.empty_like(packed)

    def memcopy(seed: int) -> float:
        start = time.perf_counter()
        np.copyto(target, packed)
        return n / (time.perf_counter() - start)

    repeats = 1 if options.quick else 3
    harness_epoch(0)  # warm-up: lazy imports, the kernel's compilation (or its cache) and first allocations
    ours = best_rate(lambda: harness_epoch(0), repeats)
    steady = best_rate(lambda: harness_epoch(0, read=False), repeats)
    block = best_rate(lambda: block_epoch(0), repeats)
    copy = best_rate(lambda: memcopy(0), 5)
    base = best_rate(lambda: baseline_epoch(0), 1 if options.quick else 2)
    setup = {
        "data": f"{bench.name} ({bench.kind}) task {task}: {n} images stored at {size} px, batch {batch}, "
        f"the cache file in the OS file cache (as the baseline's JPEGs are); the harness path with {workers} "
        f"threads, the loader with {workers} worker processes"
    }
    loader = f"PIL+torchvision, {workers} workers"
    memory = "memory copy of the same bytes"
    first, later = (
        "harness read path (1st epoch: cache read + epoch), img/s",
        "harness read path (later epochs), img/s",
    )
    block_name = "block-shuffle reader (reads included), img/s"
    rows = [
        row("data", first, ours, "img/s", loader, base, ">= 50"),
        row("data", first, ours, "img/s", memory, copy, ">= 0.25"),
        row("data", later, steady, "img/s", loader, base, ">= 50"),
        row("data", later, steady, "img/s", memory, copy, ">= 0.25"),
        row("data", block_name, block, "img/s", loader, base),
        row("data", block_name, block, "img/s", memory, copy),
    ]
    if options.device.type == "cuda":
        gpu = best_rate(lambda: harness_epoch(0, read=False, device=options.device), repeats)
        consumed, model = _training_consumption(options, batch)
        rows.append(
            row(
                "data",
                f"harness read path to {gpu_name(options)}, img/s",
                gpu,
                "img/s",
                model,
                consumed,
                ">= 3",
            )
        )
    return rows, setup


def _training_consumption(options: BenchOptions, batch: int) -> tuple[float, str]:
    """Images per second that fine-tuning ResNet-26 at 64 px consumes on the bench's device (the harness's
    GPU form: bf16 autocast, channels_last)."""
    args = ["--methods", "finetune", "--batch", str(batch), "--precision", "bf16", "--steps", "20"]
    rows = measured_rows([*args, "--warmup", "5", "--device", str(options.device)])
    return batch / rows[0]["step_s"], f"finetune training, resnet26 64 px, batch {batch}, bf16, img/s"
