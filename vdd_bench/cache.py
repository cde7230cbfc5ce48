"""HDF5 pack of decoded images: one file per (benchmark fingerprint, stored size, geometry).

Layout: `/<task>/<split>/images` uint8 [N, 3, S, S] (contiguous, so that training memory-maps it at its file
offset; random reads of chunked datasets are slow), `/<task>/<split>/labels` int64 (absent for unlabelled
test splits), `/<task>/<split>/image_ids` int64 and the group attr `sizes_digest` (the images' names and
byte sizes: the fingerprint covers the annotations only); file attrs `fingerprint`, `size`, `format`,
`geometry` ("square" or "squash", see `vdd_bench.images`; a file without it, written before squashed caches
existed, holds squares). The two geometries live in two files side by side (`...-s72.h5`,
`...-s72-squash.h5`), so both can be packed and a reader never takes one for the other. The file is
written under a temporary name and renamed when complete, so an interrupted pack never leaves a file that
looks finished.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from vdd_bench.benchmark import SPLITS, Benchmark, SplitIndex
from vdd_bench.errors import DataError
from vdd_bench.images import decode_files, files_digest, image_paths

FORMAT = "vdd-cache/1"
SIZES_DIGEST = "sizes_digest"  # group attr: `files_digest` of the split's images (`vdd data verify --cache`)
_BLOCK = 4096  # images decoded and written at a time: bounds memory for the large tasks


def default_cache_path(results: Path, bench: Benchmark, size: int, geometry: str = "square") -> Path:
    suffix = "" if geometry == "square" else f"-{geometry}"
    return Path(results) / "cache" / f"{bench.fingerprint}-s{size}{suffix}.h5"


def pack(
    bench: Benchmark,
    out: Path,
    size: int,
    tasks: list[str] | None = None,
    progress: bool = True,
    geometry: str = "square",
) -> Path:
    """Decode every split of `tasks` (default: all) into one new HDF5 file at `out`; returns `out`."""
    import h5py
    from tqdm import tqdm

    names = bench.task_names() if tasks is None else tasks
    indexes = [bench.split(t, s) for t in names for s in SPLITS]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    bar = tqdm(total=sum(len(i) for i in indexes), unit="img", desc=f"pack {out.name}", disable=not progress)
    try:
        with h5py.File(tmp, "w") as h5:
            h5.attrs.update(fingerprint=bench.fingerprint, size=size, format=FORMAT, geometry=geometry)
            for index in indexes:
                group = h5.create_group(f"{index.task}/{index.split}")
                group.create_dataset("image_ids", data=np.asarray(index.image_ids, dtype=np.int64))
                if index.labels is not None:
                    group.create_dataset("labels", data=index.labels)
                images = group.create_dataset("images", shape=(len(index), 3, size, size), dtype=np.uint8)
                for start in range(0, len(index), _BLOCK):
                    files = index.files[start : start + _BLOCK]
                    images[start : start + len(files)] = decode_files(
                        image_paths(bench.root, files), size, geometry
                    )
                    bar.update(len(files))
                group.attrs[SIZES_DIGEST] = files_digest(image_paths(bench.root, index.files), index.files)
        os.replace(tmp, out)
    finally:
        bar.close()
        tmp.unlink(missing_ok=True)
    return out


def read_split(
    cache: Path, bench: Benchmark, index: SplitIndex, size: int, geometry: str = "square"
) -> np.ndarray | None:
    """uint8 [N, 3, size, size] from the cache; None when packed for other data, size or geometry, or
    without this split.

    A contiguous dataset (what `pack` writes) is memory-mapped, not read: pages come from the operating
    system's file cache when first touched, so a run starts at once and a large split is not held twice in
    memory. The mapping is copy-on-write (never written back); replacing the file (a new pack) leaves it
    valid. Any other layout is read whole."""
    import h5py

    key = f"{index.task}/{index.split}/images"
    try:
        with h5py.File(cache, "r") as h5:
            attrs = h5.attrs
            if attrs.get("format") != FORMAT or attrs.get("fingerprint") != bench.fingerprint:
                return None
            if attrs.get("size") != size or key not in h5:
                return None
            if attrs.get("geometry", "square") != geometry:
                return None
            dataset = h5[key]
            offset = dataset.id.get_offset() if dataset.chunks is None else None
            if offset is None or dataset.dtype != np.uint8 or dataset.size == 0:
                images = dataset[()]
            else:
                images = np.memmap(cache, dtype=np.uint8, mode="c", offset=offset, shape=dataset.shape)
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{cache}: unreadable or truncated cache file ({exc}); delete it and re-pack (`vdd data pack`)"
        ) from exc
    if images.shape != (len(index), 3, size, size):
        raise DataError(
            f"{cache}: {key} holds {images.shape[0]} images, the annotations {len(index)}; "
            "delete it and re-pack (`vdd data pack`)"
        )
    return images


class BlockShuffleReader:
    """Training batches of a packed split too large for memory (ImageNet at 72 px is about 19 GB).

    Random reads of single images from HDF5 collapse, so every read here is a contiguous block of `block`
    images, read whole into a preallocated buffer. An epoch visits the blocks in a random order, `window`
    blocks at a time, and shuffles the images of those blocks together: each image is seen once per epoch,
    memory holds `block * window` images. All randomness comes from the generator passed to `batches`.
    """

    def __init__(self, cache: Path, task: str, split: str = "train", block: int = 4096, window: int = 4):
        import h5py

        self.cache, self.key, self.block, self.window = Path(cache), f"{task}/{split}", block, window
        with h5py.File(self.cache, "r") as h5:
            if f"{self.key}/images" not in h5:
                raise DataError(f"{cache}: no {self.key} images; pack it first (`vdd data pack`)")
            self.shape = h5[f"{self.key}/images"].shape
            self.labels = h5[f"{self.key}/labels"][()] if f"{self.key}/labels" in h5 else None
        self._buffer = np.empty((min(block * window, self.shape[0]), *self.shape[1:]), dtype=np.uint8)

    def __len__(self) -> int:
        return self.shape[0]

    def batches(self, generator, batch_size: int):
        """Yields (uint8 images [B, 3, S, S], int64 labels [B] or None) covering the split once."""
        import h5py
        import torch

        from vdd_bench.augment import take  # loads torch, which packing and verifying never need

        n = self.shape[0]
        starts = list(range(0, n, self.block))
        order = torch.randperm(len(starts), generator=generator).tolist()
        with h5py.File(self.cache, "r") as h5:
            images = h5[f"{self.key}/images"]
            for w in range(0, len(order), self.window):
                filled, ids = 0, []
                for b in order[w : w + self.window]:
                    start, stop = starts[b], min(starts[b] + self.block, n)
                    images.read_direct(self._buffer, np.s_[start:stop], np.s_[filled : filled + stop - start])
                    ids.append(np.arange(start, stop))
                    filled += stop - start
                index = np.concatenate(ids)
                perm = torch.randperm(filled, generator=generator)
                buffer = torch.from_numpy(self._buffer[:filled])
                for s in range(0, filled, batch_size):
                    chosen = perm[s : s + batch_size]
                    labels = None
                    if self.labels is not None:
                        labels = torch.from_numpy(self.labels[index[chosen.numpy()]])
                    yield take(buffer, chosen), labels


def load_split_images(
    bench: Benchmark, index: SplitIndex, size: int, cache: Path | None = None, geometry: str = "square"
) -> np.ndarray:
    """uint8 [N, 3, size, size] for one split: from the HDF5 cache when it holds it (in this geometry),
    else from the JPEGs."""
    if cache is not None and cache.is_file():
        cached = read_split(cache, bench, index, size, geometry)
        if cached is not None:
            return cached
    return decode_files(image_paths(bench.root, index.files), size, geometry)
