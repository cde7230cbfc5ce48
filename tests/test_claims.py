"""Claims: at most one process runs a run at a time, and a claim left by a crashed job is taken over."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from record_helpers import make_record

from vdd_bench.config import RunConfig
from vdd_bench.local_launcher import LocalLauncher
from vdd_bench.runner import RunRequest
from vdd_bench.store import (
    CLAIM_FILE,
    STALE_AFTER_S,
    ClaimHeld,
    claim_is_live,
    claimed,
    read_claim,
    release_claim,
    take_claim,
)


def owner(job_id: str | None = None, pid: int | None = None, host: str | None = None) -> dict:
    return {"job_id": job_id, "host": host or socket.gethostname(), "pid": pid or os.getpid(), "since": 0.0}


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_live_claim_keeps_others_out_and_only_its_owner_releases_it(tmp_path: Path) -> None:
    me, other = owner(), owner(pid=1)  # pid 1 is alive
    assert take_claim(tmp_path, me, claim_is_live) is None
    held = take_claim(tmp_path, other, claim_is_live)
    assert held is not None and held["pid"] == os.getpid()
    release_claim(tmp_path, other)  # not its claim: nothing happens
    assert read_claim(tmp_path)["pid"] == os.getpid()
    release_claim(tmp_path, me)
    assert not (tmp_path / CLAIM_FILE).exists()
    assert take_claim(tmp_path, other, claim_is_live) is None


def test_the_claim_of_a_crashed_local_process_is_taken_over(tmp_path: Path) -> None:
    assert take_claim(tmp_path, owner(pid=dead_pid()), claim_is_live) is None
    assert take_claim(tmp_path, owner(), claim_is_live) is None
    assert read_claim(tmp_path)["pid"] == os.getpid()


def test_a_slurm_claim_is_live_while_the_scheduler_lists_its_job(tmp_path: Path) -> None:
    job = owner(job_id="4242_3", pid=1, host="node17")
    assert take_claim(tmp_path, job, claim_is_live) is None
    claim = read_claim(tmp_path)
    assert claim_is_live(claim, lambda: {"4242_3": "RUNNING"})
    assert claim_is_live(claim, lambda: {"4242_3": "PENDING"})  # requeued: comes back with the same id
    assert not claim_is_live(claim, lambda: {"4242_2": "RUNNING"})  # gone: the job crashed or was killed
    # without a scheduler to ask, the heartbeat decides
    assert claim_is_live(claim, lambda: None)
    assert not claim_is_live(claim, lambda: None, now=time.time() + STALE_AFTER_S + 1)
    # the requeued job itself (same job id, new pid) renews its claim
    assert take_claim(tmp_path, owner(job_id="4242_3", pid=os.getpid()), lambda c: True) is None


def test_claimed_heartbeats_and_releases_on_error_but_not_on_exit(tmp_path: Path) -> None:
    with claimed(tmp_path, claim_is_live, every=0.05):
        first = read_claim(tmp_path)["heartbeat"]
        time.sleep(0.3)
        assert read_claim(tmp_path)["heartbeat"] > first
    assert read_claim(tmp_path) is None
    with pytest.raises(RuntimeError), claimed(tmp_path, claim_is_live):
        raise RuntimeError("boom")
    assert read_claim(tmp_path) is None
    with pytest.raises(SystemExit), claimed(tmp_path, claim_is_live):
        raise SystemExit(-1)  # what submitit does after asking for a requeue
    assert read_claim(tmp_path)["pid"] == os.getpid()
    release_claim(tmp_path, owner())
    with claimed(tmp_path, claim_is_live), pytest.raises(ClaimHeld, match="is being run by pid"):
        with claimed(tmp_path, claim_is_live, owner=owner(pid=1)):
            pass


def _race(folder: str, start: float, queue) -> None:
    time.sleep(max(0.0, start - time.time()))
    queue.put(take_claim(Path(folder), owner(), claim_is_live) is None)
    time.sleep(1.0)  # stay alive while the others try


def test_of_processes_claiming_at_once_exactly_one_wins(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    start = time.time() + 0.5
    procs = [ctx.Process(target=_race, args=(str(tmp_path), start, queue)) for _ in range(6)]
    for p in procs:
        p.start()
    wins = [queue.get(timeout=30) for _ in procs]
    for p in procs:
        p.join()
    assert sum(wins) == 1


def test_the_local_launcher_skips_a_run_held_by_someone_else(tmp_path: Path) -> None:
    config = RunConfig("b" * 12, "toy", "shapes", "finetune", {}, {"checkpoint": None}, 36)
    request = RunRequest(config, tmp_path / "missing-root", None)
    folder = tmp_path / "results" / "runs" / config.run_id
    folder.mkdir(parents=True)
    (folder / CLAIM_FILE).write_text(json.dumps(owner(pid=1)))
    summary = LocalLauncher(tmp_path / "results", progress=False).launch([request])
    assert summary.completed == 0 and summary.failed == []
    assert [run_id for run_id, _ in summary.claimed] == [config.run_id]


def test_a_run_another_process_finished_meanwhile_is_not_counted_as_completed_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import contextlib

    import vdd_bench.local_launcher as launchers
    from vdd_bench.store import RunStore

    config = RunConfig("c" * 12, "toy", "shapes", "finetune", {}, {"checkpoint": None}, 36)
    request = RunRequest(config, tmp_path / "missing-root", None)
    store = RunStore(tmp_path / "results")

    @contextlib.contextmanager
    def claimed_after_the_other_finished(folder, is_live):
        store.start(config)  # the other sweep ran it while this one waited for its turn
        store.finish(make_record(config))
        yield

    monkeypatch.setattr(launchers, "claimed", claimed_after_the_other_finished)
    summary = LocalLauncher(tmp_path / "results", progress=False).launch([request])
    assert (summary.completed, summary.done_elsewhere, summary.failed) == (0, 1, [])
