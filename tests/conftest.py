"""Shared pytest fixtures."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from method_helpers import ToyEnv, make_toy_env
from PIL import Image

MINI_ROOT = Path(__file__).resolve().parents[2] / "shared/data/mini-decathlon"


@pytest.fixture(scope="session")
def toy_env(tmp_path_factory: pytest.TempPathFactory) -> ToyEnv:
    """The toy decathlon with a pre-trained ResNet-26 and a run store, shared by the method tests."""
    return make_toy_env(tmp_path_factory)


@pytest.fixture(scope="session")
def mini_root() -> Path:
    """The mini-decathlon sample (real images, custom root); tests that need it skip when it is absent."""
    if not (MINI_ROOT / "annotations").is_dir():
        pytest.skip("mini-decathlon sample not present (it is not distributed with the project)")
    return MINI_ROOT


def _write_task(
    root: Path, task: str, k: int, classes: int = 3, per_split: tuple[int, int, int] = (6, 3, 3)
) -> None:
    """One task in the official layout: train/val/test_stripped/test annotations plus small JPEGs.

    Ids follow the decathlon rules (category k*10^7 + class, image k*10^7 + split offset + running index);
    images are 80x72 (shorter side 72), every third one grayscale.
    """
    rng = np.random.default_rng(k)
    ann = root / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    categories = [
        {"id": k * 10**7 + c, "name": f"class{c}", "supercategory": task} for c in range(1, classes + 1)
    ]
    running = 0
    for split, n, offset in zip(("train", "val", "test"), per_split, (0, 100_000, 200_000), strict=True):
        images, annotations = [], []
        for i in range(n):
            running += 1
            image_id = k * 10**7 + offset + running
            cls = i % classes + 1
            folder = f"data/{task}/{split}" + ("" if split == "test" else f"/{cls:04d}")
            file_name = f"{folder}/{running:06d}.jpg"
            (root / folder).mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, size=(72, 80, 3), dtype=np.uint8)
            img = Image.fromarray(pixels)
            (img.convert("L") if running % 3 == 0 else img).save(root / file_name, quality=90)
            images.append({"id": image_id, "width": 80, "height": 72, "file_name": file_name})
            annotations.append({"id": image_id, "image_id": image_id, "category_id": k * 10**7 + cls})
        doc = {
            "info": {"description": f"test {task}"},
            "licenses": [],
            "images": images,
            "categories": categories,
        }
        labelled = {**doc, "annotations": annotations}
        if split == "test":
            (ann / f"{task}_test_stripped.json").write_text(json.dumps(doc))
            (ann / f"{task}_test.json").write_text(json.dumps(labelled))
        else:
            (ann / f"{task}_{split}.json").write_text(json.dumps(labelled))


@pytest.fixture
def make_root(tmp_path: Path) -> Callable[..., Path]:
    """make_root(names=("alpha", "beta")) writes a small root under tmp_path; task k = position + 1."""

    def make(names: tuple[str, ...] = ("alpha", "beta"), folder: str = "root") -> Path:
        root = tmp_path / folder
        for k, name in enumerate(names, start=1):
            _write_task(root, name, k)
        return root

    return make


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy decathlon, generated once per test session (shared with the method tests' environment)."""
    from method_helpers import toy_path
    from vdd_bench.tasks.toy import generate_toy

    return generate_toy(toy_path(tmp_path_factory))


@pytest.fixture(scope="session")
def toy_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small ResNet-26 (width 0.25) pre-trained briefly on the toy source task, once per session."""
    return make_toy_env(tmp_path_factory).checkpoint


@pytest.fixture
def one_thread():
    """Torch on one thread inside the test: what worker processes and the SLURM test profile's jobs use, so
    that records computed here and there are bitwise the same."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
