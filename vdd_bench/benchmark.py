"""Reader for any benchmark root in the official decathlon-1.0 format.

A root holds `annotations/<task>_{train,val,test_stripped}.json` (COCO style) and the images they name.
Test labels come from a labels source when one is available: the `test_labels` argument (a folder of
`<task>_test.json` files, or one challenge-submission file `[{"image_id", "category_id"}, ...]`), else
`annotations/<task>_test.json`. Opening a root lists files only; each JSON file is parsed on first use.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from vdd_bench.errors import DataError
from vdd_bench.tasks.decathlon import DECATHLON, OFFICIAL_ORDER

SPLITS = ("train", "val", "test")
TOY_DESCRIPTION = "vdd-bench toy decathlon"
FIX_HINT = "fix or replace the file (`vdd data verify ROOT` lists every problem)"
_EXAMPLES = 3


def read_json(path: Path) -> Any:
    """Parse one JSON file; a missing or malformed file raises DataError naming it."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise DataError(
            f"{path}: cannot read it ({exc.strerror or exc}); check the path and permissions"
        ) from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: malformed JSON at line {exc.lineno} column {exc.colno} ({exc.msg}); "
            "fix or re-download the file"
        ) from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason}); fix or re-download the file") from exc


def examples(values: Collection[Any]) -> str:
    """'a, b, c (+N more)': keeps one-line messages short when many entries share a defect."""
    shown = ", ".join(str(v) for v in list(values)[:_EXAMPLES])
    return shown if len(values) <= _EXAMPLES else f"{shown} (+{len(values) - _EXAMPLES} more)"


@dataclass
class CategoryScan:
    ids: list[int]  # sorted; class index i <-> ids[i]
    names: list[str]
    problems: list[str]


def scan_categories(doc: Any) -> CategoryScan:
    cats = doc.get("categories") if isinstance(doc, dict) else None
    if not isinstance(cats, list) or not cats:
        return CategoryScan([], [], ["no 'categories' list (or it is empty)"])
    bad = [i for i, c in enumerate(cats) if not isinstance(c, dict) or not isinstance(c.get("id"), int)]
    if bad:
        return CategoryScan([], [], [f"categories without an integer 'id' at positions {examples(bad)}"])
    by_id = {c["id"]: str(c.get("name", c["id"])) for c in cats}
    counts = Counter(c["id"] for c in cats)
    dups = sorted(i for i, n in counts.items() if n > 1)
    problems = [f"duplicate category ids {examples(dups)}"] if dups else []
    ids = sorted(by_id)
    return CategoryScan(ids, [by_id[i] for i in ids], problems)


@dataclass
class SplitScan:
    """What one annotation file says, plus every structural problem found in it."""

    files: list[str] = field(default_factory=list)
    image_ids: list[int] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height) as written, (0, 0) if absent
    category_of: dict[int, int] = field(default_factory=dict)  # image id -> category id
    problems: list[str] = field(default_factory=list)


def scan_split(doc: Any, category_ids: Collection[int], labelled: bool) -> SplitScan:
    """Check one split file against the task's categories; `labelled` splits need one annotation per image."""
    scan = SplitScan()
    if not isinstance(doc, dict):
        scan.problems.append("not a JSON object with 'images' (COCO style)")
        return scan
    images = doc.get("images")
    if not isinstance(images, list):
        scan.problems.append("missing key 'images' (a list)")
        return scan
    bad, outside = [], []
    for pos, img in enumerate(images):
        if (
            not isinstance(img, dict)
            or not isinstance(img.get("id"), int)
            or not isinstance(img.get("file_name"), str)
        ):
            bad.append(pos)
            continue
        if not _stays_in_root(img["file_name"]):
            outside.append(pos)
            continue
        scan.image_ids.append(img["id"])
        scan.files.append(img["file_name"])
        w, h = img.get("width"), img.get("height")
        scan.sizes.append((w, h) if isinstance(w, int) and isinstance(h, int) else (0, 0))
    if bad:
        scan.problems.append(
            f"image entries without an integer 'id' and a 'file_name' at positions {examples(bad)}"
        )
    if outside:
        scan.problems.append(
            "image entries whose 'file_name' leaves the benchmark root (absolute, or with '..') at "
            f"positions {examples(outside)}: name each image relative to the root"
        )
    if not images:
        scan.problems.append("no images: the split is empty")
    known = set(scan.image_ids)
    if len(known) != len(scan.image_ids):
        dups = sorted(i for i, n in Counter(scan.image_ids).items() if n > 1)
        scan.problems.append(f"duplicate image ids {examples(dups)}")
    if labelled:
        _scan_annotations(doc, known, set(category_ids), scan)
    return scan


def _stays_in_root(file_name: str) -> bool:
    """A relative name without '..': read as written, it cannot leave the root (symbolic links are checked
    when the images are opened, `vdd_bench.images.image_paths`)."""
    name = PurePosixPath(file_name)
    return bool(file_name) and not name.is_absolute() and ".." not in name.parts


def _scan_annotations(doc: dict, known: set[int], categories: set[int], scan: SplitScan) -> None:
    anns = doc.get("annotations")
    if not isinstance(anns, list):
        scan.problems.append("missing key 'annotations' (a list) in a labelled split")
        return
    malformed, unknown_image, unknown_cat, repeated = [], [], [], []
    annotated: set[int] = set()  # includes images whose one annotation has an unknown category
    for pos, ann in enumerate(anns):
        if not isinstance(ann, dict) or not all(
            isinstance(ann.get(k), int) for k in ("image_id", "category_id")
        ):
            malformed.append(pos)
        elif ann["image_id"] not in known:
            unknown_image.append(ann["image_id"])
        elif ann["image_id"] in annotated:
            repeated.append(ann["image_id"])
        elif ann["category_id"] not in categories:
            unknown_cat.append(ann["category_id"])
            annotated.add(ann["image_id"])
        else:
            scan.category_of[ann["image_id"]] = ann["category_id"]
            annotated.add(ann["image_id"])
    unlabelled = [i for i in scan.image_ids if i not in annotated]
    for values, what in (
        (malformed, "annotations without integer 'image_id' and 'category_id' at positions"),
        (unknown_image, "annotations pointing to unknown image ids"),
        (unknown_cat, "annotations with category ids not in the task's 'categories':"),
        (repeated, "images with more than one annotation:"),
        (unlabelled, "images without an annotation:"),
    ):
        if values:
            scan.problems.append(f"{what} {examples(values)}")


@dataclass(frozen=True)
class SplitIndex:
    task: str
    split: str  # "train" | "val" | "test"
    files: list[str]  # relative to the root, in the order of the annotation file's `images`
    image_ids: list[int]
    labels: np.ndarray | None  # int64 class index; None when the split has no labels

    def __len__(self) -> int:
        return len(self.files)


@dataclass(frozen=True)
class TaskInfo:
    name: str
    num_classes: int
    category_ids: tuple[int, ...]  # sorted; class index i <-> category_ids[i]
    category_names: tuple[str, ...]
    has_test_labels: bool


class TaskTable(Mapping[str, TaskInfo]):
    """Ordered read-only task mapping; a task's entry parses its train file on first access only."""

    def __init__(self, names: list[str], load: Callable[[str], TaskInfo]) -> None:
        self._names = names
        self._load = load
        self._infos: dict[str, TaskInfo] = {}

    def __getitem__(self, name: str) -> TaskInfo:
        if name not in self._names:
            raise KeyError(name)
        if name not in self._infos:
            self._infos[name] = self._load(name)
        return self._infos[name]

    def __contains__(self, name: object) -> bool:  # without parsing, unlike Mapping's default
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class Benchmark:
    """A benchmark root; build it with `Benchmark.open(root)`."""

    def __init__(self, root: Path, names: list[str], test_labels: Path | None) -> None:
        self.root = root
        self.ann_dir = root / "annotations"
        self.test_labels = test_labels
        self._docs: dict[Path, Any] = {}
        self._challenge_map: dict[int, int] | None = None
        self._splits: dict[tuple[str, str], SplitIndex] = {}
        self.kind = detect_kind(names, self._doc(self.ann_dir / f"{names[0]}_train.json"))
        self.name = {"decathlon": "decathlon-1.0", "toy": "toy-decathlon"}.get(
            self.kind, f"custom-{root.name}"
        )
        self.tasks: Mapping[str, TaskInfo] = TaskTable(order_tasks(names, self.kind), self._task_info)

    @classmethod
    def open(cls, root: str | Path, test_labels: str | Path | None = None) -> Benchmark:
        root = Path(root).expanduser().resolve()
        names = find_tasks(root)
        labels = Path(test_labels).expanduser().resolve() if test_labels is not None else None
        if labels is not None and not labels.exists():
            raise DataError(
                f"{labels}: test labels not found; give a folder of <task>_test.json files "
                "or one challenge-format JSON file"
            )
        return cls(root, names, labels)

    def task_names(self) -> list[str]:
        return list(self.tasks)

    @cached_property
    def fingerprint(self) -> str:
        """sha256 over the names and contents of the annotation files in use, never their paths."""
        digest = hashlib.sha256()
        for name, path in sorted(self._files_in_use()):
            data = path.read_bytes()
            digest.update(f"{name}\0{len(data)}\0".encode())
            digest.update(data)
        return digest.hexdigest()[:12]

    def split(self, task: str, split: str) -> SplitIndex:
        self._check(task, split)
        key = (task, split)
        if key not in self._splits:
            self._splits[key] = self._test(task) if split == "test" else self._labelled(task, split)
        return self._splits[key]

    # -- internals -------------------------------------------------------------------------------

    def _doc(self, path: Path) -> Any:
        if path not in self._docs:
            self._docs[path] = read_json(path)
        return self._docs[path]

    def _check(self, task: str, split: str) -> None:
        if task not in self.tasks:
            raise DataError(f"unknown task {task!r} in {self.root}; known tasks: {', '.join(self.tasks)}")
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")

    def _files_in_use(self) -> list[tuple[str, Path]]:
        used = []
        for task in self.tasks:
            for suffix in ("train", "val", "test_stripped"):
                path = self.ann_dir / f"{task}_{suffix}.json"
                if path.is_file():
                    used.append((path.name, path))
            labels = labels_file(self.ann_dir, self.test_labels, task)
            if labels is not None:
                used.append((labels.name, labels))
        if self.test_labels is not None and self.test_labels.is_file():
            used.append(("@test-labels", self.test_labels))
        return used

    def _categories(self, task: str) -> CategoryScan:
        path = self.ann_dir / f"{task}_train.json"
        cats = scan_categories(self._doc(path))
        if cats.problems:
            raise DataError(f"{path}: {cats.problems[0]}; {FIX_HINT}")
        return cats

    def _task_info(self, task: str) -> TaskInfo:
        cats = self._categories(task)
        has_labels = (
            self._challenge_covers(cats.ids) or labels_file(self.ann_dir, self.test_labels, task) is not None
        )
        return TaskInfo(task, len(cats.ids), tuple(cats.ids), tuple(cats.names), has_labels)

    def _scan(self, path: Path, task: str, labelled: bool) -> SplitScan:
        if not path.is_file():
            raise DataError(f"{path}: annotation file missing; restore it from the benchmark's release")
        scan = scan_split(self._doc(path), self.tasks[task].category_ids, labelled)
        if scan.problems:
            raise DataError(f"{path}: {scan.problems[0]}; {FIX_HINT}")
        return scan

    def _labelled(self, task: str, split: str) -> SplitIndex:
        path = self.ann_dir / f"{task}_{split}.json"
        scan = self._scan(path, task, labelled=True)
        labels = self._class_index(task, scan.image_ids, scan.category_of, path)
        return SplitIndex(task, split, scan.files, scan.image_ids, labels)

    def _test(self, task: str) -> SplitIndex:
        stripped = self.ann_dir / f"{task}_test_stripped.json"
        labels_path = labels_file(self.ann_dir, self.test_labels, task)
        scan = self._scan(stripped if stripped.is_file() or labels_path is None else labels_path, task, False)
        if self._challenge_covers(self.tasks[task].category_ids):
            assert self.test_labels is not None
            where, category_of = self.test_labels, self._challenge()
        elif labels_path is not None:
            where, category_of = labels_path, self._scan(labels_path, task, labelled=True).category_of
        else:
            return SplitIndex(task, "test", scan.files, scan.image_ids, None)
        missing = [i for i in scan.image_ids if i not in category_of]
        if missing:
            raise DataError(
                f"{where}: no label for test image ids {examples(missing)} of task {task!r}; "
                "give labels for every test image or none"
            )
        labels = self._class_index(task, scan.image_ids, category_of, where)
        return SplitIndex(task, "test", scan.files, scan.image_ids, labels)

    def _class_index(self, task: str, ids: list[int], category_of: dict[int, int], where: Path) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.tasks[task].category_ids)}
        wrong = [category_of[i] for i in ids if category_of[i] not in index]
        if wrong:
            raise DataError(
                f"{where}: category ids {examples(wrong)} are not categories of task {task!r}; {FIX_HINT}"
            )
        return np.array([index[category_of[i]] for i in ids], dtype=np.int64)

    def _challenge(self) -> dict[int, int]:
        """image id -> category id from the challenge-format labels file, parsed once."""
        if self._challenge_map is None:
            path = self.test_labels
            assert path is not None
            doc = self._doc(path)
            if not isinstance(doc, list):
                raise DataError(
                    f'{path}: expected a list of {{"image_id", "category_id"}} entries '
                    "(challenge-submission format)"
                )
            keys = ("image_id", "category_id")
            bad = [
                p
                for p, e in enumerate(doc)
                if not isinstance(e, dict) or not all(isinstance(e.get(k), int) for k in keys)
            ]
            if bad:
                raise DataError(
                    f"{path}: entries without integer 'image_id' and 'category_id' at positions "
                    f"{examples(bad)}; {FIX_HINT}"
                )
            self._challenge_map = {e["image_id"]: e["category_id"] for e in doc}
        return self._challenge_map

    def _challenge_covers(self, category_ids: Collection[int]) -> bool:
        if self.test_labels is None or not self.test_labels.is_file():
            return False
        wanted = set(category_ids)
        return any(c in wanted for c in self._challenge().values())


def find_tasks(root: Path) -> list[str]:
    """Task names (sorted) of a root, from its `annotations/<task>_train.json` files."""
    ann = root / "annotations"
    if not ann.is_dir():
        raise DataError(
            f"{ann}: no annotations folder; point ROOT at a decathlon-format root "
            "(annotations/<task>_train.json ... plus the images they name)"
        )
    names = sorted(p.name[: -len("_train.json")] for p in ann.glob("*_train.json"))
    if not names:
        raise DataError(f"{ann}: no <task>_train.json file; a benchmark root needs one per task")
    return names


def labels_file(ann_dir: Path, test_labels: Path | None, task: str) -> Path | None:
    """The `<task>_test.json` holding a task's test labels: in the `test_labels` folder, else annotations/."""
    if test_labels is not None and test_labels.is_dir():
        external = test_labels / f"{task}_test.json"
        if external.is_file():
            return external
    auto = ann_dir / f"{task}_test.json"
    return auto if auto.is_file() else None


def detect_kind(names: list[str], first_train: Any) -> str:
    """ "toy" by the toy's info.description, "decathlon" when every task is an official one, else "custom"."""
    info = first_train.get("info") if isinstance(first_train, dict) else None
    if isinstance(info, dict) and info.get("description") == TOY_DESCRIPTION:
        return "toy"
    return "decathlon" if all(n in DECATHLON for n in names) else "custom"


def order_tasks(names: list[str], kind: str) -> list[str]:
    """Official order for the decathlon, `tasks.toy.TOY_TASKS` for the toy, else alphabetical."""
    if kind == "decathlon":
        return [n for n in OFFICIAL_ORDER if n in names]
    if kind == "toy":
        try:
            order = list(importlib.import_module("vdd_bench.tasks.toy").TOY_TASKS)
        except (ImportError, AttributeError):
            return names
        return [n for n in order if n in names] + [n for n in names if n not in order]
    return names
