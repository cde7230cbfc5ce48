"""`vdd score` on a challenge-format predictions file with a test-labels folder."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from vdd_bench.cli import main


def test_a_predictions_file_is_scored_against_the_test_labels(toy_root: Path, tmp_path: Path) -> None:
    predictions, expected = [], {}
    for task in ("colors", "shapes"):
        labels = json.loads((toy_root / "annotations" / f"{task}_test.json").read_text())
        categories = sorted(c["id"] for c in labels["categories"])
        anns = labels["annotations"]
        wrong = 0 if task == "colors" else len(anns) // 4  # colors all right, shapes a quarter wrong
        for i, ann in enumerate(anns):
            category = ann["category_id"]
            if i < wrong:
                category = next(c for c in categories if c != category)
            predictions.append({"image_id": ann["image_id"], "category_id": category})
        expected[task] = 100.0 * (len(anns) - wrong) / len(anns)
    pred_file = tmp_path / "predictions.json"
    pred_file.write_text(json.dumps(predictions))
    labels_dir = tmp_path / "labels"
    labels_dir.mkdir()
    for task in expected:
        (labels_dir / f"{task}_test.json").write_bytes(
            (toy_root / "annotations" / f"{task}_test.json").read_bytes()
        )
    baselines = tmp_path / "baselines.json"
    baselines.write_text(json.dumps({"colors": 90.0, "shapes": 50.0}))

    args = ["score", str(pred_file), "--labels", str(labels_dir), "--baselines", str(baselines), "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    [scored] = json.loads(result.output).values()
    assert scored["accuracy"] == expected
    # colors: no error -> 1000; shapes: error E against Emax = 2 * 50% -> 1000 * (1 - E)^2
    assert scored["per_task"]["colors"] == 1000.0
    shapes_error = 1 - expected["shapes"] / 100
    assert abs(scored["per_task"]["shapes"] - 1000 * (1 - shapes_error) ** 2) < 1e-6

    duplicated = tmp_path / "dup.json"
    duplicated.write_text(json.dumps(predictions + predictions[:1]))
    bad = CliRunner().invoke(
        main, ["score", str(duplicated), "--labels", str(labels_dir), "--baselines", str(baselines)]
    )
    assert bad.exit_code == 2 and "error:" in bad.output
