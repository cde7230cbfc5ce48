"""Does NetTailor keep fewer pre-trained blocks on tasks unlike the source (the paper's finding)?

Reads a run store and prints, per task of every NetTailor selection (seed 0 of each benchmark): how unlike
the source the task is, measured as the teacher's (fine-tuning's) accuracy minus the frozen feature
extractor's (the more
frozen features fail, the less the source's representation fits), the student's learned need for the
pre-trained blocks (mean attention of the pre-trained paths, before pruning), the chosen network (k removed,
kept blocks, MACs against the teacher's) and whether it is within the tolerance of the teacher and of the
student; then the Spearman rank correlation of the gap with the kept blocks, the MACs and the student's
mean attention (the finding predicts negative correlations).

    python bench/nettailor_transfer.py --results RESULTS
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from statistics import mean

from scipy.stats import spearmanr
from tabulate import tabulate

from vdd_bench.store import RunStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    records = [r for r in RunStore(args.results).done_records() if r.seed == args.seed]
    by_id = {r.run_id: r for r in records}
    features = {  # (benchmark, task) -> the frozen feature extractor's test accuracy
        (r.config.benchmark, r.task): r.accuracy("test") for r in records if r.method == "feature"
    }
    rows, columns = [], defaultdict(list)
    for r in sorted(records, key=lambda r: r.task):
        report = r.method_report
        if r.method != "nettailor" or "chosen" not in report or report.get("refit"):
            continue
        bench, task = r.config.benchmark, r.task
        teacher = by_id[r.config.inputs["teacher"]]
        student = by_id[r.config.inputs["student"]]
        feature = features.get((bench, task))
        gap = teacher.accuracy("test") - feature if feature is not None else None
        attention = mean(b["alphas"]["main"] for b in student.method_report["blocks"])
        val, tolerance = r.accuracy("val"), r.config.hparams["tolerance"]
        macs = r.accounting.macs / teacher.accounting.macs
        rows.append(
            [
                task,
                None if gap is None else round(gap, 1),
                round(attention, 3),
                report["chosen"],
                f"{report['kept_blocks']}/{report['total_blocks']}",
                round(macs, 2),
                f"{val:.1f} / {report['teacher_val_acc']:.1f} / {report['student_val_acc']:.1f}",
                "yes" if report["within_tolerance"] else "no",
                "yes" if val >= report["student_val_acc"] - tolerance else "no",
                f"{r.accuracy('test'):.2f} / {teacher.accuracy('test'):.2f} / "
                + ("-" if feature is None else f"{feature:.2f}"),
            ]
        )
        if gap is not None:
            for name, value in (("gap", gap), ("kept", report["kept_blocks"]), ("macs", macs)):
                columns[name].append(value)
            columns["attention"].append(attention)
    headers = [
        "task",
        "FT - feature (test)",
        "student's mean attention on pre-trained blocks",
        "removed k",
        "kept blocks",
        "MACs / teacher",
        "val: chosen / teacher / student",
        "within tolerance of teacher",
        "of student",
        "test: NetTailor / teacher / feature",
    ]
    print(tabulate(rows, headers=headers, tablefmt="github"))
    if len(columns["gap"]) > 2:
        for name in ("kept", "macs", "attention"):
            rho, p = spearmanr(columns["gap"], columns[name])
            print(
                f"Spearman(FT - feature gap, {name}) = {rho:+.2f} (p = {p:.2f}, {len(columns['gap'])} tasks)"
            )


if __name__ == "__main__":
    main()
