from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from vdd_bench.benchmark import Benchmark
from vdd_bench.errors import DataError

# classes, train, val, test: the table of the mini-decathlon's SOURCES.md
MINI = {
    "cifar10": (10, 800, 200, 500),
    "daimlerpedcls": (2, 400, 100, 200),
    "dtd10": (10, 600, 300, 300),
    "flowers17": (17, 867, 221, 272),
    "gtsrb": (43, 688, 172, 430),
    "mnist": (10, 800, 200, 500),
    "omniglot242": (242, 2904, 726, 1210),
    "tinyimagenet100": (100, 8000, 2000, 2500),
}


def _edit(path: Path, change) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def test_mini_tasks_sizes_and_kind(mini_root: Path) -> None:
    bench = Benchmark.open(mini_root)
    assert bench.task_names() == sorted(MINI)
    assert (bench.kind, bench.name) == ("custom", "custom-mini-decathlon")
    for task, (classes, *sizes) in MINI.items():
        info = bench.tasks[task]
        assert info.num_classes == classes and info.has_test_labels
        assert [len(bench.split(task, s)) for s in ("train", "val", "test")] == sizes


def test_mini_labels_follow_category_ids(mini_root: Path) -> None:
    bench = Benchmark.open(mini_root)
    info = bench.tasks["gtsrb"]
    assert list(info.category_ids) == sorted(info.category_ids)
    for split, file in (("train", "gtsrb_train.json"), ("test", "gtsrb_test.json")):
        doc = json.loads((mini_root / "annotations" / file).read_text())
        category_of = {a["image_id"]: a["category_id"] for a in doc["annotations"]}
        index = bench.split("gtsrb", split)
        assert index.labels is not None and index.labels.dtype == np.int64
        assert [info.category_ids[c] for c in index.labels] == [category_of[i] for i in index.image_ids]
        assert index.files[0].startswith("data/gtsrb/")


def test_test_labels_from_test_json_or_none(make_root) -> None:
    root = make_root()
    labelled = Benchmark.open(root).split("alpha", "test")
    assert labelled.labels is not None and list(labelled.labels) == [0, 1, 2]
    (root / "annotations" / "alpha_test.json").unlink()
    bench = Benchmark.open(root)
    assert bench.split("alpha", "test").labels is None and not bench.tasks["alpha"].has_test_labels
    assert bench.split("alpha", "test").files == labelled.files
    assert bench.split("beta", "test").labels is not None


def test_external_test_labels_folder_and_challenge_file(make_root, tmp_path: Path) -> None:
    root = make_root()
    expected = {t: Benchmark.open(root).split(t, "test").labels for t in ("alpha", "beta")}
    folder = tmp_path / "labels"
    folder.mkdir()
    entries = []
    for task in ("alpha", "beta"):
        test_json = root / "annotations" / f"{task}_test.json"
        entries += [
            {"image_id": a["image_id"], "category_id": a["category_id"]}
            for a in json.loads(test_json.read_text())["annotations"]
        ]
        shutil.move(test_json, folder / test_json.name)
    challenge = tmp_path / "submission.json"
    challenge.write_text(json.dumps(entries))
    assert Benchmark.open(root).split("alpha", "test").labels is None
    for source in (folder, challenge):
        bench = Benchmark.open(root, test_labels=source)
        for task, labels in expected.items():
            assert bench.tasks[task].has_test_labels
            np.testing.assert_array_equal(bench.split(task, "test").labels, labels)
    challenge.write_text(json.dumps(entries[1:]))
    with pytest.raises(DataError, match="submission.json: no label for test image ids"):
        Benchmark.open(root, test_labels=challenge).split("alpha", "test")


def test_fingerprint_is_about_content_not_paths(make_root, tmp_path: Path) -> None:
    root = make_root()
    first = Benchmark.open(root).fingerprint
    assert len(first) == 12 and int(first, 16) >= 0
    assert Benchmark.open(root).fingerprint == first
    copy = shutil.copytree(root, tmp_path / "elsewhere" / "renamed")
    assert Benchmark.open(copy).fingerprint == first
    _edit(copy / "annotations" / "beta_val.json", lambda d: d["images"][0].update(width=81))
    assert Benchmark.open(copy).fingerprint != first


def test_kind_name_and_order(make_root) -> None:
    official = Benchmark.open(make_root(("gtsrb", "aircraft"), folder="official"))
    assert (official.kind, official.name, official.task_names()) == (
        "decathlon",
        "decathlon-1.0",
        ["aircraft", "gtsrb"],
    )
    toy = make_root(("zeta", "alpha"), folder="toy")
    for path in (toy / "annotations").glob("*.json"):
        _edit(path, lambda d: d["info"].update(description="vdd-bench toy decathlon"))
    assert Benchmark.open(toy).kind == "toy"
    custom = Benchmark.open(make_root(("zeta", "alpha"), folder="custom"))
    assert (custom.kind, custom.name, custom.task_names()) == ("custom", "custom-custom", ["alpha", "zeta"])


def _drop_annotations(root: Path) -> None:
    shutil.rmtree(root / "annotations")


def _drop_train_files(root: Path) -> None:
    for path in (root / "annotations").glob("*_train.json"):
        path.unlink()


def _malformed(root: Path) -> None:
    path = root / "annotations" / "alpha_train.json"
    path.write_text(path.read_text()[:-20])


def _unknown_category(root: Path) -> None:
    _edit(root / "annotations" / "alpha_train.json", lambda d: d["annotations"][0].update(category_id=123))


def _duplicate_ids(root: Path) -> None:
    _edit(root / "annotations" / "alpha_train.json", lambda d: d["images"][1].update(id=d["images"][0]["id"]))


def _empty_split(root: Path) -> None:
    _edit(root / "annotations" / "alpha_train.json", lambda d: d.update(images=[], annotations=[]))


def _unknown_image(root: Path) -> None:
    _edit(root / "annotations" / "alpha_train.json", lambda d: d["annotations"][0].update(image_id=5))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_drop_annotations, r"annotations: no annotations folder"),
        (_drop_train_files, r"annotations: no <task>_train.json"),
        (_malformed, r"alpha_train.json: malformed JSON at line 1 column \d+"),
        (_unknown_category, r"alpha_train.json: annotations with category ids not in .* 123"),
        (_duplicate_ids, r"alpha_train.json: duplicate image ids 10000001"),
        (_empty_split, r"alpha_train.json: no images"),
        (_unknown_image, r"alpha_train.json: annotations pointing to unknown image ids 5"),
    ],
)
def test_bad_input_names_the_file(make_root, damage, message: str) -> None:
    root = make_root()
    damage(root)
    with pytest.raises(DataError, match=message) as caught:
        bench = Benchmark.open(root)
        bench.split("alpha", "train")
    assert "\n" not in str(caught.value)


def test_unknown_task_or_split(make_root) -> None:
    bench = Benchmark.open(make_root())
    with pytest.raises(DataError, match="unknown task 'gamma'.*known tasks: alpha, beta"):
        bench.split("gamma", "train")
    with pytest.raises(DataError, match="unknown split 'dev'"):
        bench.split("alpha", "dev")
