"""Filesystem as the database: one directory per run, a record written atomically, a `done` marker last.

Layout of a run directory `<results>/runs/<run_id>/`:
  config.json       the semantic config (written when the run starts)
  checkpoint.pt     the training state at the last epoch end (resume point; removed when done)
  model.pt          the final weights
  predictions.npz   per-image predictions on val and test
  record.json       metrics, accounting, timing (written atomically)
  done              written last; only runs with it are read by the leaderboard
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vdd_bench.config import RunConfig, check_name
from vdd_bench.errors import VddError

RECORD_FORMAT = "vdd-record/1"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers see all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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

    def finish(self, config: RunConfig, record: dict[str, Any]) -> None:
        folder = self.run_dir(config.run_id)
        record = {"format": RECORD_FORMAT, "run_id": config.run_id, "config": config.to_dict(), **record}
        atomic_write_json(folder / "record.json", record)
        atomic_write_bytes(folder / "done", b"")

    def record(self, run_id: str) -> dict[str, Any] | None:
        if not self.is_done(run_id):
            return None
        return json.loads((self.run_dir(run_id) / "record.json").read_text())

    def done_records(self) -> Iterator[dict[str, Any]]:
        """Every finished run; folders without a `done` marker (running, failed, half-written) are skipped."""
        if not self.runs.is_dir():
            return
        for folder in sorted(self.runs.iterdir()):
            if (folder / "done").exists():
                yield json.loads((folder / "record.json").read_text())
