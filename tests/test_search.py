"""Search spaces and trials: reproducible draws, trial 0 the defaults, a trial an ordinary planned run."""

from __future__ import annotations

from pathlib import Path

import pytest

from vdd_bench.method import METHODS
from vdd_bench.search import Choice, LogUniform, Uniform, trial_values
from vdd_bench.sweep import SweepSpec

LISTED = [name for name in METHODS.names() if METHODS.get(name).listed and ":" not in name]


@pytest.mark.parametrize("name", LISTED)
def test_every_listed_method_searches_keys_of_its_own_and_every_draw_resolves(name: str) -> None:
    cls = METHODS.get(name)
    assert cls.search_space, f"{name} declares no search space"
    assert set(cls.search_space) <= set(cls.defaults)
    for trial in range(1, 30):
        drawn = trial_values(cls.search_space, name, "some-task", trial, fixed=set())
        resolved = cls.resolve(drawn, name)  # refuses a value out of its key's range or of the wrong type
        for key, value in drawn.items():
            space = cls.search_space[key]
            if isinstance(space, Choice):
                assert value in space.options
            else:
                assert space.low * 0.999 <= value <= space.high * 1.001, (key, value, space)
            assert resolved[key] == value


def test_a_trial_is_the_same_draw_every_time_and_another_trial_or_task_is_another() -> None:
    space = {"lr": LogUniform(1e-4, 1.0), "prune": Uniform(0.5, 0.9), "t": Choice((1.0, 2.0, 4.0))}
    first = trial_values(space, "m", "alpha", 1, set())
    assert first == trial_values(space, "m", "alpha", 1, set())
    assert trial_values(space, "m", "alpha", 0, set()) == {}  # trial 0: the defaults
    others = [trial_values(space, "m", "alpha", t, set()) for t in range(2, 6)]
    others += [trial_values(space, "m", "beta", 1, set()), trial_values(space, "other", "alpha", 1, set())]
    assert all(o["lr"] != first["lr"] for o in others)


def test_a_key_the_user_fixed_is_not_drawn_and_the_others_draw_as_before() -> None:
    space = {"lr": LogUniform(1e-4, 1.0), "prune": Uniform(0.5, 0.9), "t": Choice((1.0, 2.0, 4.0))}
    free = trial_values(space, "m", "alpha", 3, set())
    fixed = trial_values(space, "m", "alpha", 3, {"lr"})
    assert "lr" not in fixed and fixed == {k: v for k, v in free.items() if k != "lr"}


def _sweep(toy_root: Path, toy_backbone: Path, **keys) -> SweepSpec:
    return SweepSpec.from_mapping(
        {"benchmark": str(toy_root), "backbone_checkpoint": str(toy_backbone), **keys}, "test"
    )


def test_trials_are_ordinary_runs_and_trial_0_is_the_sweep_without_a_search(
    toy_root: Path, toy_backbone: Path
) -> None:
    plain = _sweep(toy_root, toy_backbone, methods=["feature"], tasks=["colors", "shapes"]).expand()
    searched = _sweep(
        toy_root, toy_backbone, methods=["feature"], tasks=["colors", "shapes"], search={"trials": 4}
    ).expand()
    assert len(searched) == 8 and len({r.config.run_id for r in searched}) == 8
    assert [r.config.run_id for r in searched if r.config.trial == 0] == [r.config.run_id for r in plain]
    by_trial = {(r.config.trial, r.config.task): r.config.hparams for r in searched}
    defaults = METHODS.get("feature").defaults
    assert by_trial[(0, "colors")]["lr"] == defaults["lr"]
    assert len({by_trial[(t, "colors")]["lr"] for t in range(4)}) == 4
    assert by_trial[(2, "colors")]["lr"] != by_trial[(2, "shapes")]["lr"]  # drawn per task
    again = _sweep(
        toy_root, toy_backbone, methods=["feature"], tasks=["colors", "shapes"], search={"trials": 4}
    ).expand()
    assert [r.config.run_id for r in again] == [r.config.run_id for r in searched]


def test_a_key_set_in_the_sweep_holds_in_every_trial_and_a_method_with_nothing_to_search_runs_once(
    toy_root: Path, toy_backbone: Path
) -> None:
    spec = _sweep(
        toy_root,
        toy_backbone,
        methods=["finetune", "feature"],
        tasks=["colors"],
        search={"trials": 3},
        hparams={"finetune": {"lr": 0.05}, "feature": {"lr": 0.05, "weight_decay": 0.0}},
    )
    requests = spec.expand()
    finetune = [r.config for r in requests if r.config.method == "finetune"]
    assert [c.trial for c in finetune] == [0, 1, 2]
    assert {c.hparams["lr"] for c in finetune} == {0.05}
    assert len({c.hparams["weight_decay"] for c in finetune}) == 3
    assert [r.config.trial for r in requests if r.config.method == "feature"] == [0]


def test_a_dependent_method_keeps_its_dependencies_per_trial(toy_root: Path, toy_backbone: Path) -> None:
    """A NetTailor trial reads a teacher of its own trial's teacher lr; a PackNet trial is one chain whose
    every step has the trial's values."""
    spec = _sweep(
        toy_root,
        toy_backbone,
        methods=["nettailor", "packnet"],
        tasks=["colors", "shapes"],
        search={"trials": 3},
    )
    requests = spec.expand()
    tailored = [r for r in requests if r.config.method == "nettailor" and r.config.task == "colors"]
    teachers = [r.inputs["teacher"].config for r in tailored]
    assert [t.hparams["lr"] for t in teachers] == [r.config.hparams["teacher_lr"] for r in tailored]
    assert len({t.run_id for t in teachers}) == 3
    chains = {}
    for request in (r for r in requests if r.config.method == "packnet"):
        values = {k: request.config.hparams[k] for k in METHODS.get("packnet").search_space}
        chains.setdefault(request.config.trial, []).append(values)
    assert sorted(chains) == [0, 1, 2]
    for steps in chains.values():
        assert len(steps) == 2 and steps[0] == steps[1]
    assert chains[1] != chains[2]


def test_a_bad_search_section_is_refused_naming_the_file() -> None:
    from vdd_bench.errors import VddError

    for search in ({"trials": 0}, {"trials": "5"}, {"trails": 5}):
        with pytest.raises(VddError, match="sweep.yaml: search"):
            SweepSpec.from_mapping({"benchmark": "x", "search": search}, "sweep.yaml")


def test_vdd_methods_search_lists_every_listed_methods_space() -> None:
    import json

    from click.testing import CliRunner

    from vdd_bench.cli import main

    listed = json.loads(CliRunner().invoke(main, ["methods", "--search", "--json"]).output)
    assert set(LISTED) <= set(listed)
    for name in LISTED:
        assert listed[name] == {k: str(v) for k, v in METHODS.get(name).search_space.items()}
    assert listed["piggyback"]["lr"] == "log-uniform [1e-06, 0.001]"


def searched_rows(doc: Path) -> dict[str, str]:
    """The searched hyper-parameters table of docs/search.md: each method named in a row -> the row's text."""
    rows: dict[str, str] = {}
    lines = doc.read_text().splitlines()
    start = lines.index("| method | searched hyper-parameters |") + 2
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        names, text = line.strip("|").split("|", 1)
        for name in names.replace("`", "").split(","):
            assert name.strip() not in rows, f"{name.strip()} has two rows"
            rows[name.strip()] = text
    return rows


def test_the_search_spaces_in_the_docs_are_the_ones_the_methods_declare() -> None:
    rows = searched_rows(Path(__file__).resolve().parents[1] / "docs" / "search.md")
    assert set(rows) == set(LISTED)
    for name in LISTED:
        for key, space in METHODS.get(name).search_space.items():
            assert f" {key} " in rows[name] or f" {key}," in rows[name], f"docs/search.md: {name} lacks {key}"
            assert str(space) in rows[name], f"docs/search.md: {name}.{key} is {space}"
