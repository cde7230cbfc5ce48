"""Published decathlon results shipped with the repository (``results/reference/published.json``)."""

from __future__ import annotations

import json
from pathlib import Path

from vdd_bench.errors import VddError

PUBLISHED_PATH = Path(__file__).resolve().parent.parent / "results" / "reference" / "published.json"


def published_rows() -> list[dict]:
    """Rows: method, accuracies (task -> %, {} if unpublished), score, params (millions), gflops, source."""
    try:
        doc = json.loads(PUBLISHED_PATH.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise VddError(f"cannot read the published results {PUBLISHED_PATH}: {e}") from e
    if not (isinstance(doc, dict) and isinstance(doc.get("rows"), list)):
        raise VddError(f"{PUBLISHED_PATH} has no list of rows")
    return doc["rows"]
