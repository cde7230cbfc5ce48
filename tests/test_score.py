from __future__ import annotations

import pytest
from vdd_bench.tasks.decathlon import OFFICIAL_ORDER

from vdd_bench.errors import VddError
from vdd_bench.reference import published_rows
from vdd_bench.score import decathlon_score, official_baselines, score_predictions, task_score


def test_baseline_accuracies_earn_250_each_and_2500_in_all():
    baselines = official_baselines()
    assert list(baselines) == list(OFFICIAL_ORDER)
    result = decathlon_score(dict(baselines), baselines)
    assert all(s == 250.0 for s in result["per_task"].values())
    assert result["total"] == 2500.0
    assert result["missing"] == []


@pytest.mark.parametrize("row", [r for r in published_rows() if r["accuracies"]], ids=lambda r: r["method"])
def test_published_rows_give_their_published_scores(row):
    assert list(row["accuracies"]) == list(OFFICIAL_ORDER)
    total = decathlon_score(row["accuracies"], official_baselines())["total"]
    assert total == pytest.approx(row["score"], abs=3)


def test_published_rows_cover_the_reference_table():
    scores = {r["method"]: r["score"] for r in published_rows()}
    assert sorted(scores.values()) == [2515, 2838, 2851, 3159, 3412, 3507, 3744]
    assert all(r["source"] for r in published_rows())


def test_perfect_task_earns_1000_and_twice_the_baseline_error_earns_0():
    assert task_score(100.0, 60.0) == 1000.0
    assert task_score(20.0, 60.0) == 0.0  # error 0.8 = 2x the baseline's 0.4
    assert task_score(0.0, 60.0) == 0.0  # beyond 2x: clipped at 0
    assert task_score(80.0, 60.0) == pytest.approx(1000 * (1 - 0.2 / 0.8) ** 2)


@pytest.mark.parametrize(
    "acc, base", [(-1, 50), (100.5, 50), (float("nan"), 50), (50, 100), (50, 101), ("90", 50)]
)
def test_bad_values_raise(acc, base):
    with pytest.raises(VddError):
        task_score(acc, base)


def test_unknown_task_raises_and_missing_tasks_are_listed():
    baselines = official_baselines()
    with pytest.raises(VddError, match="mnist"):
        decathlon_score({"mnist": 99.0}, baselines)
    result = decathlon_score({"svhn": 96.55}, baselines)
    assert result["total"] == 250.0
    assert len(result["missing"]) == 9 and "svhn" not in result["missing"]


LABELS = {1: 10, 2: 11, 3: 10, 4: 20}
TASKS = {1: "a", 2: "a", 3: "a", 4: "b"}


def _preds(pairs):
    return [{"image_id": i, "category_id": c} for i, c in pairs]


def test_score_predictions_counts_per_task():
    acc = score_predictions(_preds([(1, 10), (2, 10), (3, 10), (4, 20)]), LABELS, TASKS)
    assert acc == {"a": pytest.approx(200 / 3), "b": 100.0}


@pytest.mark.parametrize(
    "pairs, bad",
    [
        ([(1, 10), (2, 11), (3, 10), (4, 20), (2, 11)], "2"),  # duplicate
        ([(1, 10), (2, 11), (4, 20)], "3"),  # missing
        ([(1, 10), (2, 11), (3, 10), (4, 20), (99, 1)], "99"),  # unknown
    ],
)
def test_score_predictions_rejects_duplicates_missing_and_unknown(pairs, bad):
    with pytest.raises(VddError, match=rf"\b{bad}\b"):
        score_predictions(_preds(pairs), LABELS, TASKS)


@pytest.mark.parametrize(
    ("category", "message"),
    [
        (
            12345,
            r"prediction #1 \(image id 2\) has category_id 12345, which is not one of task a's 2 categories",
        ),
        ("11", r"prediction #1 \(image id 2\) has category_id '11': category ids are integers"),
        (True, r"has category_id True: category ids are integers"),
        (20, r"category_id 20, which is not one of task a's 2 categories \(10..11\)"),  # task b's category
    ],
)
def test_a_category_that_is_not_the_tasks_is_an_error_not_a_wrong_answer(category, message):
    preds = _preds([(1, 10), (2, category), (3, 10), (4, 20)])
    with pytest.raises(VddError, match=message):
        score_predictions(preds, LABELS, TASKS, {"a": {10, 11}, "b": {20}})
