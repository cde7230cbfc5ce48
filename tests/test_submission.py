"""`vdd submit` on the toy decathlon: the challenge file covers every test image once and scores, through
`vdd score`, to the leaderboard's own numbers."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vdd_bench.cli import main
from vdd_bench.store import RunStore


def invoke(*args: str) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def swept(toy_root: Path, toy_backbone: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    results = tmp_path_factory.mktemp("submit-results")
    sweep = results / "sweep.yaml"  # fine-tuning long enough to reach 100% on colors: a saturated baseline
    sweep.write_text(
        "methods: [finetune, feature]\n"
        "hparams:\n  all: {batch_size: 32, epochs: 2}\n  finetune: {epochs: 5}\n"
    )
    invoke(
        "sweep", "--file", sweep, "--benchmark", toy_root, "--backbone-checkpoint", toy_backbone,
        "--results", results, "--no-progress",
    )  # fmt: skip
    return results


def test_a_submission_round_trips_through_vdd_score_to_the_leaderboard(
    toy_root: Path, swept: Path, tmp_path: Path
) -> None:
    out = tmp_path / "feature.json"
    invoke("submit", "--method", "feature", "--benchmark", toy_root, "--results", swept, "-o", out)
    entries = json.loads(out.read_text())
    assert all(set(e) == {"image_id", "category_id"} for e in entries)
    ids = [e["image_id"] for e in entries]
    labels = [json.loads(f.read_text()) for f in sorted((toy_root / "annotations").glob("*_test.json"))]
    assert sorted(ids) == sorted(a["image_id"] for doc in labels for a in doc["annotations"])

    board = tmp_path / "board.json"
    board.write_text(invoke("leaderboard", "--results", swept, "--format", "json"))
    [group] = json.loads(board.read_text())
    # colors is saturated: fine-tuning's 100% is scored as 99.5% by the leaderboard and by vdd score alike
    finetune = next(r for r in group["rows"] if r["method"] == "finetune")
    assert finetune["accuracy"]["colors"] == 100.0 and group["baselines"]["colors"] == 99.5
    row = next(r for r in group["rows"] if r["method"] == "feature")
    scored = json.loads(invoke("score", out, "--labels", toy_root, "--baselines", board, "--json"))["feature"]
    assert scored["accuracy"] == pytest.approx(row["accuracy"], abs=1e-9)
    assert scored["per_task"] == pytest.approx(row["score"], abs=1e-9)
    assert scored["total"] == pytest.approx(row["score_total"], abs=1e-9)


def test_a_submission_that_would_miss_images_is_refused_with_one_line(
    toy_root: Path, swept: Path, tmp_path: Path
) -> None:
    swept = shutil.copytree(swept, tmp_path / "results")  # its predictions get damaged below
    out = tmp_path / "s.json"
    result = CliRunner().invoke(
        main, ["submit", "--method", "feature", "--seed", "1", "--benchmark", str(toy_root),
               "--results", str(swept), "-o", str(out)],
    )  # fmt: skip
    assert result.exit_code == 2 and not out.exists()
    assert result.output.startswith("error: no finished run of feature (seed 1) on task source")

    store = RunStore(swept)
    [record] = [r for r in store.done_records() if r.method == "finetune" and r.task == "colors"]
    path = store.run_dir(record.run_id) / "predictions.npz"
    saved = dict(np.load(path))
    saved["test_image_ids"], saved["test_pred"] = saved["test_image_ids"][1:], saved["test_pred"][1:]
    buffer = io.BytesIO()
    np.savez(buffer, **saved)
    path.write_bytes(buffer.getvalue())
    result = CliRunner().invoke(
        main, ["submit", "--method", "finetune", "--benchmark", str(toy_root),
               "--results", str(swept), "-o", str(out)],
    )  # fmt: skip
    assert result.exit_code == 2 and not out.exists()
    assert f"error: run {record.run_id} (task colors) predicts" in result.output
    assert "(1 missing, 0 not in the benchmark, 0 repeated)" in result.output


def test_nettailors_teacher_is_no_finetune_row_unless_asked_for_and_finetune_still_submits(
    toy_root: Path, toy_backbone: Path, swept: Path, tmp_path: Path
) -> None:
    """A run planned only as another run's input (NetTailor's teacher: fine-tuning with the teacher's
    recipe) is not a row of its own, and `vdd submit --method finetune` takes the baseline, not it."""
    results = tmp_path / "results"
    shutil.copytree(swept, results)
    invoke(
        "sweep", "--benchmark", toy_root, "--methods", "nettailor", "--tasks", "colors",
        "--backbone-checkpoint", toy_backbone, "--set", "teacher_epochs=1", "--set", "teacher_batch_size=64",
        "--set", "epochs=1", "--set", "retrain_epochs=1", "--set", "candidates=0", "--results", results,
        "--no-progress",
    )  # fmt: skip
    records = list(RunStore(results).done_records())
    [teacher_id] = {r.config.inputs["teacher"] for r in records if "teacher" in r.config.inputs}
    teacher = next(r for r in records if r.run_id == teacher_id)
    assert teacher.method == "finetune" and teacher.task == "colors"

    def finetune_rows() -> list[dict]:
        [group] = json.loads(invoke("leaderboard", "--results", results, "--format", "json"))
        assert any(r["method"] == "nettailor" for r in group["rows"])
        return [r for r in group["rows"] if r["method"] == "finetune"]

    assert len(finetune_rows()) == 1
    out = tmp_path / "finetune.json"
    invoke("submit", "--method", "finetune", "--benchmark", toy_root, "--results", results, "-o", out)
    assert len(json.loads(out.read_text())) > 0

    # asked for by name (here the done run is found, not rerun), the same run is a result of its own
    sets = [
        ("--set", f"{k}={','.join(map(repr, v)) if isinstance(v, list) else v}")
        for k, v in teacher.config.hparams.items()
    ]
    ran = invoke(
        "run", "--benchmark", toy_root, "--method", "finetune", "--task", "colors", "--backbone-checkpoint",
        toy_backbone, *[a for pair in sets for a in pair], "--results", results, "--no-progress",
    )  # fmt: skip
    assert json.loads(ran)["run_id"] == teacher_id
    assert len(finetune_rows()) == 2
