"""Decoding benchmark images into uint8 squares, in one of two geometries.

"square" (every recipe's default): the image is resized so its shorter side is `size` (bilinear, PIL) and
centre-cropped to a `size` x `size` square. Training-time random crops are then taken inside this centre
square: the one deviation from per-image torchvision transforms, which on a non-square image (Daimler is
72x144) may crop anywhere along the longer side.
"squash": the whole image resized to `size` x `size` without keeping its aspect ratio (a 72x144 Daimler
pedestrian keeps its whole height), as NetTailor's decathlon loaders do for some tasks
(`vdd_bench.augment.geometry`).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from vdd_bench.errors import DataError

GEOMETRIES = ("square", "squash")


def decode_image(path: Path, size: int, geometry: str = "square") -> np.ndarray:
    """uint8 [3, size, size]; grayscale images come out as three identical channels."""
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")  # forces a full decode: truncated files fail here
    except FileNotFoundError:
        raise DataError(
            f"{path}: image file missing; restore it from the benchmark's release "
            "(`vdd data verify ROOT` lists every problem)"
        ) from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot decode the image ({exc}); restore or re-download it") from exc
    w, h = rgb.size
    if geometry == "squash":
        square = rgb if (w, h) == (size, size) else rgb.resize((size, size), Image.BILINEAR)
        return np.asarray(square, dtype=np.uint8).transpose(2, 0, 1)
    if min(w, h) != size:
        scale = size / min(w, h)
        rgb = rgb.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)
        w, h = rgb.size
    left, top = int(round((w - size) / 2)), int(round((h - size) / 2))
    square = rgb.crop((left, top, left + size, top + size))
    return np.asarray(square, dtype=np.uint8).transpose(2, 0, 1)


def files_digest(paths: Sequence[Path], names: Sequence[str], contents: bool = False) -> str:
    """sha256 over each image's annotation name and byte size (one `stat` each), or with `contents` its
    bytes: two roots with the same annotations and other images differ here, not in their fingerprint."""
    digest = hashlib.sha256()
    for name, path in zip(names, paths, strict=True):
        if contents:
            data = path.read_bytes()
            digest.update(f"{name}\0{len(data)}\0".encode())
            digest.update(data)
        else:
            digest.update(f"{name}\0{path.stat().st_size}\0".encode())
    return digest.hexdigest()


def image_paths(root: Path, names: Sequence[str]) -> list[Path]:
    """`root / name` for each annotation `file_name`, refused in one line when its real path (symbolic links
    followed) leaves the root, or when it is neither a regular file nor a folder: opening a FIFO or a device
    would block forever. (Absolute names and '..' are refused earlier, when the annotations are read.)"""
    inside = Path(os.path.realpath(root))
    paths = []
    for name in names:
        path = root / name
        real = Path(os.path.realpath(path))
        if not real.is_relative_to(inside):
            raise DataError(
                f"{path}: the image resolves to a path outside the benchmark root (a symbolic link?); "
                "keep every image inside the root"
            )
        try:
            mode = real.stat().st_mode
        except OSError:
            mode = None  # missing or unreadable: decoding says which, naming the file
        if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise DataError(
                f"{path}: not a regular file (a FIFO, socket or device); replace it with the image file"
            )
        paths.append(path)
    return paths


def decode_files(paths: list[Path], size: int, geometry: str = "square") -> np.ndarray:
    """uint8 [N, 3, size, size], decoded by a few threads (PIL releases the GIL while decoding)."""
    if geometry not in GEOMETRIES:
        raise ValueError(f"unknown image geometry {geometry!r}: one of {GEOMETRIES}")
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)

    def work(i: int) -> None:
        out[i] = decode_image(paths[i], size, geometry)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(work, range(len(paths))))
    return out
