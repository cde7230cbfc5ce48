"""Writes the golden fake run folders (tests/golden/runs/): finished records with made-up numbers.

Run once from the repository root (`python tests/golden/make_runs.py`); the folders are checked in, and
tests/test_golden.py compares what the leaderboard makes of them with tests/golden/expected/. The runs of a
hyper-parameter search (several trials per method, validation and test accuracies that disagree on which
trial is best) are apart, in tests/golden/search/runs/, so that the other tables stay plain.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from vdd_bench.config import RunConfig

HERE = Path(__file__).resolve().parent
CUSTOM = {"fingerprint": "c0ffee000001", "kind": "custom", "name": "custom-golden",
          "tasks": ["source", "alpha", "beta", "gamma"]}  # fmt: skip
DECATHLON = {"fingerprint": "dec000000001", "kind": "decathlon", "name": "decathlon-1.0",
             "tasks": ["imagenet12", "aircraft", "cifar100", "daimlerpedcls", "dtd", "gtsrb", "vgg-flowers",
                       "omniglot", "svhn", "ucf101"]}  # fmt: skip
BACKBONE = {"checkpoint": "0123456789ab", "name": "resnet26", "stem_relu": False, "width": 0.25}
SGD = {"batch_size": 32, "epochs": 8, "lr": 0.1}


def write(
    bench: dict, method: str, task: str, seed: int, acc: float, params: tuple[int, float, int],
    hparams: dict | None = None, inputs: dict | None = None, report: dict | None = None,
    internal: bool = False, timing: dict | None = None, majority: float | None = None,
    val: float | None = None, trial: int = 0, folder: str = "runs",
) -> str:  # fmt: skip
    config = RunConfig(
        benchmark=bench["fingerprint"], benchmark_kind=bench["kind"], task=task, method=method,
        hparams=hparams or SGD, backbone=BACKBONE, resolution=36, seed=seed, inputs=inputs or {}, trial=trial,
    )  # fmt: skip
    total, task_equiv, macs = params
    record = {
        "format": "vdd-record/1",
        "run_id": config.run_id,
        "config": config.to_dict(),
        "benchmark": bench,
        "task": task,
        "method": method,
        "internal": internal,
        "num_classes": 10,
        "metrics": {"test_acc": acc, "val_acc": acc - 1.0 if val is None else val,
                    **({"test_majority_acc": majority} if majority is not None else {})},
        "method_report": report or {},
        "accounting": {"params_total": total, "params_task_equiv": task_equiv, "macs": macs,
                       "params_task": int(task_equiv), "params_shared": total - int(task_equiv)},
        "timing": {"train_s": 1.0, "eval_s": 0.1, **(timing or {})},
    }  # fmt: skip
    run_dir = HERE / folder / config.run_id
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
    (run_dir / "record.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    (run_dir / "done").write_text("")
    return config.run_id


def nettailor_report(kept: list[int], proxies: dict[int, list[int]], chosen: int) -> dict:
    blocks = [
        {"block": b, "main": b in kept, "proxies": proxies.get(b, []),
         "alphas": ({"main": 1.0} if b in kept else {}) | {f"proxy<{p}": 1.0 for p in proxies.get(b, [])}}
        for b in range(6)
    ]  # fmt: skip
    return {
        "blocks": blocks, "kept_blocks": len(kept), "total_blocks": 6, "chosen": chosen,
        "kept_proxies": sum(len(v) for v in proxies.values()), "teacher_val_acc": 80.0,
        "within_tolerance": True, "kept_pretrained": kept,
        "diagram": "\n".join(f"block {b} {'[kept]' if b in kept else '-- removed --'}" for b in range(6)),
    }  # fmt: skip


def main() -> None:
    shutil.rmtree(HERE / "runs", ignore_errors=True)
    full, adapters, feature = (360_000, 362_000.0, 13_500_000), (360_000, 40_000.0, 15_800_000), (
        360_000, 2_500.0, 13_500_000)  # fmt: skip
    teachers = {}
    for task, accs in {"alpha": (80.0, 82.0), "beta": (60.0, 64.0), "gamma": (99.8, 99.6)}.items():
        for seed, acc in enumerate(accs):
            run_id = write(CUSTOM, "finetune", task, seed, acc, full)
            teachers.setdefault(task, run_id)
    for task, acc in {"alpha": 70.0, "beta": 50.0, "gamma": 90.0}.items():
        write(CUSTOM, "feature", task, 0, acc, feature)
    for task, accs in {"alpha": (81.0, 79.0), "beta": (66.0, 62.0)}.items():  # gamma missing, both seeds
        for seed, acc in enumerate(accs):
            write(CUSTOM, "adapters_series", task, seed, acc, adapters)
    write(CUSTOM, "finetune", "alpha", 0, 75.0, full, hparams={**SGD, "lr": 0.01})  # beta, gamma missing
    # flagged: alpha at chance (10 classes), beta under its most common class's share of the test split
    for task, acc, majority in (("alpha", 10.0, None), ("beta", 40.0, 45.0), ("gamma", 60.0, 45.0)):
        write(CUSTOM, "scratch", task, 0, acc, full, majority=majority)
    nettailor = {"alpha": (85.0, [0, 5], {1: [0], 3: [2, 3]}), "beta": (61.0, [0, 2, 5], {4: [3]})}
    for task, (acc, kept, proxies) in nettailor.items():
        report = nettailor_report(kept, proxies, chosen=6 - len(kept))
        write(CUSTOM, "nettailor", task, 0, acc, (150_000, 9_000.0, 5_000_000), hparams={"epochs": 6},
              inputs={"teacher": teachers[task]}, report=report,
              timing={"tailored_vs_teacher": {"speedup": 1.5}})  # fmt: skip
        write(CUSTOM, "nettailor_student", task, 0, acc - 2, full, hparams={"epochs": 6}, internal=True)
    expected_by_a_sweep = [
        # adapters_series on gamma (seed 0 and 1) and dan, which has no run at all, on alpha
        RunConfig(CUSTOM["fingerprint"], "custom", task, method, hparams, BACKBONE, 36, seed=seed)
        for task, method, hparams, seed in [
            ("gamma", "adapters_series", SGD, 0),
            ("gamma", "adapters_series", SGD, 1),
            ("alpha", "dan", {"epochs": 8}, 0),
            ("alpha", "feature", SGD, 0),  # done: not missing
        ]
    ]
    (HERE / "expected_runs.json").write_text(
        json.dumps([c.to_dict() for c in expected_by_a_sweep], indent=2, sort_keys=True) + "\n"
    )
    for task, acc in {"aircraft": 60.34, "dtd": 55.53}.items():
        write(DECATHLON, "finetune", task, 0, acc, (6_000_000, 6_000_000.0, 850_000_000))
    for task, accs in {"aircraft": (65.0, 66.0, 64.0), "dtd": (57.0, 58.5, 56.0)}.items():
        for seed, acc in enumerate(accs):
            write(DECATHLON, "piggyback", task, seed, acc, (6_000_000, 190_000.0, 850_000_000))


SEARCH = {"fingerprint": "5ea7c4000001", "kind": "custom", "name": "search-golden",
          "tasks": ["source", "alpha", "beta"]}  # fmt: skip


def search_runs() -> None:
    """Three methods searched on two tasks: fine-tuning and the feature extractor with 3 trials (one seed),
    Piggyback with 4 and two seeds, its defaults (trial 0) at chance. In some cells the best validation
    accuracy and the best test accuracy are different trials, so `val` and `oracle` differ."""
    shutil.rmtree(HERE / "search", ignore_errors=True)
    full, feature, masks = (360_000, 362_000.0, 13_500_000), (360_000, 2_500.0, 13_500_000), (
        360_000, 14_000.0, 13_500_000)  # fmt: skip
    searched = {  # method: ({trial: hyper-parameters}, {(task, seed): [(val, test) of each trial]}, params)
        "finetune": (
            {0: {"lr": 0.1}, 1: {"lr": 0.0123}, 2: {"lr": 0.25}},
            {("alpha", 0): [(70.0, 71.0), (74.0, 72.5), (73.0, 75.0)],
             ("beta", 0): [(55.0, 54.0), (52.0, 53.0), (55.0, 57.0)]},  # a tie on val: the lower trial
            full,
        ),
        "feature": (
            {0: {"lr": 0.1}, 1: {"lr": 0.00412}, 2: {"lr": 0.0301}},
            {("alpha", 0): [(60.0, 61.0), (50.0, 52.0), (62.0, 60.5)],
             ("beta", 0): [(40.0, 42.0), (38.0, 39.0), (41.0, 40.0)]},
            feature,
        ),
        "piggyback": (
            {0: {"lr": 1e-4, "classifier_lr": 1e-4}, 1: {"lr": 0.00031, "classifier_lr": 0.0215},
             2: {"lr": 2.2e-05, "classifier_lr": 0.0047}, 3: {"lr": 0.0019, "classifier_lr": 0.000377}},
            {("alpha", 0): [(10.5, 10.0), (66.0, 64.0), (63.0, 66.0), (20.0, 21.0)],
             ("alpha", 1): [(10.0, 10.5), (65.0, 63.5), (64.0, 65.0), (22.0, 20.0)],
             ("beta", 0): [(12.0, 11.0), (47.0, 45.0), (49.0, 46.0), (15.0, 14.0)],
             ("beta", 1): [(11.0, 12.0), (48.0, 47.0), (46.0, 48.5), (16.0, 13.0)]},
            masks,
        ),
    }  # fmt: skip
    for method, (trials, cells, params) in searched.items():
        for (task, seed), values in cells.items():
            for trial, (val, test) in enumerate(values):
                hparams = {"batch_size": 32, "epochs": 8, **trials[trial]}
                write(SEARCH, method, task, seed, test, params, hparams=hparams, val=val, trial=trial,
                      folder="search/runs")  # fmt: skip


if __name__ == "__main__":
    main()
    search_runs()
