"""Extract chosen members of a tar stream so that nothing can land outside the destination folder.

The rule, written out rather than left to `tarfile`'s extraction filters (absent before Python 3.10.12 and
3.11.4): only regular files and folders are extracted; a member whose name is absolute or climbs with `..`,
and any link, device or FIFO, stops the extraction with an error naming the archive and the member. The
decathlon archives hold files and folders only, so a member of any other kind means the archive is not the
official one. Files are written with the process's default permissions, never the archive's.
"""

from __future__ import annotations

import shutil
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from vdd_bench.errors import DataError


def member_name(member: tarfile.TarInfo, archive: str) -> str:
    """The member's name without a leading `./`, refused when it is absolute or climbs out with `..`."""
    name = member.name.replace("\\", "/")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise DataError(
            f"{archive}: member {member.name!r} would land outside the destination; refusing this archive "
            "(not an official decathlon archive): delete it and fetch it again"
        )
    return "/".join(part for part in path.parts if part != ".")


def members(tar: tarfile.TarFile, archive: str) -> Iterator[tuple[str, tarfile.TarInfo]]:
    """Each member with its checked name; links, devices and FIFOs are refused."""
    for member in tar:
        name = member_name(member, archive)
        if not (member.isfile() or member.isdir()):
            kind = "link" if member.issym() or member.islnk() else "special file"
            raise DataError(
                f"{archive}: member {member.name!r} is a {kind}; the decathlon archives hold only files and "
                "folders: refusing this archive (not an official one): delete it and fetch it again"
            )
        yield name, member


def extract(tar: tarfile.TarFile, dest: Path, target: Callable[[str], str | None], archive: str) -> int:
    """Write each file member for which `target(name)` gives a relative path under `dest`; return the count.

    `tar` may be a stream (mode `r|*`): members are read in order, once.
    """
    written = 0
    for name, member in members(tar, archive):
        relative = None if member.isdir() else target(name)
        if relative is None:
            continue
        out = dest / relative
        out.parent.mkdir(parents=True, exist_ok=True)
        source = tar.extractfile(member)
        assert source is not None  # a regular file always has contents
        with source, open(out, "wb") as sink:
            shutil.copyfileobj(source, sink)
        written += 1
    return written
