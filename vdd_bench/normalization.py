"""Per-task RGB mean / std (0-1 scale) used to normalise network inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vdd_bench.benchmark import Benchmark
from vdd_bench.cache import default_cache_path, load_split_images
from vdd_bench.errors import DataError
from vdd_bench.store import atomic_write_json
from vdd_bench.tasks.generic import native_resolution, task_facts

Triple = tuple[float, float, float]
_CHUNK = 512  # images per accumulation step, so a large task never needs a float copy of all its pixels


def task_mean_std(
    bench: Benchmark, task: str, images: np.ndarray | None = None, results: Path | None = None
) -> tuple[Triple, Triple]:
    """Official values for the ten decathlon tasks; any other task's from its training images.

    Computed values are stored in `results/cache/stats.json` under `<fingerprint>/<task>`, so each is
    computed once, from whichever stored size comes first (the difference between sizes is negligible).
    `images` (uint8 [N, 3, S, S] training images) saves decoding them again.
    """
    facts = task_facts(task)
    if facts is not None:
        return facts.mean, facts.std
    stats_file = Path(results) / "cache" / "stats.json" if results is not None else None
    stats = _read_stats(stats_file)
    key = f"{bench.fingerprint}/{task}"
    if key in stats:
        mean, std = stats[key]["mean"], stats[key]["std"]
        return (mean[0], mean[1], mean[2]), (std[0], std[1], std[2])
    if images is None:
        images = _train_images(bench, task, results)
    mean, std = channel_mean_std(images)
    if stats_file is not None:
        # re-read just before writing: a concurrent job may have added other tasks meanwhile
        atomic_write_json(stats_file, {**_read_stats(stats_file), key: {"mean": mean, "std": std}})
    return mean, std


def channel_mean_std(images: np.ndarray) -> tuple[Triple, Triple]:
    """Per-channel mean and (population) std of uint8 [N, 3, H, W] images on the 0-1 scale."""
    total = np.zeros(3)
    squares = np.zeros(3)
    for start in range(0, len(images), _CHUNK):
        block = images[start : start + _CHUNK].astype(np.float64) / 255.0
        total += block.sum(axis=(0, 2, 3))
        squares += (block**2).sum(axis=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return (float(mean[0]), float(mean[1]), float(mean[2])), (float(std[0]), float(std[1]), float(std[2]))


def _train_images(bench: Benchmark, task: str, results: Path | None) -> np.ndarray:
    index = bench.split(task, "train")
    size = native_resolution(bench)
    cache = default_cache_path(results, bench, size) if results is not None else None
    return load_split_images(bench, index, size, cache)


def _read_stats(path: Path | None) -> dict:
    if path is None or not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: unreadable statistics cache ({exc}); delete it, it is recomputed") from exc
