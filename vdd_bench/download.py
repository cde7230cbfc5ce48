"""`vdd data download ROOT`: the official decathlon-1.0 archives fetched, checked and extracted into ROOT.

The release is three archives; their sizes and SHA-256 digests are the ones TensorFlow Datasets publishes
for its `visual_domain_decathlon` builder (`tensorflow_datasets/datasets/visual_domain_decathlon/
checksums.tsv`):
- the devkit, whose `decathlon-1.0/annotations/` holds every task's `<task>_{train,val,test_stripped}.json`;
- the data tarball: one `<task>.tar` per task but ImageNet, each holding `<task>/<split>/...` images;
- ImageNet's images, under ImageNet's own terms: the user downloads that tar and passes `--archive FILE`.
Images land in `ROOT/data/<task>/...`, the annotations in `ROOT/annotations/`. `ROOT/downloads/` keeps the
archives and one marker per extracted task, so a second run fetches and extracts only what is missing.
"""

from __future__ import annotations

import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from vdd_bench.errors import DataError
from vdd_bench.fetch import Expected, check_file, download
from vdd_bench.safe_tar import extract, members
from vdd_bench.tasks.decathlon import SOURCE_TASK

_VGG = "https://www.robots.ox.ac.uk/~vgg/share/"


@dataclass(frozen=True)
class Archive:
    name: str
    expected: Expected
    url: str | None  # None: behind its owner's terms; the user supplies it with --archive
    tasks: tuple[str, ...] = ()  # the tasks whose images it holds; () for the devkit
    nested: bool = False  # one inner `<task>.tar` per task


@dataclass(frozen=True)
class Release:
    devkit: Archive
    images: tuple[Archive, ...]
    annotations: str  # folder of the annotation files inside the devkit
    how_to_get: str  # what to do for an archive without a URL

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(task for archive in self.images for task in archive.tasks)

    def archive(self, name: str) -> Archive | None:
        return next((a for a in (self.devkit, *self.images) if a.name == name), None)

    def holder(self, task: str) -> Archive:
        return next(a for a in self.images if task in a.tasks)


DECATHLON_1_0 = Release(
    devkit=Archive(
        "decathlon-1.0-devkit.tar.gz",
        Expected(23503205, "f86d9e128678434ff2a3a374f00eb3e2ec2267e15e53ddae5f19ff19378b5ff7"),
        _VGG + "decathlon-1.0-devkit.tar.gz",
    ),
    images=(
        Archive(
            "decathlon-1.0-data.tar.gz",
            Expected(406351554, "8eca928bda025d855c91a78db45b3b18bc322efd7b1462a041e62c27b3c83c25"),
            _VGG + "decathlon-1.0-data.tar.gz",
            (
                "aircraft",
                "cifar100",
                "daimlerpedcls",
                "dtd",
                "gtsrb",
                "omniglot",
                "svhn",
                "ucf101",
                "vgg-flowers",
            ),
            nested=True,
        ),
        Archive(
            "decathlon-1.0-data-imagenet.tar",
            Expected(6535075840, "93caac18a907266f917136849c1db7bbf88dd595120af1a8eea7177138962e4a"),
            None,
            (SOURCE_TASK,),
        ),
    ),
    annotations="decathlon-1.0/annotations/",
    how_to_get="ImageNet's images come under ImageNet's terms: with an image-net.org account download "
    "decathlon-1.0-data-imagenet.tar (linked from https://www.robots.ox.ac.uk/~vgg/decathlon/), then pass "
    "--archive FILE",
)


def download_decathlon(
    root: Path,
    tasks: Sequence[str] | None = None,
    local: Sequence[Path] = (),
    release: Release | None = None,
    progress: bool = False,
) -> list[str]:
    """Fetch, check and extract the chosen tasks (default: every task an archive is at hand for) into
    `root`; return the chosen tasks. Tasks extracted by an earlier run are left as they are. `release`
    defaults to the official decathlon-1.0."""
    release = release or DECATHLON_1_0
    given = _local_archives(local, release)
    chosen = _choose_tasks(tasks, release, given)
    store = root / "downloads"
    todo = [task for task in chosen if not (store / f"{task}.extracted").is_file()]
    if not todo:
        return chosen
    devkit = _obtain(release.devkit, store, given, progress)
    for archive in release.images:
        wanted = [task for task in todo if task in archive.tasks]
        if wanted:
            _extract_images(_obtain(archive, store, given, progress), archive, wanted, root)
    _extract_annotations(devkit, release.annotations, todo, root)
    for task in todo:
        (store / f"{task}.extracted").write_text(release.holder(task).expected.sha256 + "\n")
    return chosen


def _local_archives(paths: Sequence[Path], release: Release) -> dict[str, Path]:
    """The archives the user passed, by name (checked when first needed: ImageNet's takes minutes)."""
    given = {}
    for path in paths:
        archive = release.archive(path.name)
        if archive is None:
            names = ", ".join(a.name for a in (release.devkit, *release.images))
            raise DataError(
                f"{path}: not one of the release's archives ({names}); pass it under its own name"
            )
        given[archive.name] = path
    return given


def _choose_tasks(tasks: Sequence[str] | None, release: Release, given: dict[str, Path]) -> list[str]:
    if tasks is None:
        return [t for t in release.tasks if release.holder(t).url or release.holder(t).name in given]
    for task in tasks:
        if task not in release.tasks:
            raise DataError(f"--tasks: unknown task {task!r}; the release has {', '.join(release.tasks)}")
        holder = release.holder(task)
        if holder.url is None and holder.name not in given:
            raise DataError(f"{task}: {release.how_to_get}")
    return list(tasks)


def _obtain(archive: Archive, store: Path, given: dict[str, Path], progress: bool) -> Path:
    if archive.name in given:
        what_to_do = f"it is not the official {archive.name}: fetch it again"
        check_file(given[archive.name], archive.expected, what_to_do, progress)
        return given[archive.name]
    assert archive.url is not None  # _choose_tasks refused the tasks of an archive without a URL
    return download(archive.url, store / archive.name, archive.expected, progress)


def _from_task_folder(name: str, task: str) -> str | None:
    """`name` from its `<task>` folder on (where the annotations' `data/<task>/...` starts), else None."""
    parts = name.split("/")
    return "/".join(parts[parts.index(task) :]) if task in parts[:-1] else None


def _extract_images(path: Path, archive: Archive, tasks: list[str], root: Path) -> None:
    written = dict.fromkeys(tasks, 0)
    with tarfile.open(path, mode="r|*") as outer:
        if not archive.nested:
            written = _extract_tasks(outer, tasks, root, archive.name)  # one pass over the stream
        else:
            for name, member in members(outer, archive.name):
                task = PurePosixPath(name).name.removesuffix(".tar")
                if member.isfile() and name.endswith(".tar") and task in tasks:
                    label = f"{archive.name}: {PurePosixPath(name).name}"
                    with tarfile.open(fileobj=outer.extractfile(member), mode="r|") as inner:
                        written[task] = _extract_tasks(inner, [task], root, label)[task]
    for task, count in written.items():
        if count == 0:
            raise DataError(f"{path}: holds no images of {task}; delete it and fetch it again")


def _extract_tasks(tar: tarfile.TarFile, tasks: list[str], root: Path, label: str) -> dict[str, int]:
    """Extract the images under each `<task>/` folder of a tar stream into `root/data`; count per task."""
    counts = dict.fromkeys(tasks, 0)

    def target(name: str) -> str | None:
        for task in tasks:
            relative = _from_task_folder(name, task)
            if relative is not None:
                counts[task] += 1
                return relative
        return None

    extract(tar, root / "data", target, label)
    return counts


def _extract_annotations(devkit: Path, folder: str, tasks: list[str], root: Path) -> None:
    found = dict.fromkeys(tasks, 0)

    def target(name: str) -> str | None:
        file = name.removeprefix(folder)
        task = next((t for t in tasks if name.startswith(folder) and file.startswith(f"{t}_")), None)
        if task is None or "/" in file:
            return None
        found[task] += 1
        return file

    with tarfile.open(devkit, mode="r|*") as tar:
        extract(tar, root / "annotations", target, devkit.name)
    missing = [task for task, count in found.items() if count == 0]
    if missing:
        raise DataError(f"{devkit}: no annotations of {', '.join(missing)}; delete it and fetch it again")
