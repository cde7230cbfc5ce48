"""NetTailor's whole procedure on the toy decathlon: teacher, student, pruned candidates, selection.

The paper's central finding at toy scale: the easy task (``colors``, separable by mean colour) keeps fewer
pre-trained blocks and fewer MACs than a harder one (``pedestrians``: a stick figure against clutter in
noise). The hard task has to be one the short teacher schedule really learns: a teacher near chance
(``stripes`` here: 19% for 8 classes) makes any pruned network "within the tolerance" and the comparison
meaningless.
Short schedules: the teacher at batch 64 and the student at the demo scripts' lr 0.1 (a few dozen steps at
the decathlon script's 0.01 hardly move the attention logits); the other values are the decathlon defaults.
"""

from __future__ import annotations

from method_helpers import ToyEnv, run_method
from vdd_bench.methods.nettailor import load_tailored

from vdd_bench.accounting import count_macs, count_parameters
from vdd_bench.architectures import render_architectures
from vdd_bench.runner import execute, plan_run
from vdd_bench.store import RunStore

TOY_OVERRIDES = {
    "teacher_epochs": 10,
    "teacher_batch_size": 64,
    "teacher_milestones": [0.4, 0.8],
    "epochs": 4,
    "lr": 0.1,
    "retrain_epochs": 3,
    "candidates": [0, 8],
}


def test_easy_tasks_get_leaner_networks_within_the_tolerance(toy_env: ToyEnv) -> None:
    chosen = {}
    for task, chance in (("colors", 25.0), ("pedestrians", 50.0)):
        run = run_method(toy_env, "nettailor", TOY_OVERRIDES, task=task)
        report = run.record.method_report
        assert report["teacher_val_acc"] >= chance + 25  # measured: colors 98, pedestrians 79
        assert [c["remove_blocks"] for c in report["candidates"]] == [0, 8]
        pick = next(c for c in report["candidates"] if c["remove_blocks"] == report["chosen"])
        if report["within_tolerance"]:
            assert pick["val_acc"] >= report["teacher_val_acc"] - 0.5
        assert run.record.metrics["val_acc"] == pick["val_acc"]  # the chosen network, evaluated again
        # the record's counts are those of the rebuilt (really pruned) network
        model = load_tailored(run.ctx, run.folder)
        accounting = run.record.accounting
        assert count_parameters(model) == accounting.params_total == pick["params_total"]
        assert count_macs(model, run.ctx.input_size) == accounting.macs == pick["macs"]
        removed = set(range(report["total_blocks"])) - set(report["kept_pretrained"])
        assert not any(k.startswith(tuple(f"mains.{i}." for i in removed)) for k in model.state_dict())
        assert run.record.timing["tailored_vs_teacher"]["tailored_ms"] > 0  # wall clock: in timing
        assert report["diagram"].count("\n") == 11 and report["student_val_acc"] is not None
        chosen[task] = (report["kept_blocks"], accounting.macs)
        records = list(RunStore(toy_env.results).done_records())
        view = render_architectures(records, {r.run_id: r for r in records}, diagrams=True)
        assert run.record.run_id in view and report["diagram"] in view
    assert chosen["colors"][0] < chosen["pedestrians"][0], chosen
    assert chosen["colors"][1] < chosen["pedestrians"][1], chosen


def test_every_k_is_a_candidate_and_trainval_selects_on_val_then_refits(toy_env: ToyEnv) -> None:
    plan = plan_run(toy_env.settings, "colors", "nettailor", {})
    assert {n for n in plan.inputs if n.startswith("candidate_")} == {f"candidate_{k}" for k in range(12)}
    # one command: the selection on train/val (the run of the test above), then the refit on train+val
    request = plan_run(toy_env.settings.but(protocol="trainval"), "colors", "nettailor", TOY_OVERRIDES)
    selection, teacher = request.inputs["selection"], request.inputs["teacher"]
    assert selection.config.protocol == "train" and teacher.config.protocol == "trainval"
    assert request.inputs["student"].config.protocol == "trainval"
    record = execute(request, toy_env.results, progress=False)
    chosen = RunStore(toy_env.results).record(selection.config.run_id)
    report = record.method_report
    assert report["refit"] and report["chosen"] == chosen.method_report["chosen"]

    def kept(blocks: list[dict]) -> list[tuple[bool, list[int]]]:
        return [(b["main"], b["proxies"]) for b in blocks]

    # the architecture chosen on val, its weights refitted on train+val
    assert kept(report["blocks"]) == kept(chosen.method_report["blocks"])
    assert record.metrics["val_acc"] is None and record.metrics["test_acc"] is not None
    assert [h["phase"] for h in record.history] == ["retrain"] * TOY_OVERRIDES["retrain_epochs"]
