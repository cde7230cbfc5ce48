"""Filesystem as the database: one directory per run, a record written atomically, a `done` marker last.

Layout of a run directory `<results>/runs/<run_id>/`:
  config.json       the semantic config (written when the run starts)
  checkpoint.pt     the training state at the last epoch end (resume point; removed when done)
  checkpoint.prev.pt  the one before it, used when checkpoint.pt is missing or unreadable
  model.pt          the final weights
  predictions.npz   per-image predictions on val and test
  record.json       metrics, accounting, timing (written atomically)
  done              written last; only runs with it are read by the leaderboard
  continual.json    a chain step only: its network evaluated on every task of the chain so far (written
                    after `done`; attached to the record as `RunRecord.continual`)
  failed            the error of the last failed attempt
  diverged          a settled outcome instead of a result: training met a non-finite loss or weight (or an
                    input of the run did); relaunches skip it, `vdd sweep --retry-diverged` runs it again
  claim.json        who is running the run now (see `RunStore.claim`); removed when it stops
  slurm.json        the SLURM job last submitted for the run (job id, log files)

`<results>/entries/<run_id>` (empty) marks a run somebody asked for by name (`vdd run`, `sweep`, `chain`,
`demo`), as opposed to one planned only as another run's input (NetTailor's teacher): see `internal_runs`.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vdd_bench.chains import CONTINUAL_FILE
from vdd_bench.config import RunConfig, check_name
from vdd_bench.errors import VddError
from vdd_bench.faults import fault_point
from vdd_bench.record import RunRecord

CLAIM_FILE = "claim.json"
CLAIM_LOCK = ".claim.lock"
STALE_AFTER_S = 600.0  # a claim whose heartbeat is older, and whose owner nobody can check, is stale


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers see all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            view, half = memoryview(data), len(data) // 2
            handle.write(view[:half])
            handle.flush()
            fault_point(f"torn:{path.name}")  # tests: a crash with half the bytes written
            handle.write(view[half:])
            handle.flush()
            os.fsync(handle.fileno())
        fault_point(f"write:{path.name}")  # tests: a crash with the file written, not yet renamed
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise VddError(
                f"{path}: {exc.strerror} while writing it (the previous version, if any, is intact): "
                "free some space and relaunch; a run resumes from its last checkpoint"
            ) from exc
        raise


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())


class RunStore:
    def __init__(self, results: str | Path) -> None:
        self.results = Path(results)
        self.runs = self.results / "runs"

    def run_dir(self, run_id: str) -> Path:
        check_name("run id", run_id)
        return self.runs / run_id

    def is_done(self, run_id: str) -> bool:
        return (self.run_dir(run_id) / "done").exists()

    def is_diverged(self, run_id: str) -> bool:
        return (self.run_dir(run_id) / "diverged").exists()

    def diverge(self, run_id: str, reason: str) -> None:
        """Settle a run whose training diverged, or whose input did: the reason goes in `diverged`, and a
        relaunch neither runs it again nor counts it as failed (`clear_diverged` undoes this)."""
        folder = self.run_dir(run_id)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / "diverged", f"{reason}\n".encode())
        (folder / "failed").unlink(missing_ok=True)

    def clear_diverged(self, run_ids: Iterable[str]) -> int:
        """Make these runs plannable again (`vdd sweep --retry-diverged`); returns how many were settled."""
        cleared = 0
        for run_id in run_ids:
            path = self.run_dir(run_id) / "diverged"
            if path.exists():
                path.unlink()
                cleared += 1
        return cleared

    def start(self, config: RunConfig) -> Path:
        folder = self.run_dir(config.run_id)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "config.json"
        if path.exists():
            stored = json.loads(path.read_text())
            if stored != json.loads(json.dumps(config.to_dict())):
                raise VddError(f"{path} holds another config for the same run id: delete the folder {folder}")
        else:
            atomic_write_json(path, config.to_dict())
        return folder

    def finish(self, record: RunRecord) -> None:
        folder = self.run_dir(record.run_id)
        atomic_write_json(folder / "record.json", record.to_json())
        atomic_write_bytes(folder / "done", b"")
        (folder / "failed").unlink(missing_ok=True)  # an earlier attempt's error no longer applies
        (folder / "diverged").unlink(missing_ok=True)

    def fail(self, run_id: str, error: BaseException) -> None:
        """Keep the error of a failed attempt in its folder, when the attempt got as far as making one: the
        one-line message of a `VddError`, the full traceback of anything else (a bug to report)."""
        folder = self.run_dir(run_id)
        if folder.is_dir():
            text = f"{error}\n" if isinstance(error, VddError) else "".join(traceback.format_exception(error))
            atomic_write_bytes(folder / "failed", text.encode())

    def mark_entries(self, run_ids: Iterable[str]) -> None:
        """Remember that these runs were asked for by name, so that they are results of their own even when
        another run also reads them (the fine-tuning run that is also NetTailor's teacher)."""
        entries = self.results / "entries"
        for run_id in run_ids:
            check_name("run id", run_id)
            entries.mkdir(parents=True, exist_ok=True)
            (entries / run_id).touch()

    def entry_ids(self) -> set[str] | None:
        """The runs asked for by name; None for a store written before they were kept (all are entries)."""
        entries = self.results / "entries"
        return set(os.listdir(entries)) if entries.is_dir() else None

    def record(self, run_id: str) -> RunRecord | None:
        if not self.is_done(run_id):
            return None
        return read_record(str(self.run_dir(run_id) / "record.json"))

    def done_records(self) -> Iterator[RunRecord]:
        """Every finished run; folders without a `done` marker (running, failed, half-written) are skipped."""
        if not self.runs.is_dir():
            return
        root = str(self.runs)  # plain strings: pathlib objects cost more than the reads for 10,000 runs
        for name in sorted(os.listdir(root)):
            folder = os.path.join(root, name)
            if os.path.exists(os.path.join(folder, "done")):
                yield read_record(os.path.join(folder, "record.json"))

    def diverged_configs(self) -> Iterator[RunConfig]:
        """The config of every run settled as diverged (one without a readable config is skipped)."""
        if not self.runs.is_dir():
            return
        root = str(self.runs)
        for name in sorted(os.listdir(root)):
            folder = os.path.join(root, name)
            if os.path.exists(os.path.join(folder, "diverged")):
                try:
                    with open(os.path.join(folder, "config.json")) as file:
                        yield RunConfig.from_dict(json.load(file))
                except (OSError, ValueError, KeyError, TypeError):
                    continue


def internal_runs(records: Iterable[RunRecord], entry_ids: set[str] | None) -> set[str]:
    """The done runs that are not results of their own: a backbone's pre-training, a method's internal steps
    (NetTailor's student and candidates) and, when `entry_ids` (the runs asked for by name) is given, a run
    that exists only as another run's input (NetTailor's teacher, when no fine-tuning run of the same
    settings was asked for). Leaderboards, plots and submissions leave them out."""
    records = list(records)
    read_as_inputs = {i for r in records for i in r.config.inputs.values()}
    return {
        r.run_id
        for r in records
        if r.internal
        or r.config.extra.get("role") == "pretrain"
        or (entry_ids is not None and r.run_id in read_as_inputs and r.run_id not in entry_ids)
    }


def read_record(path: str) -> RunRecord:
    """The record of a done run. One that cannot be read (records are written whole before `done`, so only
    a damaged disk or a hand edit does this) is refused naming it, never skipped or half-used."""
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
        done = os.path.join(os.path.dirname(path), "done")
        raise VddError(
            f"{path}: the run is marked done but its record is unreadable ({reason}): "
            f"delete {done} to run it again"
        ) from None
    evaluation = os.path.join(os.path.dirname(path), CONTINUAL_FILE)
    if os.path.exists(evaluation):  # a chain step's network on every task so far (vdd_bench.chains)
        with open(evaluation, encoding="utf-8") as handle:
            record["continual"] = json.load(handle)
    return RunRecord.from_json(record, path)


# --- claims: at most one process runs a run at a time ---


def current_owner() -> dict[str, Any]:
    """Who would hold a claim taken now: the SLURM job (array element as `<array id>_<index>`, the form
    squeue and sacct print) when inside one, and always the host and pid."""
    env = os.environ
    job_id = None
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        job_id = f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    elif env.get("SLURM_JOB_ID"):
        job_id = env["SLURM_JOB_ID"]
    return {"job_id": job_id, "host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}


def same_owner(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """A requeued SLURM job keeps its job id (and gets a new pid): it is the same owner."""
    if a.get("job_id") or b.get("job_id"):
        return a.get("job_id") == b.get("job_id")
    return a.get("host") == b.get("host") and a.get("pid") == b.get("pid")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim_is_live(
    claim: dict[str, Any],
    active_jobs: Callable[[], dict[str, str] | None] = lambda: None,
    now: float | None = None,
    stale_after: float = STALE_AFTER_S,
) -> bool:
    """Is the claim's owner still at work? A SLURM job: the scheduler's word (RUNNING, PENDING after a
    requeue, ...) when it answers; a process on this host: alive and heartbeating; else: a fresh heartbeat.

    `active_jobs()` gives {job id: state} of the jobs in the queue, or None when no scheduler answers.
    """
    age = (now or time.time()) - claim.get("heartbeat", 0.0)
    if claim.get("job_id"):
        jobs = active_jobs()
        if jobs is not None:
            return claim["job_id"] in jobs
    elif claim.get("host") == socket.gethostname():
        return pid_alive(int(claim.get("pid", -1))) and age < stale_after
    return age < stale_after


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive fcntl lock on the run folder's lock file, so that checking a claim and replacing it is
    one step for every process that claims (also across hosts, where the filesystem supports locks)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / CLAIM_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def read_claim(folder: Path) -> dict[str, Any] | None:
    """The claim of a run folder with its heartbeat (the file's modification time), or None."""
    path = folder / CLAIM_FILE
    try:
        claim = json.loads(path.read_text())
        claim["heartbeat"] = path.stat().st_mtime
    except (FileNotFoundError, ValueError):
        return None
    return claim


def take_claim(
    folder: Path, owner: dict[str, Any], is_live: Callable[[dict[str, Any]], bool]
) -> dict[str, Any] | None:
    """Claim a run folder for `owner`. Returns None when the claim is ours now, else the live claim of
    whoever holds it. A claim left by a crashed job (its job gone, or its heartbeat old) is taken over;
    our own claim (a requeued job) is renewed."""
    with _locked(folder):
        held = read_claim(folder)
        if held is not None and not same_owner(held, owner) and is_live(held):
            return held
        path = folder / CLAIM_FILE
        if held is None:
            # O_EXCL: creating the file is atomic even where the lock above is advisory only
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            except FileExistsError:
                return read_claim(folder)
        atomic_write_json(path, {k: v for k, v in owner.items() if k != "heartbeat"})
        return None


def touch_claim(folder: Path) -> None:
    """The heartbeat: refresh the claim file's modification time."""
    try:
        os.utime(folder / CLAIM_FILE)
    except FileNotFoundError:
        pass


def release_claim(folder: Path, owner: dict[str, Any]) -> None:
    with _locked(folder):
        held = read_claim(folder)
        if held is not None and same_owner(held, owner):
            (folder / CLAIM_FILE).unlink(missing_ok=True)


class ClaimHeld(VddError):
    """Another live process holds the run."""


@contextmanager
def claimed(
    folder: Path,
    is_live: Callable[[dict[str, Any]], bool],
    owner: dict[str, Any] | None = None,
    every: float = 30.0,
) -> Iterator[dict[str, Any]]:
    """Hold the run's claim while the body runs, heartbeating every `every` seconds from a thread.

    Raises ClaimHeld when someone else holds it. The claim is released when the body returns or raises an
    Exception; not on SystemExit (submitit exits that way after asking for a requeue: the requeued job,
    same job id, renews it) nor on KeyboardInterrupt (a dead local pid makes it stale anyway)."""
    import threading

    owner = owner or current_owner()
    holder = take_claim(folder, owner, is_live)
    if holder is not None:
        where = f"job {holder['job_id']}" if holder.get("job_id") else f"pid {holder.get('pid')}"
        raise ClaimHeld(f"{folder.name} is being run by {where} on {holder.get('host')}")
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            touch_claim(folder)

    thread = threading.Thread(target=beat, name="vdd-claim-heartbeat", daemon=True)
    thread.start()
    try:
        yield owner
    except Exception:
        stop.set()
        release_claim(folder, owner)
        raise
    except BaseException:
        stop.set()
        raise
    else:
        stop.set()
        release_claim(folder, owner)
