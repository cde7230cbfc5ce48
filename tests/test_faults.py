"""Fault injection: a run killed (SIGKILL) at any of many points and started again ends with the same record
(timings aside) and bitwise the same model as a run never interrupted; a checkpoint cut short is detected
and the one before it used.

Each attempt runs in a forked child process (torch already imported, so an attempt takes about a second)
with `VDD_FAULT=<point>:<n>` set: `vdd_bench.faults.fault_point` kills the child the n-th time it passes
that point. Children train on one thread, so every attempt computes exactly the same numbers. One test
does the same through `vdd run` in fresh interpreters.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch

from vdd_bench.backbones import BackboneSpec
from vdd_bench.benchmark import Benchmark
from vdd_bench.config import RunSettings
from vdd_bench.record import RunRecord
from vdd_bench.runner import RunRequest, plan_run
from vdd_bench.store import RunStore

TASK = "alpha"
# 48 training images in batches of 16: 3 steps an epoch, 2 epochs, checkpoints after epochs 1 and 2 and
# after the phase (3 checkpoint writes)
OVERRIDES = {"epochs": 2, "batch_size": 16}
KILLED, FINISHED = "killed", "finished"


@pytest.fixture(scope="module")
def request_(tmp_path_factory: pytest.TempPathFactory) -> RunRequest:
    from conftest import _write_task

    root = tmp_path_factory.mktemp("faults") / "root"
    _write_task(root, TASK, 1, classes=3, per_split=(48, 12, 12))
    bench = Benchmark.open(root)
    spec = BackboneSpec("resnet26", width=0.125)
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)  # import torch's lazy parts before forking
    return plan_run(RunSettings.of(bench, backbone=spec, resolution=36), TASK, "scratch", OVERRIDES)


def attempt(request: RunRequest, results: Path, fault: str | None = None, log: Path | None = None) -> str:
    """Execute the run in a forked child, armed with `fault`; KILLED or FINISHED (else the test fails)."""
    log = log or results.parent / f"{results.name}.log"
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = sys.stderr = open(fd, "w", buffering=1, closefd=False)  # not pytest's capture
            torch.set_num_threads(1)
            if fault:
                os.environ["VDD_FAULT"] = fault
            else:
                os.environ.pop("VDD_FAULT", None)
            from vdd_bench.device import pick_device
            from vdd_bench.runner import execute

            execute(request, results, pick_device("cpu"), progress=False)
            code = 0
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            os._exit(code)
    deadline = time.monotonic() + 300
    while True:  # never wait forever on a child that hangs
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"the run hung for 300 s:\n{log.read_text() if log.exists() else ''}")
        time.sleep(0.02)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        return KILLED
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return FINISHED
    text = log.read_text() if log.exists() else ""
    raise AssertionError(f"the run ended with status {status}:\n{text}")


def comparable(record: RunRecord) -> dict:
    return {k: v for k, v in record.to_json().items() if k != "timing"}


def model_state(results: Path, run_id: str) -> dict[str, torch.Tensor]:
    path = RunStore(results).run_dir(run_id) / "model.pt"
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def same_run(request: RunRequest, a: Path, b: Path) -> None:
    run_id = request.config.run_id
    record_a, record_b = RunStore(a).record(run_id), RunStore(b).record(run_id)
    assert record_a is not None and record_b is not None
    assert comparable(record_a) == comparable(record_b)
    state_a, state_b = model_state(a, run_id), model_state(b, run_id)
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    curves_a, curves_b = curves(RunStore(a).run_dir(run_id)), curves(RunStore(b).run_dir(run_id))
    assert curves_a == curves_b and [row["epoch"] for row in curves_b["csv"]] == [1, 2]  # each epoch once


def curves(folder: Path) -> dict:
    """metrics.csv (images/s aside: a timing) and the TensorBoard scalars, each as (step, value) pairs."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from vdd_bench.curves import read_curves

    events = EventAccumulator(str(folder / "tensorboard"))
    events.Reload()
    scalars = {
        tag: [(e.step, e.value) for e in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
        if tag != "train/images_per_s"
    }
    rows = [{k: v for k, v in row.items() if k != "images_per_s"} for row in read_curves(folder)]
    return {"csv": rows, "tensorboard": scalars}


@pytest.fixture(scope="module")
def reference(request_: RunRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    results = tmp_path_factory.mktemp("reference") / "results"
    assert attempt(request_, results) == FINISHED
    return results


# (point, n): every place a crash could leave something half done
KILL_POINTS = [
    ("engine.step", 2),  # mid-epoch, before any checkpoint
    ("engine.step", 5),  # mid-epoch, after the first checkpoint
    ("engine.epoch", 2),  # an epoch trained, its checkpoint not written
    ("torn:checkpoint.pt", 1),  # half a checkpoint in the temporary file
    ("write:checkpoint.pt", 2),  # the checkpoint written, not yet renamed
    ("engine.rotated", 2),  # the old checkpoint moved aside, the new one not written
    ("torn:checkpoint.pt", 3),  # the end-of-phase checkpoint
    ("write:metrics.csv", 2),  # the second epoch's checkpoint written, its curves not
    ("runner.evaluate", 1),  # during evaluation (val done, test not)
    ("torn:predictions.npz", 1),
    ("write:model.pt", 1),
    ("torn:record.json", 1),
    ("write:record.json", 1),
    ("write:done", 1),
    ("runner.done", 1),  # done, the checkpoints not yet removed
]


@pytest.mark.parametrize("point,n", KILL_POINTS, ids=[f"{p}:{n}" for p, n in KILL_POINTS])
def test_a_run_killed_anywhere_resumes_to_the_same_record_and_model(
    request_: RunRequest, reference: Path, tmp_path: Path, point: str, n: int
) -> None:
    results = tmp_path / "results"
    assert attempt(request_, results, f"{point}:{n}") == KILLED
    store = RunStore(results)
    folder = store.run_dir(request_.config.run_id)
    if point != "runner.done":
        assert not store.is_done(request_.config.run_id)  # nothing half-finished is counted
        assert list(store.done_records()) == []
    assert attempt(request_, results) == FINISHED
    same_run(request_, reference, results)
    assert not (folder / "checkpoint.pt").exists() and not (folder / "checkpoint.prev.pt").exists()


def test_killed_again_and_again_it_still_ends_with_the_same_record(
    request_: RunRequest, reference: Path, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    for fault in ("engine.step:2", "engine.step:3", "write:checkpoint.pt:2", "runner.evaluate:1"):
        assert attempt(request_, results, fault) == KILLED
    assert attempt(request_, results) == FINISHED
    same_run(request_, reference, results)


def test_a_torn_checkpoint_is_detected_and_the_previous_one_used(
    request_: RunRequest, reference: Path, tmp_path: Path
) -> None:
    results = tmp_path / "results"
    assert attempt(request_, results, "runner.evaluate:1") == KILLED
    folder = RunStore(results).run_dir(request_.config.run_id)
    checkpoint = folder / "checkpoint.pt"
    assert (folder / "checkpoint.prev.pt").exists()
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])  # a lost write
    log = tmp_path / "resume.log"
    assert attempt(request_, results, log=log) == FINISHED
    warning = [line for line in log.read_text().splitlines() if line.startswith("warning:")]
    assert len(warning) == 1
    assert "checkpoint.pt is unreadable" in warning[0]
    assert "resuming from checkpoint.prev.pt (phase 0, epoch 2)" in warning[0]
    same_run(request_, reference, results)


def test_no_readable_checkpoint_stops_the_run_and_says_so(request_: RunRequest, tmp_path: Path) -> None:
    from vdd_bench.device import pick_device
    from vdd_bench.errors import VddError
    from vdd_bench.runner import execute

    results = tmp_path / "results"
    assert attempt(request_, results, "engine.step:5") == KILLED  # checkpoint.pt of epoch 1, no previous
    folder = RunStore(results).run_dir(request_.config.run_id)
    (folder / "checkpoint.pt").write_bytes(b"PK\x03\x04 torn")
    with pytest.raises(VddError) as caught:
        execute(request_, results, pick_device("cpu"), progress=False)
    message = str(caught.value)
    assert "\n" not in message and str(folder / "checkpoint.pt") in message
    assert "checkpoint.pt is unreadable" in message
    assert "delete checkpoint.pt and checkpoint.prev.pt" in message
    assert not RunStore(results).is_done(request_.config.run_id)


def test_the_vdd_command_killed_and_run_again_ends_with_the_same_record(
    request_: RunRequest, reference: Path, tmp_path: Path
) -> None:
    """The same through the real command line in fresh interpreters (what a cluster job does)."""
    import subprocess

    results = tmp_path / "results"
    config = request_.config
    command = [
        sys.executable, "-c", "from vdd_bench.cli import main; main()", "run",
        "--method", config.method, "--task", config.task, "--benchmark", str(request_.root),
        "--backbone", "resnet26", "--width", "0.125", "--resolution", "36", "--device", "cpu",
        "--set", "epochs=2", "--set", "batch_size=16", "--no-progress", "--results", str(results),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VDD_FAULT": "write:record.json:1"}
    killed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert not RunStore(results).is_done(config.run_id)
    env.pop("VDD_FAULT")
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["run_id"] == config.run_id
    same_run(request_, reference, results)


def test_a_fault_point_is_inert_unless_armed(monkeypatch: pytest.MonkeyPatch) -> None:
    from vdd_bench import faults

    monkeypatch.delenv("VDD_FAULT", raising=False)
    faults.fault_point("engine.step")
    monkeypatch.setenv("VDD_FAULT", "engine.epoch:3")
    faults.fault_point("engine.step")  # another point: nothing happens
    assert "engine.step" not in faults._hits
