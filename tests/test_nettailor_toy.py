"""NetTailor's whole procedure on the toy decathlon: teacher, student, pruned candidates, selection.

The paper's central finding at toy scale: the easy task (``colors``, separable by mean colour) keeps fewer
pre-trained blocks and fewer MACs than a harder one (``pedestrians``: a stick figure against clutter in
noise). The hard task has to be one the short teacher schedule really learns: a teacher near chance
(``stripes`` here: 19% for 8 classes) makes any pruned network "within the tolerance" and the comparison
meaningless.
Short schedules: the complexity weight is raised to 1.0 because a few dozen steps move the attention logits
little at the default 0.3.
"""

from __future__ import annotations

import pytest
from method_helpers import ToyEnv, make_toy_env, run_method

from methods.nettailor import load_tailored
from vdd_bench.accounting import count_macs, count_parameters
from vdd_bench.architectures import render_architectures
from vdd_bench.store import RunStore

TOY_OVERRIDES = {
    "teacher_epochs": 10,
    "epochs": 4,
    "retrain_epochs": 3,
    "candidates": [0, 8],
    "complexity_weight": 1.0,
}


@pytest.fixture(scope="session")
def toy_env(tmp_path_factory: pytest.TempPathFactory) -> ToyEnv:
    return make_toy_env(tmp_path_factory)


def test_easy_tasks_get_leaner_networks_within_the_tolerance(toy_env: ToyEnv) -> None:
    chosen = {}
    for task, chance in (("colors", 25.0), ("pedestrians", 50.0)):
        run = run_method(toy_env, "nettailor", TOY_OVERRIDES, task=task)
        report = run.record["method_report"]
        assert report["teacher_val_acc"] >= chance + 25  # measured: colors 98, pedestrians 79
        assert [c["remove_blocks"] for c in report["candidates"]] == [0, 8]
        pick = next(c for c in report["candidates"] if c["remove_blocks"] == report["chosen"])
        if report["within_tolerance"]:
            assert pick["val_acc"] >= report["teacher_val_acc"] - 0.5
        assert run.record["metrics"]["val_acc"] == pick["val_acc"]  # the chosen network, evaluated again
        # the record's counts are those of the rebuilt (really pruned) network
        model = load_tailored(run.ctx, run.folder)
        accounting = run.record["accounting"]
        assert count_parameters(model) == accounting["params_total"] == pick["params_total"]
        assert count_macs(model, run.ctx.input_size) == accounting["macs"] == pick["macs"]
        removed = set(range(report["total_blocks"])) - set(report["kept_pretrained"])
        assert not any(k.startswith(tuple(f"mains.{i}." for i in removed)) for k in model.state_dict())
        assert report["timing"]["tailored_ms"] > 0 and report["diagram"].count("\n") == 11
        chosen[task] = (report["kept_blocks"], accounting["macs"])
        records = list(RunStore(toy_env.results).done_records())
        view = render_architectures(records, {r["run_id"]: r for r in records}, diagrams=True)
        assert run.record["run_id"] in view and report["diagram"] in view
    assert chosen["colors"][0] < chosen["pedestrians"][0], chosen
    assert chosen["colors"][1] < chosen["pedestrians"][1], chosen
