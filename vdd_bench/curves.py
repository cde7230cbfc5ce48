"""A run's training curves where researchers look for them.

- `metrics.csv` in the run's folder, rewritten at every epoch end from the epochs the checkpoint holds
  (epoch, phase, epoch within the phase, lr, train loss, train accuracy, images per second; the validation
  accuracy on the last row once the run is evaluated), so a resumed run has every epoch exactly once.
- TensorBoard event files (`tensorboard/` in the run's folder: `tensorboard --logdir results/runs` compares a
  sweep) written when the run finishes, from that file, with the run's hyper-parameters and final metrics
  as its hparams entry. torch.utils.tensorboard needs the `tensorboard` package: the `tensorboard` extra.
- Weights & Biases, off by default: `VDD_WANDB=offline` (or `online`) logs the same rows and summary through
  the `wandb` extra; `VDD_WANDB_PROJECT` names the project (default vdd-bench).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from pathlib import Path
from typing import Any

from vdd_bench.errors import VddError
from vdd_bench.store import atomic_write_bytes

CURVES_FILE = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
COLUMNS = ("epoch", "phase", "phase_epoch", "lr", "train_loss", "train_acc", "val_acc", "images_per_s")
WANDB_MODES = ("offline", "online")


def curve_rows(history: list[dict[str, Any]], throughput: list[float | None]) -> list[dict[str, Any]]:
    """One row per trained epoch, numbered over the whole run."""
    rows = []
    for index, entry in enumerate(history):
        rows.append(
            {
                "epoch": index + 1,
                "phase": entry["phase"],
                "phase_epoch": entry["epoch"],
                "lr": entry["lr"],
                "train_loss": entry["loss"],
                "train_acc": entry.get("train_acc"),
                "val_acc": None,
                "images_per_s": throughput[index] if index < len(throughput) else None,
            }
        )
    return rows


def write_curves(folder: Path, rows: list[dict[str, Any]]) -> None:
    """`metrics.csv`, written whole and atomically (an empty cell where a value does not exist)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in COLUMNS})
    atomic_write_bytes(folder / CURVES_FILE, buffer.getvalue().encode())


def read_curves(folder: Path) -> list[dict[str, Any]]:
    """The rows of a run's `metrics.csv`, numbers as numbers (None for an empty cell); [] without one."""
    try:
        text = (folder / CURVES_FILE).read_text()
    except FileNotFoundError:
        return []
    rows = []
    for raw in csv.DictReader(io.StringIO(text)):
        row: dict[str, Any] = {"phase": raw["phase"]}
        for key in COLUMNS:
            if key != "phase":
                value = raw.get(key, "")
                row[key] = None if value == "" else (int(value) if key.endswith("epoch") else float(value))
        rows.append(row)
    return rows


def finish_curves(
    folder: Path,
    run_id: str,
    history: list[dict[str, Any]],
    hparams: dict[str, Any],
    metrics: dict[str, Any],
) -> None:
    """At the end of a run: `metrics.csv` made again from `history` (the epochs the run trained, each once,
    whatever was killed when), its images/s kept from the file, the validation accuracy on the last row;
    then TensorBoard and, when asked, W&B."""
    speed = {row["epoch"]: row["images_per_s"] for row in read_curves(folder)}
    rows = curve_rows(history, [speed.get(epoch) for epoch in range(1, len(history) + 1)])
    if rows:
        rows[-1]["val_acc"] = metrics.get("val_acc")
        write_curves(folder, rows)
    final = {f"final/{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    write_tensorboard(folder, rows, hparams, final)
    mode = os.environ.get("VDD_WANDB", "")
    if mode:
        log_wandb(folder, run_id, rows, hparams, final, mode)


def _plain(value: Any) -> int | float | str | bool:
    """A hyper-parameter as TensorBoard and W&B take it (lists and None as text)."""
    return value if isinstance(value, bool | int | float | str) else str(value)


def write_tensorboard(
    folder: Path, rows: list[dict[str, Any]], hparams: dict[str, Any], final: dict[str, float]
) -> bool:
    """The run's curves and hparams entry as TensorBoard events, written anew (a resumed run's earlier
    files go); False when the `tensorboard` package is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return False
    logdir = folder / TENSORBOARD_DIR
    shutil.rmtree(logdir, ignore_errors=True)
    with SummaryWriter(log_dir=str(logdir)) as writer:
        for row in rows:
            for key in ("train_loss", "train_acc", "lr", "images_per_s", "val_acc"):
                if row[key] is not None:
                    writer.add_scalar(
                        f"{'val' if key == 'val_acc' else 'train'}/{key}", row[key], row["epoch"]
                    )
        writer.add_hparams({k: _plain(v) for k, v in sorted(hparams.items())}, final, run_name=".")
    return True


def log_wandb(
    folder: Path,
    run_id: str,
    rows: list[dict[str, Any]],
    hparams: dict[str, Any],
    final: dict[str, float],
    mode: str,
) -> None:
    """The same rows and final metrics as a W&B run (named by the run id, files under the run's folder)."""
    if mode not in WANDB_MODES:
        raise VddError(f"VDD_WANDB={mode!r}: use offline or online, or unset it to log nothing to W&B")
    try:
        import wandb
    except ImportError:
        raise VddError(
            "VDD_WANDB is set but wandb is not installed: pip install 'vdd-bench[wandb]'"
        ) from None
    project = os.environ.get("VDD_WANDB_PROJECT", "vdd-bench")
    run = wandb.init(
        project=project, name=run_id, id=run_id, dir=str(folder), mode=mode, config=hparams, reinit=True
    )
    for row in rows:
        run.log({k: v for k, v in row.items() if k != "phase" and v is not None}, step=row["epoch"])
    run.summary.update(final)
    run.finish()
