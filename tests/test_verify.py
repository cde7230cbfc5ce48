from __future__ import annotations

import json
import shutil
from pathlib import Path

from vdd_bench.verify import format_report, verify


def test_mini_decathlon_verifies(mini_root: Path) -> None:
    report = verify(mini_root)
    assert report.ok and report.problems == [], format_report(report)
    rows = {r["task"]: r for r in report.summary_rows()}
    assert len(rows) == 8 and rows["gtsrb"]["train"] == 688 and rows["gtsrb"]["status"] == "OK"
    assert "0 error(s), 0 warning(s): OK" in format_report(report)


def _copy_tasks(mini_root: Path, root: Path, tasks: tuple[str, ...]) -> None:
    (root / "annotations").mkdir(parents=True)
    for task in tasks:
        for path in (mini_root / "annotations").glob(f"{task}_*.json"):
            shutil.copyfile(path, root / "annotations" / path.name)
        shutil.copytree(mini_root / "data" / task, root / "data" / task, copy_function=shutil.copyfile)


def test_broken_copy_reports_every_defect_with_its_file(mini_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "broken"
    _copy_tasks(mini_root, root, ("daimlerpedcls", "mnist"))
    train = json.loads((root / "annotations" / "daimlerpedcls_train.json").read_text())
    missing, truncated = train["images"][0]["file_name"], train["images"][1]["file_name"]
    (root / missing).unlink()
    jpeg = (root / truncated).read_bytes()
    (root / truncated).write_bytes(jpeg[: len(jpeg) // 2])
    train["annotations"][2]["category_id"] = 99999999
    (root / "annotations" / "daimlerpedcls_train.json").write_text(json.dumps(train))
    val = root / "annotations" / "mnist_val.json"
    val.write_text(val.read_text()[:-10])

    report = verify(root)
    assert not report.ok
    found = {(p.severity, p.file): p.message for p in report.problems}
    assert "missing" in found[("error", missing)]
    assert "cannot decode" in found[("error", truncated)]
    assert "99999999" in found[("error", "annotations/daimlerpedcls_train.json")]
    assert "malformed JSON at line" in found[("error", "annotations/mnist_val.json")]
    assert sum(p.severity == "error" for p in report.problems) == 4
    # a two-task copy numbers its tasks k = 1, 2: the mini's k = 2 and 6 are id-rule warnings here
    assert {p.file for p in report.problems if p.severity == "warning"} >= {"annotations/mnist_train.json"}
    text = format_report(report)
    for file in (missing, truncated, "annotations/daimlerpedcls_train.json", "annotations/mnist_val.json"):
        assert file in text
    assert "4 error(s)" in text
    statuses = {r["task"]: r["status"] for r in report.summary_rows()}
    assert statuses == {"daimlerpedcls": "errors", "mnist": "errors"}


def test_missing_annotations_folder(tmp_path: Path) -> None:
    report = verify(tmp_path)
    assert not report.ok and report.problems[0].file == "annotations"
    assert "no annotations folder" in report.problems[0].message


def test_decathlon_root_is_held_to_the_official_facts(make_root) -> None:
    root = make_root(("aircraft", "cifar100"))  # k = 1, 2: the official prefixes of these two tasks
    report = verify(root, check_images=False)
    errors = [p for p in report.problems if p.severity == "error"]
    assert report.kind == "decathlon" and len(errors) == 8  # 2 class counts + 2 x 3 split sizes
    assert any(
        p.file == "annotations/aircraft_train.json"
        and p.message == "task aircraft split train: expected 3334 images (official), found 6"
        for p in errors
    )
    assert {r["status"] for r in report.summary_rows()} == {"mismatch"}
    assert report.summary_rows()[0]["official"] == "3334/3333/3333"


def test_id_rules_warn_on_custom_roots_and_fail_on_the_decathlon(make_root) -> None:
    custom = make_root(("beta", "alpha"), folder="custom")  # written with k = 1, 2 in the wrong order
    report = verify(custom, check_images=False)
    assert report.ok and {p.severity for p in report.problems} == {"warning"}
    assert any(
        "k*10^7 + index with k=2" in p.message and p.file == "annotations/beta_train.json"
        for p in report.problems
    )
    official = make_root(("cifar100", "aircraft"), folder="official")
    problems = verify(official, check_images=False).problems
    assert any(p.severity == "error" and "image ids outside" in p.message for p in problems)
