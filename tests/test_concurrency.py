"""Many processes finishing runs into one results folder while `vdd leaderboard` and `vdd status` read it:
no record lost, none half-read, none counted twice.

24 writer processes each finish 4 fake but complete runs through `RunStore.start` / `RunStore.finish` (every
run is finished by two different processes, as when a relaunched sweep races a slow job); the test process
meanwhile reads the folder in a loop through the CLI (leaderboard as JSON, status as JSON) and through
`RunStore.done_records`, and checks every reading.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import time
from pathlib import Path

from click.testing import CliRunner
from record_helpers import make_record

from vdd_bench.cli import main
from vdd_bench.config import RunConfig
from vdd_bench.record import BenchmarkInfo, RunRecord
from vdd_bench.store import RunStore

WRITERS = 24
RUNS = 48
TASKS = ["alpha", "beta", "gamma", "delta"]
BENCH = BenchmarkInfo("custom", "custom-concurrency", "c0ffee00c0c0", TASKS)
BACKBONE = {"checkpoint": "0123456789ab", "name": "resnet26", "stem_relu": False, "width": 0.25}


def config_of(index: int) -> RunConfig:
    """Run `index`: a task and a seed; 12 seeds of each of the 4 tasks."""
    return RunConfig(
        benchmark=BENCH.fingerprint,
        benchmark_kind="custom",
        task=TASKS[index % len(TASKS)],
        method="finetune",
        hparams={"epochs": 8, "lr": 0.1},
        backbone=BACKBONE,
        resolution=36,
        seed=index // len(TASKS),
    )


def record_of(index: int) -> RunRecord:
    """A complete record; the history makes it large enough (about 30 kB) for a torn read to be likely."""
    return make_record(
        config_of(index),
        {"test_acc": 50.0 + index / 4, "val_acc": 49.0 + index / 4},
        benchmark=BENCH,
        history=[{"phase": "train", "epoch": e, "lr": 0.1, "loss": 1.0 / (e + 1)} for e in range(400)],
        timing={"train_s": 1.0, "eval_s": 0.1},
    )


def writer(results: str, process: int) -> None:
    store = RunStore(results)
    rng = random.Random(process)
    mine = [2 * process, 2 * process + 1, (2 * process + 2) % RUNS, (2 * process + 3) % RUNS]
    for index in mine:
        config = config_of(index)
        store.start(config)
        time.sleep(rng.uniform(0.25, 1.0))  # "training"
        store.finish(record_of(index))


def test_concurrent_writers_and_readers_lose_nothing_and_count_nothing_twice(tmp_path: Path) -> None:
    results = tmp_path / "results"
    cli = CliRunner()
    for command in ("leaderboard", "status"):  # imports done before the writers start
        cli.invoke(main, [command, "--results", str(results)])
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=writer, args=(str(results), p)) for p in range(WRITERS)]
    for process in writers:
        process.start()
    readings, seen_done = 0, 0
    while True:
        running = any(p.is_alive() for p in writers)
        board = cli.invoke(main, ["leaderboard", "--results", str(results), "--format", "json"])
        if board.exit_code == 0:
            groups = json.loads(board.stdout)
        else:  # allowed only while no run has finished
            assert board.exit_code == 2 and "no finished runs" in board.output and seen_done == 0, (
                board.output
            )
            groups = []
        counted = 0
        for group in groups:
            for row in group["rows"]:
                for task, seeds in row["seed_ids"].items():
                    assert len(seeds) == len(set(seeds)), f"a run of {task} counted twice: {seeds}"
                    counted += len(seeds)
        status = cli.invoke(main, ["status", "--results", str(results), "--json"])
        assert status.exit_code == 0, status.output
        states = json.loads(status.stdout)
        done = [s["run_id"] for s in states if s["state"] == "done"]
        assert len(done) == len(set(done)) <= RUNS
        records = [r.run_id for r in RunStore(results).done_records()]
        assert len(records) == len(set(records)) <= RUNS
        assert counted <= RUNS and len(records) >= seen_done  # a finished run never disappears
        seen_done = len(records)
        readings += running
        if not running:
            break
    for process in writers:
        process.join()
        assert process.exitcode == 0
    assert readings >= 3  # the folder was read while it was being written
    final = list(RunStore(results).done_records())
    assert sorted(r.run_id for r in final) == sorted(config_of(i).run_id for i in range(RUNS))
    for record in final:
        index = next(i for i in range(RUNS) if config_of(i).run_id == record.run_id)
        assert record.metrics == record_of(index).metrics and len(record.history) == 400
    [group] = json.loads(
        cli.invoke(main, ["leaderboard", "--results", str(results), "--format", "json"]).output
    )
    [row] = group["rows"]
    assert row["seed_ids"] == {task: list(range(RUNS // len(TASKS))) for task in TASKS}
    leftovers = [p.name for p in (results / "runs").rglob("*.tmp")]
    assert leftovers == []  # every atomic write completed or cleaned up after itself
