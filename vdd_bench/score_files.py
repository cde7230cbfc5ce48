"""`vdd score`: the decathlon score of a file of per-task accuracies or of a challenge predictions file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tabulate import tabulate

from vdd_bench.errors import VddError
from vdd_bench.score import MAX_SCORED_ACC, decathlon_score, official_baselines, score_predictions
from vdd_bench.tasks.decathlon import DECATHLON, OFFICIAL_ORDER

_BY_SHORT = {facts.short.lower(): name for name, facts in DECATHLON.items()}


def task_name(key: str, source: Path, known: dict | None = DECATHLON) -> str:
    """Official task names, or the papers' column labels (ImNet, Airc, ...); any name when `known` is None."""
    if known is None or key in DECATHLON:
        return key
    if key.lower() in _BY_SHORT:
        return _BY_SHORT[key.lower()]
    raise VddError(f"{source}: {key!r} is not a decathlon task; use one of {', '.join(OFFICIAL_ORDER)}")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise VddError(f"{path} is not valid JSON ({exc}): fix or regenerate it") from None


def load_test_labels(path: Path) -> tuple[dict[int, int], dict[int, str], dict[str, set[int]]]:
    """Labels, the task of each image and each task's category ids (its `categories`, else the labels'),
    from `<task>_test.json` files (COCO style, with annotations): one file or a folder of them."""
    if path.is_dir():
        files = sorted(path.glob("*_test.json")) or sorted((path / "annotations").glob("*_test.json"))
    else:
        files = [path]
    if not files:
        raise VddError(f"no <task>_test.json files in {path}: pass the folder holding the test labels")
    labels: dict[int, int] = {}
    task_of_image: dict[int, str] = {}
    categories: dict[str, set[int]] = {}
    for file in files:
        task = file.name.removesuffix("_test.json")
        content = read_json(file)
        if not isinstance(content, dict) or "annotations" not in content:
            raise VddError(f"{file} has no 'annotations': it is not a test-labels file")
        for ann in content["annotations"]:
            labels[int(ann["image_id"])] = int(ann["category_id"])
            task_of_image[int(ann["image_id"])] = task
        listed = content.get("categories")
        if isinstance(listed, list) and all(isinstance(c, dict) and "id" in c for c in listed):
            categories[task] = {int(c["id"]) for c in listed}
        else:
            categories[task] = {int(a["category_id"]) for a in content["annotations"]}
    return labels, task_of_image, categories


def accuracy_rows(
    path: Path, labels: Path | None, known: dict | None = DECATHLON
) -> dict[str, dict[str, float]]:
    content = read_json(path)
    if isinstance(content, list):
        if labels is None:
            raise VddError(f"{path} is a predictions file: pass --labels with the test labels to score it")
        truth, task_of_image, categories = load_test_labels(labels)
        return {path.stem: score_predictions(content, truth, task_of_image, categories)}
    if not isinstance(content, dict) or not content:
        raise VddError(
            f"{path}: expected {{task: accuracy %}}, {{name: {{task: accuracy %}}}} or a predictions list"
        )
    if all(isinstance(v, dict) for v in content.values()):
        rows = content
    else:
        rows = {path.stem: content}
    out = {}
    for name, accs in rows.items():
        try:
            out[name] = {task_name(k, path, known): float(v) for k, v in accs.items()}
        except (TypeError, ValueError):
            raise VddError(f"{path}: the accuracies of {name!r} must be numbers (percent)") from None
    return out


def read_baselines(path: Path) -> dict[str, float]:
    """{task: baseline accuracy %}, or the output of `vdd leaderboard --format json` for one benchmark
    group, whose fine-tuning row then gives the baselines."""
    content = read_json(path)
    if isinstance(content, list):
        return _leaderboard_baselines(path, content)
    if not isinstance(content, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in content.values()
    ):
        raise VddError(f"{path}: baselines must be a JSON object {{task: baseline accuracy %}}")
    return {k: float(v) for k, v in content.items()}


def _leaderboard_baselines(path: Path, groups: list) -> dict[str, float]:
    """The baselines the leaderboard scored its one group with (its `baselines`)."""
    found = [g["baselines"] for g in groups if isinstance(g, dict) and g.get("baselines")]
    if len(found) != 1:
        raise VddError(
            f"{path}: a leaderboard JSON used as baselines needs exactly one group with baselines, it has "
            f"{len(found)}: use `vdd leaderboard --format json --benchmark FINGERPRINT`"
        )
    return {k: float(v) for k, v in found[0].items()}


def score_file(
    path: Path, labels: Path | None = None, as_json: bool = False, baselines_file: Path | None = None
) -> str:
    """Official baselines for decathlon tasks; `baselines_file` ({task: acc %}, or a leaderboard JSON) for
    any other benchmark, scored by the leaderboard's rule for such baselines: every accuracy above
    MAX_SCORED_ACC, the baseline's and the run's, counts as MAX_SCORED_ACC (one rule, whichever form)."""
    baselines = read_baselines(baselines_file) if baselines_file else official_baselines()
    cap = (lambda a: min(a, MAX_SCORED_ACC)) if baselines_file else (lambda a: a)
    results = {}
    for name, accs in accuracy_rows(path, labels, known=None if baselines_file else DECATHLON).items():
        unknown = [t for t in accs if t not in baselines]
        if unknown:
            where = baselines_file or "the official decathlon baselines"
            raise VddError(f"{path}: no baseline for {', '.join(unknown)} in {where}; pass --baselines FILE")
        capped = {t: cap(a) for t, a in accs.items()}
        scored = decathlon_score(capped, {t: cap(baselines[t]) for t in accs})
        results[name] = {"accuracy": accs, **scored}
    if as_json:
        return json.dumps(results, indent=2)
    tasks = list(baselines)
    headers = ["", *(DECATHLON[t].short if t in DECATHLON else t for t in tasks), "Score"]
    rows = []
    for name, result in results.items():
        per_task = result["per_task"]
        rows.append(
            [name, *(round(per_task[t]) if t in per_task else None for t in tasks), round(result["total"])]
        )
    table = tabulate(rows, headers, tablefmt="github", missingval="–")
    incomplete = [n for n, r in results.items() if len(r["per_task"]) < len(tasks)]
    note = f"\n(partial: {', '.join(incomplete)} lack some tasks, scored as 0)" if incomplete else ""
    return table + note
