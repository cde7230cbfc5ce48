"""`vdd data verify ROOT`: check a benchmark root and report every problem found, each with its file.

Unlike `Benchmark`, which stops at the first defect, this collects them all. The id rules (category id
`k*10^7 + index`, image id `k*10^7 + split offset + running index`) and the official split sizes are
errors on a decathlon root (every task one of the ten) and, where they apply, warnings elsewhere: a custom
root such as the mini-decathlon numbers its tasks k = 1, 2, ... alphabetically and has its own sizes, even
for tasks that share an official name.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from vdd_bench.benchmark import (
    SPLITS,
    Benchmark,
    SplitScan,
    detect_kind,
    examples,
    find_tasks,
    labels_file,
    order_tasks,
    read_json,
    scan_categories,
    scan_split,
)
from vdd_bench.cache import FORMAT, SIZES_DIGEST
from vdd_bench.errors import DataError
from vdd_bench.images import files_digest, image_paths
from vdd_bench.tasks.decathlon import DECATHLON, NATIVE_RESOLUTION

_ID_BASE = 10**7
_SPLIT_OFFSET = {"train": 0, "val": 100_000, "test": 200_000}


@dataclass(frozen=True)
class Problem:
    severity: str  # "error" | "warning"
    file: str  # relative to the root when inside it
    message: str


@dataclass
class _TaskRow:
    task: str
    classes: int
    counts: dict[str, int] = field(default_factory=dict)
    official: bool = False
    errors: int = 0


@dataclass
class VerifyReport:
    root: Path
    kind: str = "custom"
    problems: list[Problem] = field(default_factory=list)
    rows: list[_TaskRow] = field(default_factory=list)
    digests: dict[str, str] = field(default_factory=dict)  # task -> sha256 of its images' bytes (--digest)

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)

    def summary_rows(self) -> list[dict[str, Any]]:
        """One row per task: classes, split sizes, the official sizes on a decathlon root, and a status."""
        out = []
        for row in self.rows:
            counts = [row.counts.get(s, 0) for s in SPLITS]
            entry: dict[str, Any] = {"task": row.task, "classes": row.classes}
            entry.update(zip(SPLITS, counts, strict=True))
            facts = DECATHLON.get(row.task) if row.official else None
            entry["official"], entry["status"] = "-", "errors" if row.errors else "OK"
            if facts is not None:
                expected = [facts.train, facts.val, facts.test]
                entry["official"] = "/".join(str(n) for n in expected)
                if counts != expected or row.classes != facts.num_classes:
                    entry["status"] = "mismatch"
            out.append(entry)
        return out


def format_report(report: VerifyReport) -> str:
    from tabulate import tabulate

    lines = [f"benchmark root {report.root} ({report.kind})"]
    if report.rows:
        lines += ["", tabulate(report.summary_rows(), headers="keys")]
    errors = sum(p.severity == "error" for p in report.problems)
    warnings = len(report.problems) - errors
    if report.digests:
        table = sorted(report.digests.items())
        lines += ["", "images (sha256 of every image's name and bytes, split by split):"]
        lines += ["", tabulate(table, headers=["task", "sha256"])]
    if report.problems:
        table = [(p.severity, p.file, p.message) for p in report.problems]
        lines += ["", tabulate(table, headers=["severity", "file", "problem"])]
    lines += [
        "",
        f"{errors} error(s), {warnings} warning(s): " + ("OK" if report.ok else "NOT usable as it is"),
    ]
    return "\n".join(lines)


def verify(
    root: Path,
    test_labels: Path | None = None,
    check_images: bool = True,
    progress: bool = False,
    cache: Path | None = None,
    digest: bool = False,
) -> VerifyReport:
    """Check everything about a root and collect every problem (see the module docstring for the rules);
    with `cache`, also the HDF5 pack of it that training would read (`vdd data pack`); with `digest`, the
    sha256 of each task's image contents (the fingerprint covers the annotations only)."""
    root = Path(root).expanduser().resolve()
    report = VerifyReport(root)
    try:
        names = find_tasks(root)
    except DataError as exc:
        report.problems.append(Problem("error", "annotations", _strip(str(exc), root / "annotations")))
        return report
    checker = _Checker(root, report, Path(test_labels).resolve() if test_labels is not None else None)
    report.kind = detect_kind(names, checker.load(root / "annotations" / f"{names[0]}_train.json", names[0]))
    for task in order_tasks(names, report.kind):
        # official prefixes on a decathlon root, else k = 1, 2, ... in alphabetical order of the root's tasks
        k = DECATHLON[task].prefix if report.kind == "decathlon" else names.index(task) + 1
        checker.task(task, k)
    if check_images:
        checker.images(progress)
    if cache is not None:
        checker.cache(Path(cache))
    if digest and report.ok:
        bench = Benchmark.open(root, test_labels)
        for task in bench.task_names():
            files = [f for split in SPLITS for f in bench.split(task, split).files]
            report.digests[task] = files_digest(image_paths(root, files), files, contents=True)
    for row in report.rows:
        row.errors = checker.errors[row.task]
    return report


def _strip(message: str, path: Path) -> str:
    """DataError messages start with the path; the report gives the file in its own column."""
    prefix = f"{path}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


class _Checker:
    def __init__(self, root: Path, report: VerifyReport, test_labels: Path | None) -> None:
        self.root = root
        self.report = report
        self.ann = root / "annotations"
        self.test_labels = test_labels
        self.errors: Counter[str | None] = Counter()  # errors per task
        self.image_jobs: list[tuple[str, str, tuple[int, int]]] = []  # (task, file, (width, height))
        self._docs: dict[Path, Any] = {}
        self._challenge: dict[int, int] | None = None
        if test_labels is not None:
            self._challenge = self._read_challenge(test_labels)

    @property
    def official(self) -> bool:
        return self.report.kind == "decathlon"

    def add(self, severity: str, path: Path | str, message: str, task: str | None = None) -> None:
        name = str(path)
        if isinstance(path, Path) and path.is_relative_to(self.root):
            name = str(path.relative_to(self.root))
        self.report.problems.append(Problem(severity, name, message))
        if severity == "error":
            self.errors[task] += 1

    def load(self, path: Path, task: str | None = None) -> Any:
        """The parsed file, or None after recording why not (once per file)."""
        if path not in self._docs:
            try:
                self._docs[path] = read_json(path)
            except DataError as exc:
                self._docs[path] = None
                self.add("error", path, _strip(str(exc), path), task)
        return self._docs[path]

    def task(self, task: str, k: int) -> None:
        """Check one task's annotation files and queue its images for `images`."""
        row = _TaskRow(task, 0, official=self.official)
        self.report.rows.append(row)
        train_file = self.ann / f"{task}_train.json"
        doc = self.load(train_file, task)
        if doc is None:
            return
        cats = scan_categories(doc)
        row.classes = len(cats.ids)
        for message in cats.problems:
            self.add("error", train_file, message, task)
        expected_ids = [k * _ID_BASE + i for i in range(1, len(cats.ids) + 1)]
        if cats.ids and cats.ids != expected_ids:
            self.add(
                self.rule,
                train_file,
                f"category ids do not follow k*10^7 + index with k={k}: "
                f"found {examples(cats.ids)}, expected {examples(expected_ids)}",
                task,
            )
        for split in SPLITS:
            scan = self._split(task, split, cats.ids, k)
            if scan is not None:
                row.counts[split] = len(scan.files)
                self.image_jobs += [(task, f, size) for f, size in zip(scan.files, scan.sizes, strict=True)]
        if self.official:
            self._official_counts(task, row)

    @property
    def rule(self) -> str:
        """Severity of id-rule problems: errors on a decathlon root, warnings elsewhere."""
        return "error" if self.official else "warning"

    def _split(self, task: str, split: str, category_ids: list[int], k: int) -> SplitScan | None:
        path = self.ann / f"{task}_{'test_stripped' if split == 'test' else split}.json"
        labels = labels_file(self.ann, self.test_labels, task)
        if not path.is_file():
            if split != "test" or labels is None:
                self.add(
                    "error", path, "annotation file missing; restore it from the benchmark's release", task
                )
                return None
            path = labels  # as Benchmark does: the labelled test file also lists the test images
        doc = self.load(path, task)
        if doc is None:
            return None
        scan = scan_split(doc, category_ids, labelled=split != "test")
        for message in scan.problems:
            self.add("error", path, message, task)
        offset = _SPLIT_OFFSET[split]
        outside = [i for i in scan.image_ids if i // _ID_BASE != k or i % _ID_BASE <= offset]
        if outside:
            message = f"image ids outside k*10^7 + {offset} + index (k={k}): {examples(outside)}"
            self.add(self.rule, path, message, task)
        if split == "test":
            self._test_labels(task, scan.image_ids, category_ids, labels)
        return scan

    def _test_labels(self, task: str, ids: list[int], category_ids: list[int], labels: Path | None) -> None:
        wanted = set(category_ids)
        if self._challenge is not None and any(c in wanted for c in self._challenge.values()):
            assert self.test_labels is not None
            path, category_of = self.test_labels, self._challenge
        elif labels is not None and self.load(labels, task) is not None:
            scan = scan_split(self.load(labels), category_ids, labelled=True)
            for message in scan.problems:
                self.add("error", labels, message, task)
            path, category_of = labels, scan.category_of
        else:
            return
        missing = [i for i in ids if i not in category_of]
        if missing:
            self.add("error", path, f"no label for test images {examples(missing)} of task {task}", task)
        foreign = [category_of[i] for i in ids if i in category_of and category_of[i] not in wanted]
        if foreign:
            message = (
                f"test labels of task {task} use category ids {examples(foreign)} that are not the task's"
            )
            self.add("error", path, message, task)

    def _read_challenge(self, path: Path) -> dict[int, int] | None:
        """image id -> category id of a challenge-format labels file; None for a folder or a broken file."""
        doc = None if path.is_dir() else self.load(path)
        if doc is None:
            return None
        if not isinstance(doc, list):
            self.add(
                "error", path, 'expected a list of {"image_id", "category_id"} entries (challenge format)'
            )
            return None
        keys = ("image_id", "category_id")
        good = [e for e in doc if isinstance(e, dict) and all(isinstance(e.get(k), int) for k in keys)]
        if len(good) != len(doc):
            self.add(
                "error", path, f"{len(doc) - len(good)} entries without integer 'image_id' and 'category_id'"
            )
        return {e["image_id"]: e["category_id"] for e in good}

    def _official_counts(self, task: str, row: _TaskRow) -> None:
        facts = DECATHLON[task]
        if row.classes and row.classes != facts.num_classes:
            message = f"task {task} has {row.classes} classes, the official release {facts.num_classes}"
            self.add("error", self.ann / f"{task}_train.json", message, task)
        for split, expected in zip(SPLITS, (facts.train, facts.val, facts.test), strict=True):
            found = row.counts.get(split)
            if found is not None and found != expected:
                path = self.ann / f"{task}_{'test_stripped' if split == 'test' else split}.json"
                message = f"task {task} split {split}: expected {expected} images (official), found {found}"
                self.add("error", path, message, task)

    def cache(self, path: Path) -> None:
        """The pack must be readable to its end, of this root's annotations, with every split's images."""
        import h5py

        fix = "delete it and re-pack (`vdd data pack`)"
        try:
            bench: Benchmark | None = Benchmark.open(self.root, self.test_labels)
            fingerprint = bench.fingerprint
        except DataError:
            bench, fingerprint = None, None  # the annotation problems are reported on their own
        try:
            with h5py.File(path, "r") as h5:
                if h5.attrs.get("format") != FORMAT:
                    self.add("error", path, f"not a {FORMAT} cache file; {fix}")
                    return
                if fingerprint is not None and h5.attrs.get("fingerprint") != fingerprint:
                    message = f"packed from other annotations than this root's ({fingerprint}): {fix}"
                    self.add("error", path, message)
                    return
                for row in self.report.rows:
                    for split, count in row.counts.items():
                        key = f"{row.task}/{split}/images"
                        if key not in h5:
                            continue  # a pack of some tasks only: training decodes the others
                        images = h5[key]
                        if images.shape[0] != count:
                            message = f"{key} holds {images.shape[0]} images, the annotations {count}; {fix}"
                            self.add("error", path, message, row.task)
                        elif count:
                            images[count - 1]  # the last image: a file cut short fails here
                        if bench is not None and SIZES_DIGEST in h5[f"{row.task}/{split}"].attrs:
                            self._same_images(path, bench, row.task, split, h5[f"{row.task}/{split}"])
        except OSError as exc:
            self.add("error", path, f"unreadable or truncated cache file ({exc}); {fix}")

    def _same_images(self, path: Path, bench: Benchmark, task: str, split: str, group: Any) -> None:
        """Same annotations do not mean same images: the pack's digest of image names and sizes must be
        this root's (a pack of another copy of the data, whose images differ, would be read silently)."""
        try:
            files = bench.split(task, split).files
            here = files_digest(image_paths(bench.root, files), files)
        except (DataError, OSError):
            return  # a missing or unsafe image is reported by the image checks
        if group.attrs[SIZES_DIGEST] != here:
            message = (
                f"{task}/{split} was packed from other images than this root's (same annotations, other "
                "file sizes): delete it and re-pack (`vdd data pack`)"
            )
            self.add("error", path, message, task)

    def images(self, progress: bool) -> None:
        """Decode every queued image fully, a few at a time in threads (PIL releases the GIL)."""
        from tqdm import tqdm

        def check(job: tuple[str, str, tuple[int, int]]) -> list[tuple[str, str]]:
            try:
                (path,) = image_paths(self.root, [job[1]])
            except DataError as exc:  # outside the root, or a FIFO that would block the decode forever
                return [("error", str(exc).removeprefix(f"{self.root / job[1]}: "))]
            return _check_image(path, job[2], self.official)

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            results = pool.map(check, self.image_jobs)
            bar = tqdm(results, total=len(self.image_jobs), unit="img", desc="images", disable=not progress)
            for (task, file, _), problems in zip(self.image_jobs, bar, strict=True):
                for severity, message in problems:
                    self.add(severity, file, message, task)


def _check_image(path: Path, size: tuple[int, int], official: bool) -> list[tuple[str, str]]:
    """(severity, message) pairs for one image file."""
    try:
        with Image.open(path) as img:
            img.load()  # a full decode: Image.verify() does not notice truncated JPEGs
            found = img.size
    except FileNotFoundError:
        return [("error", "image file missing; restore it from the benchmark's release")]
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        return [("error", f"cannot decode the image ({exc}); restore or re-download it")]
    problems = []
    if size != (0, 0) and found != size:
        problems.append(
            ("warning", f"image is {found[0]}x{found[1]}, the annotation says {size[0]}x{size[1]}")
        )
    if official and min(found) != NATIVE_RESOLUTION:
        problems.append(
            ("warning", f"shorter side is {min(found)} px, the decathlon's is {NATIVE_RESOLUTION}")
        )
    return problems
