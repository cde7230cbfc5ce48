"""Golden files: the leaderboard of the fake runs in tests/golden/runs must be exactly tests/golden/expected/.

The runs are made-up records (written by tests/golden/make_runs.py, checked in): a custom benchmark with
seeds to average, a fine-tuning baseline with a saturated task, missing runs, a NetTailor selection and an
internal step that must not show, and two decathlon tasks scored against the official baselines beside the
published rows. After an intended change of the output, regenerate the expected files with

    VDD_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py

and review the diff by eye before committing it.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from vdd_bench import plots
from vdd_bench.cli import main
from vdd_bench.config import RunConfig
from vdd_bench.leaderboard import Expected, build_groups
from vdd_bench.store import RunStore
from vdd_bench.tables import render_groups

GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("VDD_UPDATE_GOLDEN") == "1"


def check(name: str, text: str) -> None:
    path = GOLDEN / "expected" / name
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with VDD_UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(), f"{name} differs from {path} (VDD_UPDATE_GOLDEN=1 regenerates it)"


@pytest.mark.parametrize(
    ("fmt", "suffix"), [("markdown", "md"), ("latex", "tex"), ("csv", "csv"), ("json", "json")]
)
def test_the_leaderboard_of_the_golden_runs(fmt: str, suffix: str) -> None:
    """Every setting its own row (`--select default`; the golden runs have two fine-tuning settings)."""
    args = ["leaderboard", "--results", str(GOLDEN), "--format", fmt, "--select", "default"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    check(f"leaderboard.{suffix}", result.output)


def test_a_sweep_names_its_missing_runs_by_id() -> None:
    records = list(RunStore(GOLDEN).done_records())
    bench = next(r.benchmark for r in records if r.benchmark.kind == "custom")
    configs = [RunConfig.from_dict(c) for c in json.loads((GOLDEN / "expected_runs.json").read_text())]
    expected = [Expected(c, bench, "vdd sweep --file sweep.yaml") for c in configs]
    groups = build_groups(records, "test", expected, select="default")
    check("leaderboard-sweep.md", render_groups(groups, "markdown") + "\n")


def test_the_figures_of_the_golden_runs_render(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["plot", "--results", str(GOLDEN), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(
        f"{stem}.{ext}"
        for stem in [
            "custom-golden-c0ffee000001-accuracy-vs-params",
            "custom-golden-c0ffee000001-score-vs-macs",
            "custom-golden-c0ffee000001-nettailor-blocks",
            "decathlon-1.0-dec000000001-accuracy-vs-params",
            "decathlon-1.0-dec000000001-score-vs-macs",
        ]
        for ext in ("png", "pdf")
    )
    assert all((tmp_path / n).stat().st_size > 5000 for n in names)


def test_accuracy_vs_params_has_a_point_per_task_and_a_mean_point_per_complete_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = [r for r in RunStore(GOLDEN).done_records() if r.benchmark.kind == "custom"]
    [group] = build_groups(records, select="default")
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, out, stem, formats: figures.append(fig) or [])
    plots.accuracy_vs_params(group, tmp_path)
    axes = figures[0].axes[: len(group.tasks) + 1]
    rows = [r for r in group.rows if r.accs]
    for ax, task in zip(axes, group.tasks, strict=False):
        assert ax.get_title() == task
        assert len(ax.get_legend_handles_labels()[1]) == sum(task in r.accs for r in rows)
    mean_axes = axes[len(group.tasks)]
    complete = [r for r in rows if all(t in r.accs for t in group.tasks)]
    assert 0 < len(complete) < len(rows)  # the golden runs have rows with missing tasks
    assert mean_axes.get_title().startswith("mean over")
    assert len(mean_axes.get_legend_handles_labels()[1]) == len(complete)
    row = complete[0]
    params, acc, _ = plots._mean_point(row, group.tasks)
    assert acc == pytest.approx(sum(row.accs.values()) / len(group.tasks))
    assert params == pytest.approx(sum(row.task_params[t] for t in group.tasks) / len(group.tasks))


def test_a_teacher_run_is_not_the_baseline_when_a_complete_sweep_row_is_there() -> None:
    records = [r for r in RunStore(GOLDEN).done_records() if r.benchmark.kind == "custom"]
    clones = []
    for record in records:
        if record.method == "feature":  # a second complete fine-tuning row, read by no other run
            config = replace(record.config, method="finetune", hparams={**record.config.hparams, "lr": 0.5})
            clones.append(replace(record, config=config, run_id=record.run_id + "x"))
    for ordering in (records + clones, clones + records):
        [group] = build_groups(ordering, select="default")
        assert "baselines are this group's finetune [lr=0.5] accuracies" in group.baseline_note


def test_vdd_score_with_the_leaderboard_json_as_baselines_gives_the_leaderboard_score(tmp_path: Path) -> None:
    board = CliRunner().invoke(
        main, ["leaderboard", "--results", str(GOLDEN), "--format", "json", "--benchmark", "c0ffee000001"]
    )
    (tmp_path / "board.json").write_text(board.output)
    [group] = json.loads(board.output)
    feature = next(r for r in group["rows"] if r["method"] == "feature")
    (tmp_path / "feature.json").write_text(json.dumps(feature["accuracy"]))
    args = ["score", str(tmp_path / "feature.json"), "--baselines", str(tmp_path / "board.json"), "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    scored = json.loads(result.output)["feature"]
    assert scored["per_task"] == pytest.approx(feature["score"]) and scored["total"] == feature["score_total"]


SEARCH = GOLDEN / "search"


@pytest.mark.parametrize(
    ("rule", "fmt", "suffix"),
    [
        ("val", "markdown", "md"),
        ("val", "latex", "tex"),
        ("oracle", "markdown", "md"),
        ("default", "markdown", "md"),
    ],
)
def test_the_selected_leaderboard_of_a_search(rule: str, fmt: str, suffix: str) -> None:
    """A search's table under each rule, with the rule under it and (val) the chosen setting of each cell."""
    args = ["leaderboard", "--results", str(SEARCH), "--format", fmt, "--select", rule, "--show-choice"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    check(f"search-{rule}.{suffix}", result.output)


def test_val_is_the_rule_when_a_search_is_there() -> None:
    plain = CliRunner().invoke(main, ["leaderboard", "--results", str(SEARCH), "--show-choice"]).output
    assert plain == (GOLDEN / "expected" / "search-val.md").read_text()
