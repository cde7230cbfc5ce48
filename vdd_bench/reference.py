"""Published decathlon results shipped with the package (``vdd_bench/published.json``, package data)."""

from __future__ import annotations

import json
from importlib.resources import files

from vdd_bench.errors import VddError

PUBLISHED_PATH = files("vdd_bench") / "published.json"


def published_rows() -> list[dict]:
    """Rows: method, accuracies (task -> %, {} if unpublished), score, params (millions), gflops, source."""
    try:
        doc = json.loads(PUBLISHED_PATH.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise VddError(f"cannot read the published results {PUBLISHED_PATH}: {e}") from e
    if not (isinstance(doc, dict) and isinstance(doc.get("rows"), list)):
        raise VddError(f"{PUBLISHED_PATH} has no list of rows")
    return doc["rows"]
