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
    # colors: no error, counted as 99.5% (the rule for baselines other than the official ones) against
    # Emax = 2 * 10% -> 1000 * (1 - 0.005 / 0.2)^2; shapes: error E against Emax = 2 * 50% -> 1000 * (1 - E)^2
    assert abs(scored["per_task"]["colors"] - 1000 * (1 - 0.005 / 0.2) ** 2) < 1e-6
    shapes_error = 1 - expected["shapes"] / 100
    assert abs(scored["per_task"]["shapes"] - 1000 * (1 - shapes_error) ** 2) < 1e-6

    duplicated = tmp_path / "dup.json"
    duplicated.write_text(json.dumps(predictions + predictions[:1]))
    bad = CliRunner().invoke(
        main, ["score", str(duplicated), "--labels", str(labels_dir), "--baselines", str(baselines)]
    )
    assert bad.exit_code == 2 and "error:" in bad.output
    # another task's category (shapes' first category on a colors image) is an error, not a wrong answer
    foreign = tmp_path / "foreign.json"
    shapes = json.loads((labels_dir / "shapes_test.json").read_text())["categories"][0]["id"]
    foreign.write_text(json.dumps([{**predictions[0], "category_id": shapes}, *predictions[1:]]))
    bad = CliRunner().invoke(
        main, ["score", str(foreign), "--labels", str(labels_dir), "--baselines", str(baselines)]
    )
    assert bad.exit_code == 2 and bad.output.count("\n") == 1
    assert f"has category_id {shapes}, which is not one of task colors's" in bad.output


def test_saturated_baselines_are_scored_by_one_rule_whichever_form_they_come_in(tmp_path: Path) -> None:
    """Fine-tuning at 99.7-100% (a custom benchmark's easy tasks): as a {task: acc} file or as the
    leaderboard's JSON, accuracies above 99.5 count as 99.5 for the baseline and the run alike, so
    fine-tuning earns 250 per task (a baseline of 100 is not refused), and the same numbers come out."""
    accuracies = tmp_path / "accs.json"
    accuracies.write_text(json.dumps({"finetune": {"a": 100.0, "b": 99.7}, "other": {"a": 99.2, "b": 98.0}}))
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"a": 100.0, "b": 99.7}))
    board = tmp_path / "board.json"
    board.write_text(json.dumps([{"baselines": {"a": 99.5, "b": 99.5}}]))
    scores = []
    for baselines in (plain, board):
        result = CliRunner().invoke(main, ["score", str(accuracies), "--baselines", str(baselines), "--json"])
        assert result.exit_code == 0, result.output
        scores.append({name: row["per_task"] for name, row in json.loads(result.output).items()})
    assert scores[0] == scores[1]
    assert scores[0]["finetune"] == {"a": 250.0, "b": 250.0}
    # 99.2% is an error of 0.8 against Emax = 2 * 0.5: 1000 * (1 - 0.8)^2; 98% is past Emax: 0
    assert abs(scores[0]["other"]["a"] - 40.0) < 1e-9 and scores[0]["other"]["b"] == 0.0
