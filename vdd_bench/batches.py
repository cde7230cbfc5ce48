"""An epoch's training batches, prepared in worker threads ahead of the training step that uses them.

Every random number of a batch is drawn from the epoch's generator in the calling thread when the batch is
queued, batch after batch, so the batches are exactly those of a loop without workers (and do not depend on
their number); the workers only copy pixels. On the CPU a worker makes the whole batch with the compiled
kernel, which releases the GIL; for a GPU it gathers the batch's uint8 images into pinned memory, and the
crop, flip and normalisation run on the device (`vdd_bench.augment.apply`).
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from vdd_bench.augment import AugmentSpec, BatchDraw, apply, draw

DATA_WORKERS = 2  # threads preparing batches; as many as the cores of a small machine
QUEUED = 2  # batches prepared ahead (at least one per worker): more would push them out of the cache


def epoch_batches(
    images: np.ndarray,
    labels: torch.Tensor,
    order: Sequence[np.ndarray],
    spec: AugmentSpec,
    generator: torch.Generator,
    device: torch.device,
    workers: int = DATA_WORKERS,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(augmented images, labels) of each index array of `order` in turn, on `device`.

    `images` is the split's uint8 [N, 3, S, S] array (a memory-mapped cache is read in place). With
    `workers=0` the batches are made in the calling thread; otherwise up to max(QUEUED, workers) batches
    are prepared while the caller uses one.
    """
    cuda = device.type == "cuda"
    chosen_labels = labels.numpy()
    outputs = _Outputs((max(map(len, order), default=0), 3, spec.crop, spec.crop))

    def prepare(index: np.ndarray, batch: BatchDraw, out: np.ndarray | None) -> torch.Tensor:
        if cuda:
            return torch.from_numpy(np.take(images, index, axis=0)).pin_memory()
        return apply(images, index, batch, spec, out)

    def finish(
        prepared: torch.Tensor, index: np.ndarray, batch: BatchDraw
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if cuda:
            prepared = apply(prepared.to(device, non_blocking=True), np.arange(len(index)), batch, spec)
        return prepared, torch.from_numpy(chosen_labels.take(index)).to(device, non_blocking=True)

    if workers == 0:
        for index in order:
            batch = draw(spec, len(index), True, generator)
            yield finish(prepare(index, batch, None if cuda else outputs.claim(len(index))), index, batch)
        return
    queue: deque[tuple[Future, np.ndarray, BatchDraw]] = deque()

    def oldest() -> tuple[torch.Tensor, torch.Tensor]:
        ready, index, batch = queue.popleft()  # the future goes: only the batch refers to its array
        return finish(ready.result(), index, batch)

    with ThreadPoolExecutor(workers, thread_name_prefix="vdd-batches") as pool:
        try:
            for index in order:
                batch = draw(spec, len(index), True, generator)
                out = None if cuda else outputs.claim(len(index))
                queue.append((pool.submit(prepare, index, batch, out), index, batch))
                del out
                if len(queue) > max(QUEUED, workers):
                    yield oldest()
            while queue:
                yield oldest()
        finally:  # the consumer stopped early (an error in the training step): drop what is queued
            for pending, _, _ in queue:
                pending.cancel()


class _Outputs:
    """The float32 arrays batches are made in, each reused once nothing outside refers to it any more.

    A batch written into memory that is still in the processor's cache costs no trip to main memory (on a
    2-core machine that is most of a batch's cost), and a batch a consumer still holds is never written
    over: a tensor made from an array keeps a reference to it until the tensor's storage is freed, so an
    array is free when its reference count is that of an array nobody else holds (measured once, the same
    way)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape
        self.arrays: list[np.ndarray] = []
        self.free_count = _reference_counts([np.empty(0, dtype=np.float32)])[0]

    def claim(self, n: int) -> np.ndarray:
        """A contiguous [n, ...] array nobody else refers to (the first n images of a reused one)."""
        for array, count in zip(self.arrays, _reference_counts(self.arrays), strict=True):
            if count <= self.free_count:
                return array[:n]
        self.arrays.append(np.empty(self.shape, dtype=np.float32))
        return self.arrays[-1][:n]


def _reference_counts(arrays: list[np.ndarray]) -> list[int]:
    return [sys.getrefcount(array) for array in arrays]
