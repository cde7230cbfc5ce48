"""`vdd score` and `vdd backbone-info` against published facts."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from vdd_bench.tasks.decathlon import DECATHLON

from vdd_bench.cli import main
from vdd_bench.reference import published_rows


def test_score_of_the_published_rows_matches_the_published_scores(tmp_path: Path) -> None:
    rows = {r["method"]: r for r in published_rows() if r.get("accuracies")}
    path = tmp_path / "published.json"
    path.write_text(json.dumps({name: row["accuracies"] for name, row in rows.items()}))
    result = CliRunner().invoke(main, ["score", str(path), "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.output)
    assert len(scores) == 5
    for name, row in rows.items():
        assert abs(scores[name]["total"] - row["score"]) <= 3, name


def test_score_of_the_baseline_is_exactly_2500_and_short_names_work(tmp_path: Path) -> None:
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps({f.short: f.baseline_acc for f in DECATHLON.values()}))
    result = CliRunner().invoke(main, ["score", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["baseline"]["total"] == 2500.0
    table = CliRunner().invoke(main, ["score", str(path)]).output
    assert "2500" in table and "ImNet" in table


def test_score_refuses_unknown_tasks_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"mnist": 99.0}))
    result = CliRunner().invoke(main, ["score", str(path)])
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and "'mnist' is not a decathlon task" in result.output
    assert result.output.count("\n") == 1


def test_backbone_info_resnet34_matches_nettailor_table() -> None:
    result = CliRunner().invoke(main, ["backbone-info", "resnet34", "--size", "224", "--json"])
    info = json.loads(result.output)
    assert abs(info["params_without_classifier"] - 21.28e6) / 21.28e6 < 0.03
    assert abs(info["macs"] - 3.6e9) / 3.6e9 < 0.03


def test_backbone_info_resnet26_is_about_6m_parameters() -> None:
    result = CliRunner().invoke(main, ["backbone-info", "resnet26", "--size", "64", "--json"])
    info = json.loads(result.output)
    assert 5.8e6 < info["params"] < 6.3e6
    assert info["blocks"] == 12
    assert "6.07M parameters" in CliRunner().invoke(main, ["backbone-info", "resnet26"]).output
