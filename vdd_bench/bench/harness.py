"""The `harness` section of `vdd bench`: `vdd` commands on many run records, the import time, and a sweep
of the toy's small runs with `--jobs` against one run at a time."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from vdd_bench.backbones import BackboneSpec, build_backbone, save_checkpoint
from vdd_bench.bench.common import BenchOptions, row, toy_root
from vdd_bench.config import RunConfig
from vdd_bench.method import METHODS
from vdd_bench.record import Accounting, BenchmarkInfo, RunRecord

HARNESS_TARGET_S = 2.0
STATUS_TARGET_S = 0.5  # a status command answers before torch could even load
JOBS_GOAL = 1.7  # `--jobs 2` on 2 cores against `--jobs 1`: the toy's small runs at least this much faster
JOBS_METHODS = "feature,finetune,adapters_series,dan"

_TEMPLATE_TASKS = [
    "source",
    "colors",
    "shapes",
    "pedestrians",
    "stripes",
    "digits",
    "textures",
    "quadrants",
    "signs",
    "glyphs",
]
_TEMPLATE_METHODS = [
    "finetune",
    "feature",
    "scratch",
    "adapters_series",
    "adapters_parallel",
    "piggyback",
    "dan",
]


def synthetic_records(count: int) -> Iterator[RunRecord]:
    """`count` plausible finished-run records on one toy benchmark: methods x tasks x lr x seeds."""
    benchmark = BenchmarkInfo("toy", "toy-decathlon", "0123456789ab", _TEMPLATE_TASKS)
    backbone = {"checkpoint": "0c9bad86a969", "name": "resnet26", "stem_relu": False, "width": 0.25}
    accounting = Accounting(
        params_total=365292,
        params_shared=0,
        params_task=365292,
        params_task_equiv=367228.0,
        macs=13492480,
        task_bytes=1468912,
        input_size=32,
    )
    searched = {method: sorted(METHODS.get(method).search_space) for method in _TEMPLATE_METHODS}
    i = 0
    for seed in range(10**6):
        for lr in (0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 0.0005, 0.0002, 0.0001):
            for method in _TEMPLATE_METHODS:
                for task in _TEMPLATE_TASKS:
                    if i == count:
                        return
                    i += 1
                    config = RunConfig(
                        benchmark=benchmark.fingerprint,
                        benchmark_kind=benchmark.kind,
                        task=task,
                        method=method,
                        hparams={"epochs": 8, "lr": lr, "batch_size": 64},
                        backbone=backbone,
                        resolution=36,
                        seed=seed,
                    )
                    yield RunRecord(
                        run_id=f"{method}--{task}--{i:012x}",
                        config=config,
                        benchmark=benchmark,
                        num_classes=4,
                        metrics={"test_acc": 50.0 + (i % 50), "val_acc": 50.0 + (i % 40)},
                        accounting=accounting,
                        timing={"train_s": 1.0, "eval_s": 0.1},
                        searched=searched[method],
                    )


def _cli_seconds(args: list[str], cwd: Path) -> float:
    """One `vdd` command as a user runs it (a fresh process: interpreter start and imports included)."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "vdd_bench", *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"vdd {args[0]} failed: {result.stderr.strip() or result.stdout.strip()}")
    return seconds


def bench_harness(options: BenchOptions, tmp: Path) -> tuple[list[dict], dict]:

    count = 500 if options.quick else 10_000
    store = tmp / "records"
    for record in synthetic_records(count):
        folder = store / "runs" / record.run_id
        folder.mkdir(parents=True)
        (folder / "record.json").write_text(json.dumps(record.to_json()))
        (folder / "done").write_bytes(b"")
    leaderboard_s = _cli_seconds(["leaderboard", "--results", str(store)], tmp)
    (tmp / "empty").mkdir()
    status_s = _cli_seconds(["status", "--results", str(tmp / "empty")], tmp)

    toy = toy_root(tmp)
    checkpoint = tmp / "backbone.pt"
    save_checkpoint(checkpoint, build_backbone(BackboneSpec("resnet26", width=0.25), 10), {"task": "source"})
    methods = "finetune,feature,scratch,adapters_series,adapters_parallel,piggyback,dan,nettailor"
    sweep = ["sweep", "--benchmark", str(toy), "--methods", methods, "--backbone-checkpoint", str(checkpoint)]
    sweep_s = _cli_seconds([*sweep, "--results", str(tmp / "sweep-results"), "--dry-run"], tmp)
    planned = len(methods.split(",")) * 10

    def import_seconds(code: str) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    python_s = import_seconds("pass")
    import_s = import_seconds("import vdd_bench.cli") - python_s
    jobs = min(2, os.cpu_count() or 1)
    runs_sweep = [*sweep[:4], JOBS_METHODS, *sweep[5:], "--epoch-scale", str(1 / 60), "--no-progress"]
    runs_sweep += ["--set", "batch_size=32"] + (["--tasks", "colors,shapes,digits"] if options.quick else [])
    one_s, parallel_s = (
        _cli_seconds([*runs_sweep, "--results", str(tmp / f"jobs-{n}"), "--jobs", str(n)], tmp)
        for n in (1, jobs)
    )
    runs = len(JOBS_METHODS.split(",")) * (3 if options.quick else 10)
    rows = [
        row(
            "harness",
            f"vdd leaderboard, {count} records, s",
            leaderboard_s,
            "s",
            "2 s target",
            HARNESS_TARGET_S,
            "<= 1",
        ),
        row(
            "harness",
            f"vdd sweep --dry-run, {planned} runs, s",
            sweep_s,
            "s",
            "2 s target",
            HARNESS_TARGET_S,
            "<= 1",
        ),
        row("harness", "import vdd_bench.cli, s", import_s, "s", "2 s target", HARNESS_TARGET_S, "<= 1"),
        row("harness", "vdd status, empty results, s", status_s, "s", "0.5 s", STATUS_TARGET_S, "<= 1"),
        row(
            "harness",
            f"vdd sweep of {runs} toy runs, --jobs 1 (ratio: speed-up), s",
            one_s,
            "s",
            f"--jobs {jobs}",
            parallel_s,
            f">= {JOBS_GOAL} on 2 cores",
        ),
    ]
    setup = "each command a fresh process (start and imports included); import time beyond a bare interpreter"
    return rows, {"harness": setup}
