"""The toy decathlon generator: determinism, the decathlon-1.0 format, and half-written folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from vdd_bench.tasks.toy import (
    TOY_DESCRIPTIONS,
    TOY_INFO_DESCRIPTION,
    TOY_MARKER,
    TOY_PREFIX,
    TOY_RESOLUTION,
    TOY_SIZES,
    TOY_SOURCE,
    TOY_TASKS,
    generate_toy,
)

SPLIT_OFFSET = {"train": 0, "val": 100_000, "test": 200_000}


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_toy(tmp_path_factory.mktemp("toy") / "seed0", seed=0)


def load(root: Path, task: str, split: str) -> dict:
    return json.loads((root / "annotations" / f"{task}_{split}.json").read_text())


def sample_files(root: Path) -> list[Path]:
    """All annotation files plus the first and last image of every split of every task."""
    files = sorted((root / "annotations").iterdir())
    for task in TOY_TASKS:
        for split in ("train", "val", "test"):
            images = load(root, task, split)["images"]
            files += [root / images[0]["file_name"], root / images[-1]["file_name"]]
    return files


def test_task_list() -> None:
    assert len(TOY_TASKS) == 10 and TOY_TASKS[0] == TOY_SOURCE
    assert set(TOY_DESCRIPTIONS) == set(TOY_TASKS) == set(TOY_SIZES)
    assert sorted(TOY_PREFIX.values()) == list(range(1, 11))
    assert [TOY_PREFIX[t] for t in sorted(TOY_TASKS)] == list(range(1, 11))
    assert all(t.replace("-", "").isalnum() and t == t.lower() for t in TOY_TASKS)
    assert sum(sum(sizes) for sizes in TOY_SIZES.values()) < 7000


def test_same_seed_same_bytes_other_seed_differs(toy: Path, tmp_path: Path) -> None:
    again = generate_toy(tmp_path / "again", seed=0)
    files = sample_files(toy)
    for f in files:
        assert (again / f.relative_to(toy)).read_bytes() == f.read_bytes(), f

    other = tmp_path / "other"  # a complete folder of another seed is regenerated, and differs
    shutil.copytree(toy, other)
    generate_toy(other, seed=1)
    assert json.loads((other / TOY_MARKER).read_text())["seed"] == 1
    images = [f for f in files if f.suffix == ".jpg"]
    differing = [f for f in images if (other / f.relative_to(toy)).read_bytes() != f.read_bytes()]
    assert len(differing) == len(images)
    assert load(other, "source", "train")["annotations"] == load(toy, "source", "train")["annotations"]
    assert load(other, "source", "test")["annotations"] != load(toy, "source", "test")["annotations"]


@pytest.mark.parametrize("task", TOY_TASKS)
def test_official_format(toy: Path, task: str) -> None:
    k = TOY_PREFIX[task]
    docs = {split: load(toy, task, split) for split in ("train", "val", "test", "test_stripped")}
    categories = docs["train"]["categories"]
    assert [c["id"] for c in categories] == [k * 10**7 + i for i in range(1, len(categories) + 1)]
    assert all(c["supercategory"] == task for c in categories)
    assert 2 <= len(categories) <= 50
    assert "annotations" not in docs["test_stripped"]
    assert docs["test_stripped"]["images"] == docs["test"]["images"]

    running = 0
    for split, size in zip(("train", "val", "test"), TOY_SIZES[task], strict=True):
        doc = docs[split]
        assert list(doc) == ["info", "licenses", "images", "annotations", "categories"]
        assert doc["info"]["description"] == TOY_INFO_DESCRIPTION and doc["info"]["version"] == "1"
        assert doc["categories"] == categories
        assert len(doc["images"]) == len(doc["annotations"]) == size
        label = {a["image_id"]: a["category_id"] for a in doc["annotations"]}
        assert set(label.values()) == {c["id"] for c in categories}  # every class in every split
        for image in doc["images"]:
            running += 1  # the running index continues across splits
            assert image["id"] == k * 10**7 + SPLIT_OFFSET[split] + running
            cls = label[image["id"]] - k * 10**7
            folder = f"data/{task}/test" if split == "test" else f"data/{task}/{split}/{cls:04d}"
            assert image["file_name"] == f"{folder}/{running:06d}.jpg"
        for image in doc["images"][:: max(1, size // 7)]:
            with Image.open(toy / image["file_name"]) as im:
                assert im.format == "JPEG"
                assert im.size == (image["width"], image["height"]) == (TOY_RESOLUTION, TOY_RESOLUTION)
    listed = {im["file_name"] for split in ("train", "val", "test") for im in docs[split]["images"]}
    on_disk = {p.relative_to(toy).as_posix() for p in (toy / "data" / task).rglob("*.jpg")}
    assert listed == on_disk


def test_target_sizes_and_source_size() -> None:
    train, val, test = TOY_SIZES[TOY_SOURCE]
    assert 2000 <= train <= 2500 and 200 <= val <= 400 and 200 <= test <= 400
    for task in TOY_TASKS[1:]:
        train, val, test = TOY_SIZES[task]
        assert 150 <= train <= 400 and 80 <= val <= 150 and 80 <= test <= 200, task


def test_grayscale_tasks_store_mode_l(toy: Path) -> None:
    modes = {}
    for task in TOY_TASKS:
        first = load(toy, task, "train")["images"][0]["file_name"]
        with Image.open(toy / first) as im:
            modes[task] = im.mode
    assert modes["glyphs"] == modes["pedestrians"] == "L"
    assert modes[TOY_SOURCE] == modes["colors"] == "RGB"


def test_complete_folder_is_not_rewritten(toy: Path, tmp_path: Path) -> None:
    root = tmp_path / "toy"
    shutil.copytree(toy, root)
    probe = root / "annotations" / "colors_train.json"
    probe.write_text("edited")
    assert generate_toy(root, seed=0) == root
    assert probe.read_text() == "edited"


def test_half_written_folder_is_regenerated(toy: Path, tmp_path: Path) -> None:
    root = tmp_path / "toy"
    shutil.copytree(toy, root)
    (root / TOY_MARKER).unlink()  # as if interrupted before the marker was written
    (root / "annotations" / "glyphs_val.json").unlink()
    truncated = root / load(root, "signs", "train")["images"][0]["file_name"]
    truncated.write_bytes(truncated.read_bytes()[:50])
    stray = root / "data" / "signs" / "train" / "0001" / "999999.jpg"
    stray.write_bytes(b"junk")
    unrelated = root / "notes.txt"
    unrelated.write_text("keep me")

    assert generate_toy(root, seed=0) == root
    assert (root / TOY_MARKER).is_file()
    assert not stray.exists()
    assert unrelated.read_text() == "keep me"
    for f in sample_files(toy):
        assert (root / f.relative_to(toy)).read_bytes() == f.read_bytes(), f
