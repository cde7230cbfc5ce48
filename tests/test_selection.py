"""Model selection: the leaderboard picks among a method's settings on validation data only."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from record_helpers import make_record

from vdd_bench.cli import main
from vdd_bench.config import RunConfig
from vdd_bench.leaderboard import build_groups
from vdd_bench.method import METHODS
from vdd_bench.record import RunRecord
from vdd_bench.selection import select
from vdd_bench.store import RunStore


def _record(task: str, trial: int, lr: float, val: float, test: float, seed: int = 0) -> RunRecord:
    config = RunConfig(
        "b" * 12, "custom", task, "feature", {"epochs": 2, "lr": lr}, {"checkpoint": "c" * 12}, 36,
        seed=seed, trial=trial,
    )  # fmt: skip
    return make_record(config, {"val_acc": val, "test_acc": test})


def _chosen(records: list[RunRecord], rule: str) -> dict[tuple[str, int], int]:
    return {(c.record.task, c.record.seed): c.record.config.trial for c in select(records, rule)}


def test_val_picks_the_best_validation_run_oracle_the_best_test_and_ties_go_to_the_lower_trial() -> None:
    records = [
        _record("alpha", 0, 0.1, val=50.0, test=70.0),
        _record("alpha", 1, 0.01, val=60.0, test=55.0),
        _record("alpha", 2, 0.02, val=60.0, test=58.0),  # ties trial 1 on validation
        _record("beta", 0, 0.1, val=40.0, test=41.0),
        _record("beta", 1, 0.03, val=30.0, test=45.0),
    ]
    assert _chosen(records, "val") == {("alpha", 0): 1, ("beta", 0): 0}
    assert _chosen(records, "oracle") == {("alpha", 0): 0, ("beta", 0): 1}
    assert {c.candidates for c in select(records, "val")} == {3, 2}


def test_val_choices_never_move_when_the_test_accuracies_are_permuted() -> None:
    """Scrambling which run has which test accuracy (what permuting the test labels does to the records)
    leaves every `val` choice as it was; the oracle's choices move, so the check can fail."""
    rng = random.Random(0)
    records = [
        _record(task, trial, 10.0 ** -rng.uniform(1, 4), rng.uniform(20, 80), rng.uniform(20, 80), seed)
        for task in ("alpha", "beta", "gamma")
        for seed in (0, 1)
        for trial in range(6)
    ]
    before_val, before_oracle = _chosen(records, "val"), _chosen(records, "oracle")
    tests = [r.metrics["test_acc"] for r in records]
    moved = 0
    for attempt in range(10):
        random.Random(attempt).shuffle(tests)
        permuted = [
            replace(r, metrics={**r.metrics, "test_acc": t}) for r, t in zip(records, tests, strict=True)
        ]
        assert _chosen(permuted, "val") == before_val
        moved += _chosen(permuted, "oracle") != before_oracle
    assert moved > 0


def test_seeds_are_averaged_after_selection_and_the_default_rule_keeps_trial_0() -> None:
    records = [
        _record("alpha", 0, 0.1, val=50.0, test=60.0, seed=0),
        _record("alpha", 1, 0.01, val=70.0, test=80.0, seed=0),
        _record("alpha", 0, 0.1, val=75.0, test=90.0, seed=1),  # seed 1 keeps its defaults
        _record("alpha", 1, 0.01, val=65.0, test=70.0, seed=1),
    ]
    [group] = build_groups(records)  # search trials: val is the default rule
    assert group.rule == "val"
    [row] = group.rows
    assert row.accs["alpha"] == pytest.approx((80.0 + 90.0) / 2) and row.trial_range() == "2"
    [group] = build_groups(records, select="default")
    [row] = group.rows
    assert row.accs["alpha"] == pytest.approx((60.0 + 90.0) / 2) and group.hidden_trials == 2


def test_a_chain_method_is_selected_as_a_whole_chain() -> None:
    """PackNet's trial is one network for every task: the chain with the best mean final validation accuracy
    gives every task's cell, even where another chain is better on that task alone."""

    def chain(trial: int, lr: float, finals: dict[str, tuple[float, float]]) -> list[RunRecord]:
        steps, previous = [], {}
        for task in finals:
            config = RunConfig(
                "b" * 12, "custom", task, "packnet", {"lr": lr}, {"checkpoint": "c" * 12}, 36,
                inputs=previous, trial=trial,
            )  # fmt: skip
            steps.append(make_record(config, {"val_acc": 0.0, "test_acc": 0.0}, chain_step=True))
            previous = {"previous": config.run_id}
        accuracy = {s: {t: v[i] for t, v in finals.items()} for i, s in enumerate(("val", "test"))}
        steps[-1] = replace(steps[-1], continual={"accuracy": accuracy})
        return steps

    records = chain(0, 0.001, {"alpha": (50.0, 50.0), "beta": (90.0, 90.0)})
    records += chain(1, 0.1, {"alpha": (80.0, 81.0), "beta": (70.0, 71.0)})  # mean val 75 > 70
    # a chain that stopped after its first task (its next step diverged) does not compete, nor count
    records += chain(2, 0.3, {"alpha": (99.0, 99.0)})
    [group] = build_groups(records, select="val")
    [row] = group.rows
    assert row.accs == {"alpha": 81.0, "beta": 71.0}
    assert {c.record.config.trial for c in row.choices} == {1}
    assert row.trial_range() == "2"


@pytest.fixture
def bad_default_feature(monkeypatch: pytest.MonkeyPatch) -> None:
    """The feature extractor with a deliberately bad default learning rate (1e-6)."""
    cls = METHODS.get("feature")
    monkeypatch.setattr(cls, "defaults", {**cls.defaults, "lr": 1e-6})


def test_a_search_on_the_toy_chooses_on_validation_only_and_is_ordinary_runs(
    toy_root: Path, toy_backbone: Path, tmp_path: Path, bad_default_feature: None
) -> None:
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"benchmark: {toy_root}\nbackbone_checkpoint: {toy_backbone}\nmethods: [feature]\n"
        "tasks: [colors, digits]\nsearch: {trials: 3}\nhparams:\n  feature: {epochs: 2, batch_size: 32}\n"
    )
    results = ["--results", str(tmp_path / "results")]
    cli = CliRunner()
    listed = cli.invoke(main, ["sweep", "--file", str(sweep), *results, "--dry-run"]).output.splitlines()
    assert sorted(line.split("\t")[2] for line in listed) == ["trial 0", "trial 0", "trial 1", "trial 1",
                                                              "trial 2", "trial 2"]  # fmt: skip
    assert all(line.startswith("todo\t") for line in listed)
    ran = cli.invoke(main, ["sweep", "--file", str(sweep), *results])
    assert ran.exit_code == 0, ran.output
    assert "6 runs: 0 already done, 6 completed" in ran.output
    again = cli.invoke(main, ["sweep", "--file", str(sweep), *results])  # a relaunch runs nothing new
    assert "6 runs: 6 already done, 0 completed" in again.output
    status = cli.invoke(main, ["status", "--sweep", str(sweep), *results])
    assert status.exit_code == 0, status.output
    counts = "6 runs: 6 done, 0 running, 0 pending, 0 failed, 0 diverged, 0 todo"
    assert status.output.rstrip().endswith(counts)

    board = cli.invoke(main, ["leaderboard", *results, "--show-choice", "--format", "json"])
    [group] = json.loads(board.output)
    assert group["selection"]["rule"] == "val"
    [row] = group["rows"]
    choices = {(c["task"], c["seed"]): c for c in row["choices"]}
    assert sorted(choices) == [("colors", 0), ("digits", 0)]
    assert all(c["trial"] != 0 and c["trials"] == 3 for c in choices.values()), choices  # lr 1e-6 loses
    text = cli.invoke(main, ["leaderboard", *results, "--show-choice"]).output
    assert "selection (val)" in text and "chosen settings:" in text and "| Trials" in text

    records = list(RunStore(tmp_path / "results").done_records())
    before = _chosen(records, "val")
    rng = np.random.default_rng(0)
    for attempt in range(3):  # the test labels permuted: every test accuracy recomputed from predictions
        permuted = []
        for record in records:
            saved = np.load(tmp_path / "results" / "runs" / record.run_id / "predictions.npz")
            labels = rng.permutation(saved["test_labels"])
            test_acc = float(100.0 * np.mean(saved["test_pred"] == labels))
            permuted.append(replace(record, metrics={**record.metrics, "test_acc": test_acc}))
        assert _chosen(permuted, "val") == before, attempt

    plots = cli.invoke(main, ["plot", *results, "--out", str(tmp_path / "plots"), "--formats", "png"])
    assert plots.exit_code == 0, plots.output
    [figure] = [p for p in (tmp_path / "plots").iterdir() if p.name.endswith("-search.png")]
    assert figure.stat().st_size > 5000

    # the refit: each chosen setting again on train+val, shown as the refit of the current choice
    refit = cli.invoke(main, ["sweep", "--file", str(sweep), *results, "--refit"])
    assert refit.exit_code == 0, refit.output
    assert "2 runs: 0 already done, 2 completed" in refit.output
    refits = [r for r in RunStore(tmp_path / "results").done_records() if r.config.protocol == "trainval"]
    chosen = {(c.record.task, c.record.seed): c.record for c in select(records, "val")}
    for record in refits:
        source = chosen[(record.task, record.seed)]
        assert record.config.extra == {"refit_of": source.run_id}
        assert record.config.hparams == source.config.hparams and record.accuracy("val") is None
    groups = json.loads(cli.invoke(main, ["leaderboard", *results, "--format", "json"]).output)
    [refit_group] = [g for g in groups if g["benchmark"]["protocol"] == "trainval"]
    assert refit_group["selection"]["rule"] == "refit"
    [row] = refit_group["rows"]
    assert row["label"] == "feature (refit on train+val)"
    assert row["accuracy"] == {r.task: r.accuracy("test") for r in refits}


def test_a_chain_methods_refit_is_its_chosen_chain_again_on_train_and_val(
    toy_root: Path, toy_backbone: Path, tmp_path: Path
) -> None:
    """Made-up results for a PackNet search of two chains (trial 1 better on validation): the refit is that
    chain's setting, step by step in the same order under trainval, each step naming the step it refits."""
    from vdd_bench.refit import plan_refits
    from vdd_bench.sweep import SweepSpec

    spec = SweepSpec.from_mapping(
        {"benchmark": str(toy_root), "backbone_checkpoint": str(toy_backbone), "methods": ["packnet"],
         "tasks": ["colors", "shapes"], "search": {"trials": 2}},
        "test",
    )  # fmt: skip
    requests = spec.expand()
    store = RunStore(tmp_path)
    with pytest.raises(Exception, match="--refit needs the whole search done: 4 of its 4 runs"):
        plan_refits(requests, store)
    finals = {0: {"colors": 60.0, "shapes": 50.0}, 1: {"colors": 70.0, "shapes": 65.0}}
    for request in requests:
        config = request.config
        store.start(config)
        store.finish(make_record(config, {"val_acc": 1.0, "test_acc": 1.0}, chain_step=True))
        if config.hparams["last_in_chain"]:
            accuracy = {split: finals[config.trial] for split in ("val", "test")}
            (store.run_dir(config.run_id) / "continual.json").write_text(json.dumps({"accuracy": accuracy}))
    refits = plan_refits(requests, store)
    chosen = [r.config for r in requests if r.config.trial == 1]
    assert [r.config.task for r in refits] == ["colors", "shapes"]
    assert all(r.config.protocol == "trainval" for r in refits)
    assert [r.config.hparams for r in refits] == [c.hparams for c in chosen]
    assert [r.config.extra["refit_of"] for r in refits] == [c.run_id for c in chosen]
    assert refits[1].config.inputs["previous"] == refits[0].config.run_id


def test_a_train_val_table_shows_the_refit_of_the_current_choice_beside_plain_train_val_runs() -> None:
    """Refits of a choice that no longer stands (a later trial won) are left out; a train+val run asked for
    by itself stays a row of its own; a setting without validation accuracy yet is no choice, not a crash."""
    trials = [_record("alpha", 0, 0.1, val=50.0, test=60.0), _record("alpha", 1, 0.01, val=70.0, test=65.0)]

    def refit(of: RunRecord, test: float) -> RunRecord:
        config = replace(of.config, protocol="trainval", trial=0, extra={"refit_of": of.run_id})
        return make_record(config, {"val_acc": None, "test_acc": test})

    plain = make_record(
        replace(trials[0].config, method="finetune", protocol="trainval"), {"val_acc": None, "test_acc": 55.0}
    )
    unfinished = make_record(replace(trials[0].config, task="beta"), {"val_acc": None, "test_acc": None})
    records = [*trials, refit(trials[0], 61.0), refit(trials[1], 68.0), plain, unfinished]
    train, refits = build_groups(records)
    assert train.rule == "val" and refits.rule == "refit"
    assert {row.label: row.accs for row in refits.rows} == {
        "finetune": {"alpha": 55.0},
        "feature (refit on train+val)": {"alpha": 68.0},
    }
    [row] = train.rows
    assert row.accs == {"alpha": 65.0}


def test_records_that_name_their_searched_keys_are_selected_without_loading_torch(tmp_path: Path) -> None:
    """The leaderboard of a search reads each record's `searched` keys: it never loads the method registry
    (and torch), which costs seconds per command."""
    import subprocess
    import sys

    store = RunStore(tmp_path)
    for trial, (lr, val) in enumerate([(0.1, 50.0), (0.01, 70.0)]):
        record = replace(_record("alpha", trial, lr, val=val, test=val), searched=["lr", "weight_decay"])
        store.start(record.config)
        store.finish(record)
    code = (
        "import sys; from vdd_bench.leaderboard import build_groups; from vdd_bench.store import RunStore; "
        f"[g] = build_groups(RunStore({str(tmp_path)!r}).done_records()); "
        "assert g.rule == 'val' and g.rows[0].accs == {'alpha': 70.0}, g; "
        "assert 'torch' not in sys.modules, 'torch was loaded'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_trials_made_before_a_search_space_grew_stay_in_one_row_with_the_later_ones() -> None:
    """A method whose search later also varies `momentum`: its earlier trials (records that name only `lr`,
    at the default momentum) and a later trial at another momentum compete for one row."""
    earlier = [
        replace(_record("alpha", t, lr, val=val, test=val), searched=["lr"])
        for t, (lr, val) in enumerate([(0.1, 50.0), (0.01, 60.0)])
    ]
    for record in earlier:
        record.config.hparams["momentum"] = 0.9
    later = replace(_record("alpha", 2, 0.03, val=80.0, test=75.0), searched=["lr", "momentum"])
    later.config.hparams["momentum"] = 0.5
    [group] = build_groups([*earlier, later])
    [row] = group.rows
    assert row.accs == {"alpha": 75.0} and len(row.searched) == 3


def test_a_trial_budget_reads_a_larger_search_as_its_first_trials() -> None:
    """`--trials 2` on a store of four trials chooses among trials 0 and 1 only (the search `vdd sweep
    --trials 2` runs), counts two trials per cell and says so under the table; the later, better trial is
    what the full budget chooses."""
    from vdd_bench.tables import rule_lines

    records = [
        _record("alpha", trial, lr, val=val, test=val - 5.0)
        for trial, (lr, val) in enumerate([(0.1, 50.0), (0.01, 60.0), (0.3, 40.0), (0.05, 90.0)])
    ]
    [full] = build_groups(records, select="val")
    assert full.rows[0].accs == {"alpha": 85.0} and full.rows[0].trial_range() == "4"
    [cut] = build_groups(records, select="val", trials=2)
    [row] = cut.rows
    assert row.accs == {"alpha": 55.0} and row.trial_range() == "2"
    assert {c.record.config.trial for c in row.choices} == {1}
    assert any("first 2 trial(s), trials 0 to 1" in line for line in rule_lines(cut))
    assert not any("budget" in line for line in rule_lines(full))
