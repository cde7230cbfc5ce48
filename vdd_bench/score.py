"""The decathlon score (Rebuffi et al. 2017) and challenge-format prediction scoring.

Per task, with top-1 test error E and the baseline's error E_base (fractions): Emax = 2 * E_base,
S = 1000 / Emax^2 * max(0, Emax - E)^2 = 1000 * max(0, 1 - E / Emax)^2. The baseline earns 250 per task,
a perfect task 1000, an error of twice the baseline's or more 0.
"""

from __future__ import annotations

import math

from vdd_bench.errors import VddError
from vdd_bench.tasks.decathlon import DECATHLON, OFFICIAL_ORDER

# A perfect baseline leaves no error to scale by (Emax = 0). Benchmarks scored against their own
# fine-tuning runs (anything but the real decathlon) count accuracies above this as this, for the run and
# the baseline alike, which keeps fine-tuning at exactly 250 per task.
MAX_SCORED_ACC = 99.5


def accuracy_floor(num_classes: int, majority_acc: float | None = None) -> float:
    """The accuracy (%) reached without learning anything: chance, 100 / classes, or the share of the
    split's most common class when that is higher (a network that predicts one class scores it)."""
    return max(100.0 / num_classes, majority_acc or 0.0)


def learned_nothing(acc: float, floor: float) -> bool:
    """At or below the floor of `accuracy_floor` (to a rounding error)."""
    return acc <= floor + 1e-9


def _check_percent(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise VddError(f"{what} must be a percentage between 0 and 100, got {value!r}")
    if not 0.0 <= value <= 100.0:
        raise VddError(f"{what} must be a percentage between 0 and 100, got {value!r}")
    return float(value)


def task_score(acc: float, baseline_acc: float) -> float:
    """Decathlon points of one task; ``acc`` and ``baseline_acc`` are top-1 accuracies in percent."""
    acc = _check_percent(acc, "accuracy")
    baseline_acc = _check_percent(baseline_acc, "baseline accuracy")
    if baseline_acc == 100.0:
        raise VddError("baseline accuracy 100 leaves no error to score against; use a baseline below 100")
    error = 1.0 - acc / 100.0
    error_max = 2.0 * (1.0 - baseline_acc / 100.0)
    return 1000.0 * max(0.0, 1.0 - error / error_max) ** 2


def decathlon_score(accs: dict[str, float], baselines: dict[str, float]) -> dict:
    """Per-task scores (in the baselines' task order), their total, and the baseline tasks not scored."""
    unknown = [t for t in accs if t not in baselines]
    if unknown:
        raise VddError(f"no baseline accuracy for task(s) {', '.join(unknown)}")
    per_task = {}
    for task, baseline in baselines.items():
        if task in accs:
            try:
                per_task[task] = task_score(accs[task], baseline)
            except VddError as e:
                raise VddError(f"task {task}: {e}") from e
    return {
        "per_task": per_task,
        "total": sum(per_task.values()),
        "missing": [t for t in baselines if t not in accs],
    }


def official_baselines() -> dict[str, float]:
    """The "Finetune" baseline accuracies of the ten decathlon tasks, in the official order."""
    return {t: DECATHLON[t].baseline_acc for t in OFFICIAL_ORDER}


def score_predictions(
    predictions: list[dict],
    labels: dict[int, int],
    task_of_image: dict[int, str],
    categories: dict[str, set[int]] | None = None,
) -> dict[str, float]:
    """Per-task top-1 accuracy (percent) of challenge-format predictions ``[{"image_id", "category_id"}]``.

    Every labelled image must be predicted exactly once, and no other image may be; with `categories`
    (task -> its category ids) a category that is not the image's task's is an error, not a wrong answer.
    """
    predicted: dict[int, int] = {}
    for i, p in enumerate(predictions):
        if not (isinstance(p, dict) and "image_id" in p and "category_id" in p):
            raise VddError(f"prediction #{i} is not an object with image_id and category_id: {p!r}")
        image_id, category = p["image_id"], p["category_id"]
        if image_id not in labels:
            raise VddError(f"prediction #{i} names image id {image_id!r}, which has no label")
        if image_id in predicted:
            raise VddError(f"image id {image_id} is predicted more than once (again in prediction #{i})")
        task = task_of_image.get(image_id)
        if isinstance(category, bool) or not isinstance(category, int):
            raise VddError(
                f"prediction #{i} (image id {image_id}) has category_id {category!r}: category ids are "
                "integers, those of the image's task"
            )
        if categories is not None and task in categories and category not in categories[task]:
            known = sorted(categories[task])
            raise VddError(
                f"prediction #{i} (image id {image_id}) has category_id {category}, which is not one of task "
                f"{task}'s {len(known)} categories ({known[0]}..{known[-1]}): predict the task's own ids"
            )
        predicted[image_id] = category
    correct: dict[str, int] = {}
    total: dict[str, int] = {}
    for image_id, category in labels.items():
        if image_id not in predicted:
            raise VddError(f"image id {image_id} has no prediction ({len(labels) - len(predicted)} missing)")
        if image_id not in task_of_image:
            raise VddError(f"image id {image_id} has a label but no task")
        task = task_of_image[image_id]
        total[task] = total.get(task, 0) + 1
        correct[task] = correct.get(task, 0) + (predicted[image_id] == category)
    return {task: 100.0 * correct[task] / n for task, n in total.items()}
