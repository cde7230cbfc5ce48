"""Is a method's cell really below (or above) a baseline's, or within what the test images allow?

Reads a run store, selects each cell's run as `vdd leaderboard` does (`--select`), and for every method and
task pairs its test predictions with the baseline's on the same images: the images only the method gets
right, those only the baseline gets right, and the two-sided exact McNemar p-value (a binomial test on those
discordant images; seeds are pooled). A mini-decathlon task has 200 to 500 test images, so a gap of a point
or two is often a handful of images. A chain's cell (PackNet, LwF) is its final network's accuracy: its
predictions are those the chain's last step saved for every task (`continual-predictions.npz`).

    python bench/versus.py --results RESULTS --baseline feature --select val
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from scipy.stats import binomtest
from tabulate import tabulate

from vdd_bench.chains import CHAIN_PREDICTIONS_FILE
from vdd_bench.leaderboard import build_groups
from vdd_bench.record import RunRecord
from vdd_bench.store import RunStore


def correct(results: Path, run: RunRecord) -> dict[int, bool]:
    """Test image id -> whether the cell's network predicted it right: the run's own, or for a chain step
    the network at the end of its chain (the labels are the step's, on the same images)."""
    saved = np.load(results / "runs" / run.run_id / "predictions.npz")
    labels = dict(zip(saved["test_image_ids"].tolist(), saved["test_labels"].tolist(), strict=True))
    if run.chain_end is None:
        ids, predictions = saved["test_image_ids"], saved["test_pred"]
    else:
        final = np.load(results / "runs" / run.chain_end / CHAIN_PREDICTIONS_FILE)
        ids, predictions = final[f"{run.task}.test_image_ids"], final[f"{run.task}.test_pred"]
    return {i: p == labels[i] for i, p in zip(ids.tolist(), predictions.tolist(), strict=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--baseline", default="feature")
    parser.add_argument("--select", default=None, choices=["val", "oracle", "default"])
    parser.add_argument(
        "--trials", type=int, default=None, help="Each search's first N trials, as the leaderboard's."
    )
    parser.add_argument("--below-only", action="store_true", help="Only the cells below the baseline's.")
    args = parser.parse_args()
    store = RunStore(args.results)
    records = list(store.done_records())
    for group in build_groups(records, "test", None, store.entry_ids(), args.select, args.trials):
        rows = {row.label: row for row in group.rows if not row.published}  # a method may have two rows
        if args.baseline not in rows:
            continue
        base = rows[args.baseline]
        table = []
        for label, row in rows.items():
            if label == args.baseline:
                continue
            for task in group.tasks:
                if task not in row.accs or task not in base.accs:
                    continue
                if args.below_only and row.accs[task] >= base.accs[task]:
                    continue
                only_method = only_base = 0
                for run in (r for r in row.runs if r.task == task):
                    [paired] = [b for b in base.runs if b.task == task and b.config.seed == run.config.seed]
                    mine, theirs = correct(args.results, run), correct(args.results, paired)
                    only_method += sum(mine[i] and not theirs[i] for i in mine)
                    only_base += sum(theirs[i] and not mine[i] for i in mine)
                n = only_method + only_base
                p = binomtest(only_method, n, 0.5).pvalue if n else 1.0
                table.append(
                    [label, task, row.accs[task], base.accs[task], only_method, only_base, f"{p:.3f}"]
                )
        headers = ["method", "task", "acc", args.baseline, "only method right", "only baseline right", "p"]
        print(f"{group.name}\n{tabulate(table, headers, floatfmt='.2f')}\n")


if __name__ == "__main__":
    main()
