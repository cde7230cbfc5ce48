from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from vdd_bench.tasks.decathlon import DECATHLON

import vdd_bench.cache as cache_module
import vdd_bench.normalization as normalization
from vdd_bench.benchmark import Benchmark
from vdd_bench.cache import default_cache_path, load_split_images, pack, read_split
from vdd_bench.errors import DataError
from vdd_bench.normalization import task_mean_std
from vdd_bench.runner import task_images


@pytest.mark.parametrize("size", [36, 72])
def test_pack_then_read_equals_jpeg_decode(mini_root: Path, tmp_path: Path, size: int) -> None:
    bench = Benchmark.open(mini_root)
    out = default_cache_path(tmp_path, bench, size)
    assert out == tmp_path / "cache" / f"{bench.fingerprint}-s{size}.h5"
    assert pack(bench, out, size, tasks=["daimlerpedcls"], progress=False) == out
    for split in ("train", "val", "test"):
        index = bench.split("daimlerpedcls", split)
        decoded = load_split_images(bench, index, size)
        assert decoded.shape == (len(index), 3, size, size) and decoded.dtype == np.uint8
        np.testing.assert_array_equal(read_split(out, bench, index, size), decoded)
        np.testing.assert_array_equal(load_split_images(bench, index, size, cache=out), decoded)
    with h5py.File(out, "r") as h5:
        assert h5.attrs["fingerprint"] == bench.fingerprint and h5.attrs["size"] == size
        assert h5["daimlerpedcls/train/images"].chunks is None  # contiguous
        assert h5["daimlerpedcls/test/labels"].dtype == np.int64
        assert list(h5["daimlerpedcls/val/image_ids"]) == bench.split("daimlerpedcls", "val").image_ids
    assert read_split(out, bench, bench.split("gtsrb", "train"), size) is None  # not packed


def test_interrupted_pack_leaves_no_file(make_root, tmp_path: Path, monkeypatch) -> None:
    bench = Benchmark.open(make_root())
    decode = cache_module.decode_files
    calls = []

    def failing(paths, size, geometry):
        calls.append(len(paths))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return decode(paths, size, geometry)

    monkeypatch.setattr(cache_module, "decode_files", failing)
    out = tmp_path / "cache" / "pack.h5"
    with pytest.raises(KeyboardInterrupt):
        pack(bench, out, 36, progress=False)
    assert len(calls) == 3
    assert list(out.parent.iterdir()) == []


def test_squashed_and_square_caches_coexist_and_hold_what_the_recipe_reads(make_root, tmp_path: Path) -> None:
    bench = Benchmark.open(make_root(("alpha", "gtsrb")))  # 80x72 images
    square = pack(bench, default_cache_path(tmp_path, bench, 36), 36, progress=False)
    squash = pack(
        bench, default_cache_path(tmp_path, bench, 36, "squash"), 36, progress=False, geometry="squash"
    )
    assert square != squash and square.exists() and squash.exists()
    index = bench.split("gtsrb", "test")
    squashed = read_split(squash, bench, index, 36, "squash")
    for image, name in zip(squashed, index.files, strict=True):  # the whole image, aspect ratio not kept
        with Image.open(bench.root / name) as original:
            resized = original.convert("RGB").resize((36, 36), Image.BILINEAR)
        np.testing.assert_array_equal(image, np.asarray(resized).transpose(2, 0, 1))
    centre = read_split(square, bench, index, 36)
    assert not np.array_equal(centre, squashed)
    assert read_split(square, bench, index, 36, "squash") is None  # a file never serves the other geometry
    assert read_split(squash, bench, index, 36) is None
    # NetTailor's recipe reads gtsrb squashed, a task it does not squash (and every other recipe) as squares
    np.testing.assert_array_equal(task_images(bench, "gtsrb", "test", 36, "nettailor", tmp_path), squashed)
    np.testing.assert_array_equal(
        task_images(bench, "gtsrb", "test", 36, "residual_adapters", tmp_path), centre
    )
    alpha = bench.split("alpha", "test")
    np.testing.assert_array_equal(
        task_images(bench, "alpha", "test", 36, "nettailor", tmp_path), read_split(square, bench, alpha, 36)
    )


def test_truncated_cache_raises(make_root, tmp_path: Path) -> None:
    bench = Benchmark.open(make_root())
    out = pack(bench, tmp_path / "c.h5", 36, progress=False)
    out.write_bytes(out.read_bytes()[: out.stat().st_size // 2])
    with pytest.raises(DataError, match=r"c\.h5: .*delete it and re-pack"):
        read_split(out, bench, bench.split("alpha", "train"), 36)


def test_other_fingerprint_or_size_reads_none(make_root, tmp_path: Path) -> None:
    root = make_root()
    bench = Benchmark.open(root)
    out = pack(bench, tmp_path / "c.h5", 36, tasks=["alpha"], progress=False)
    index = bench.split("alpha", "train")
    assert read_split(out, bench, index, 36) is not None
    assert read_split(out, bench, index, 72) is None
    path = root / "annotations" / "alpha_val.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "licenses": ["changed"]}))
    changed = Benchmark.open(root)
    assert changed.fingerprint != bench.fingerprint
    assert read_split(out, changed, changed.split("alpha", "train"), 36) is None


def test_task_mean_std_official_or_computed_once(make_root, tmp_path: Path, monkeypatch) -> None:
    bench = Benchmark.open(make_root(("alpha", "gtsrb")))
    assert task_mean_std(bench, "gtsrb") == (DECATHLON["gtsrb"].mean, DECATHLON["gtsrb"].std)
    images = load_split_images(bench, bench.split("alpha", "train"), 72)
    pixels = images.transpose(1, 0, 2, 3).reshape(3, -1) / 255.0
    mean, std = task_mean_std(bench, "alpha", results=tmp_path)
    np.testing.assert_allclose(mean, pixels.mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(std, pixels.std(axis=1), rtol=1e-9)
    stats = json.loads((tmp_path / "cache" / "stats.json").read_text())
    assert list(stats) == [f"{bench.fingerprint}/alpha"]
    monkeypatch.setattr(normalization, "load_split_images", lambda *a: pytest.fail("decoded again"))
    assert task_mean_std(bench, "alpha", results=tmp_path) == (mean, std)
    assert task_mean_std(bench, "alpha", images=images) == (mean, std)


def test_two_copies_with_the_same_annotations_and_other_images_are_told_apart(
    make_root, tmp_path: Path
) -> None:
    """Runs and packs are keyed by the annotations (a copy of the data keeps its runs); a pack of other
    images is caught by `vdd data verify --cache`, and `--digest` tells the two copies apart."""
    import shutil

    from click.testing import CliRunner

    from vdd_bench.cli import main

    root = make_root()
    other = Path(shutil.copytree(root, tmp_path / "other"))
    name = json.loads((root / "annotations" / "alpha_train.json").read_text())["images"][0]["file_name"]
    with Image.open(root / name) as image:
        image.convert("RGB").rotate(90).save(other / name, quality=40)
    assert Benchmark.open(other).fingerprint == Benchmark.open(root).fingerprint
    out = pack(Benchmark.open(root), tmp_path / "c.h5", 36, progress=False)

    def verify(where: Path, *extra: str) -> tuple[int, str]:
        result = CliRunner().invoke(main, ["data", "verify", str(where), "--no-images", *extra])
        return result.exit_code, result.output

    assert verify(root, "--cache", str(out))[0] == 0
    code, text = verify(other, "--cache", str(out))
    assert code == 1 and "alpha/train was packed from other images than this root's" in text
    assert "beta/" not in text
    digests = [
        dict(re.findall(r"^(alpha|beta) +([0-9a-f]{64})$", verify(where, "--digest")[1], re.M))
        for where in (root, other)
    ]
    assert digests[0]["beta"] == digests[1]["beta"] and digests[0]["alpha"] != digests[1]["alpha"]
