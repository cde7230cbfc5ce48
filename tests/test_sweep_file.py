"""Sweep files are parsed safely and checked against a schema before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from vdd_bench.config import RunSettings
from vdd_bench.errors import VddError
from vdd_bench.method import resolve_hparams
from vdd_bench.sweep import SweepSpec


def test_a_valid_sweep_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(
        "benchmark: data\nmethods: [finetune, feature]\nseeds: [0, 1]\nhparams:\n  all: {lr: 0.01}\n"
    )
    spec = SweepSpec.from_file(path)
    assert spec.method_names() == ["finetune", "feature"]
    assert spec.overrides_for("finetune") == {"lr": 0.01}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("benchmark: data\nmethod: [finetune]\n", "unknown key 'method'"),
        ("benchmark: data\nseeds: 3\n", "seeds must be list"),
        ("benchmark: data\nseeds: [a]\n", "seeds must be a list of integers"),
        ("methods: [finetune]\n", "'benchmark'"),
        ("benchmark: data\nepoch_scale: fast\n", "epoch_scale must be"),
        ("- a\n- b\n", "must be a mapping"),
        ("benchmark: [unclosed\n", "cannot read sweep file"),
    ],
)
def test_bad_sweep_files_are_refused_with_the_file_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    with pytest.raises(VddError, match=message) as info:
        SweepSpec.from_file(path)
    assert str(path) in str(info.value)


def test_hyper_parameters_are_checked_and_typed() -> None:
    defaults = {"lr": 0.1, "epochs": 120, "milestones": [0.5], "optimizer": "sgd"}
    resolved = resolve_hparams(defaults, {"lr": "0.01", "epochs": "3", "milestones": "0.3,0.6"}, "m")
    assert resolved == {"lr": 0.01, "epochs": 3, "milestones": [0.3, 0.6], "optimizer": "sgd"}
    with pytest.raises(VddError, match="unknown hyper-parameter 'lrr'"):
        resolve_hparams(defaults, {"lrr": 1}, "m")
    with pytest.raises(VddError, match="bad value 'x' for m.epochs"):
        resolve_hparams(defaults, {"epochs": "x"}, "m")
    with pytest.raises(VddError, match="hparams.all.nope"):
        SweepSpec(benchmark="d", methods=["finetune"], hparams={"all": {"nope": 1}}).overrides_for("finetune")


def test_methods_on_the_command_line_narrow_a_file_with_sections_for_others(
    toy_root: Path, toy_backbone: Path, tmp_path: Path
) -> None:
    """`vdd sweep --file F --methods m` runs m with F's settings; F's sections for other methods go."""
    from click.testing import CliRunner

    from vdd_bench.cli import main

    path = tmp_path / "sweep.yaml"
    path.write_text(
        f"benchmark: {toy_root}\nmethods: [finetune, lwf]\ntasks: [colors]\n"
        "hparams:\n  all: {epochs: 2}\n  lwf: {warmup_epochs: 2}\n  finetune: {lr: 0.01}\n"
    )
    args = ["sweep", "--file", str(path), "--backbone-checkpoint", str(toy_backbone), "--dry-run"]
    ran = CliRunner().invoke(main, [*args, "--methods", "feature", "--results", str(tmp_path)])
    assert ran.exit_code == 0, ran.output
    assert ran.output.count("\n") == 1 and "feature--colors--" in ran.output
    spec = SweepSpec.from_file(path)
    assert spec.overrides_for("lwf") == {"epochs": 2, "warmup_epochs": 2}


def test_set_on_the_command_line_overrides_a_files_own_section_for_a_method(
    toy_root: Path, toy_backbone: Path, tmp_path: Path
) -> None:
    """`--set lr=0.05` is the user's last word: over the file's `all` and over `finetune: {lr: 0.01}`."""
    from click.testing import CliRunner

    from vdd_bench.cli import main

    def run_ids(text: str, *sets: str) -> list[str]:
        path = tmp_path / "sweep.yaml"
        path.write_text(f"benchmark: {toy_root}\nmethods: [finetune, feature]\ntasks: [colors]\n{text}")
        args = ["sweep", "--file", str(path), "--backbone-checkpoint", str(toy_backbone), "--dry-run"]
        ran = CliRunner().invoke(main, [*args, *sets, "--results", str(tmp_path)])
        assert ran.exit_code == 0, ran.output
        return sorted(ran.output.split())

    sections = "hparams:\n  all: {lr: 0.2}\n  finetune: {lr: 0.01}\n"
    overridden = run_ids(sections, "--set", "lr=0.05")
    assert overridden == run_ids("hparams:\n  all: {lr: 0.05}\n")
    assert overridden != run_ids(sections)


def test_a_preset_is_a_set_of_values_under_the_users_own(toy_root: Path, toy_backbone: Path) -> None:
    from click.testing import CliRunner

    from vdd_bench.cli import main
    from vdd_bench.method import METHODS
    from vdd_bench.runner import plan_run

    nettailor = METHODS.get("nettailor")
    demo = nettailor.resolve({"preset": "nettailor-demo", "epochs": 3}, "nettailor")
    assert demo["lr"] == 0.1 and demo["complexity_weight"] == 0.3 and demo["candidates"] == [11]
    assert demo["epochs"] == 3  # the user's value over the preset's
    with pytest.raises(VddError, match="unknown preset 'nope' for method nettailor: its presets are"):
        nettailor.resolve({"preset": "nope"}, "nettailor")
    with pytest.raises(VddError, match="unknown preset 'nettailor-demo' for method finetune"):
        METHODS.get("finetune").resolve({"preset": "nettailor-demo"}, "finetune")
    # part of the run's hash as values: the preset and the same values given one by one are one run
    settings = RunSettings(toy_root, backbone_checkpoint=toy_backbone)
    by_name = plan_run(settings, "colors", "finetune", {"preset": "readme-flags"})
    by_value = plan_run(settings, "colors", "finetune", {"weight_decay": 5e-4})
    default = plan_run(settings, "colors", "finetune", {})
    assert by_name.config.run_id == by_value.config.run_id != default.config.run_id
    listed = CliRunner().invoke(main, ["methods", "--preset"])
    assert listed.exit_code == 0 and "nettailor-paper (nettailor): " in listed.output
