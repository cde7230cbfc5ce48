"""Reading a torch file as tensors and plain data only, with one error line that names the file.

Every file the harness reads back with `torch.load` (run checkpoints, `model.pt`, backbone checkpoints,
bundles, the Avalanche plugin state) goes through `load_tensors`: `weights_only=True`, so a file holding
other Python objects is refused before anything in it runs, and the refusal does not repeat PyTorch's advice
to retry with `weights_only=False` (which would run them).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from vdd_bench.errors import VddError


def load_tensors(path: Path, what: str) -> Any:
    """The content of the torch file `path` (`what` names it in errors: "backbone checkpoint", ...)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise VddError(f"{path}: {what} missing") from None
    except pickle.UnpicklingError as exc:
        if "weights only load failed" in str(exc).lower():
            found = next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line), "")
            raise VddError(
                f"{path}: this {what} holds Python objects other than tensors and plain data"
                f"{f' ({found})' if found else ''}, which are never loaded since they could run code; "
                f"use a {what} written by vdd"
            ) from None
        raise VddError(f"{path}: not a readable {what} (truncated or corrupt?): {_first_line(exc)}") from None
    except Exception as exc:  # a torn, empty or foreign file: torch raises several kinds
        raise VddError(f"{path}: not a readable {what} (truncated or corrupt?): {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
