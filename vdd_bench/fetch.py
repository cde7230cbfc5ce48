"""Resumable HTTP downloads checked against a known size and SHA-256 digest.

A file is written to `<name>.part` and renamed to `<name>` only once it has the expected size and digest,
so a partial or corrupted file is never taken for a whole one. An interrupted transfer (a dropped
connection, or a killed process leaving the `.part` file) continues where it stopped with an HTTP range
request; a server that ignores the range sends the whole file again and the download starts over.
"""

from __future__ import annotations

import hashlib
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from vdd_bench.errors import DataError

CHUNK = 1 << 20
_ATTEMPTS = 5


@dataclass(frozen=True)
class Expected:
    """What a file must be: its byte size and SHA-256 digest (lowercase hex)."""

    size: int
    sha256: str


class _Cut(Exception):
    """The transfer ended before the whole file arrived; the next attempt resumes it."""


def sha256_of(path: Path, progress: bool = False) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    from tqdm import tqdm

    digest = hashlib.sha256()
    with (
        open(path, "rb") as f,
        tqdm(
            total=path.stat().st_size,
            unit="B",
            unit_scale=True,
            desc=f"check {path.name}",
            disable=not progress,
        ) as bar,
    ):
        while block := f.read(CHUNK):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def check_file(path: Path, expected: Expected, what_to_do: str, progress: bool = False) -> None:
    """Raise a one-line `DataError` naming `path` unless it has the expected size and digest."""
    size = path.stat().st_size
    if size != expected.size:
        raise DataError(f"{path}: {size} bytes, not the expected {expected.size}; {what_to_do}")
    digest = sha256_of(path, progress)
    if digest != expected.sha256:
        raise DataError(f"{path}: sha256 {digest}, not the expected {expected.sha256}; {what_to_do}")


def download(url: str, dest: Path, expected: Expected, progress: bool = False) -> Path:
    """Fetch `url` into `dest`, resuming a `.part` file left by an earlier attempt; return `dest`.

    A complete `dest` is returned as it is (it was checked before it got its name). Dropped connections
    are retried, each time from where the transfer stopped; a finished transfer with the wrong digest is
    deleted and reported.
    """
    if dest.is_file() and dest.stat().st_size == expected.size:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(_ATTEMPTS):
        try:
            _transfer(url, part, expected, progress)
            break
        except _Cut:
            time.sleep(min(2**attempt, 10) * 0.1)
    else:
        raise DataError(
            f"{url}: the connection kept dropping ({_ATTEMPTS} tries); run the command again to resume "
            f"from the {part.stat().st_size if part.exists() else 0} bytes kept in {part}"
        )
    size = part.stat().st_size
    digest = sha256_of(part, progress)
    if (size, digest) != (expected.size, expected.sha256):
        part.unlink()
        raise DataError(
            f"{url}: the downloaded file ({size} bytes, sha256 {digest}) is not the expected one "
            f"({expected.size} bytes, sha256 {expected.sha256}): a corrupted transfer, or the file on the "
            "server changed; it was deleted: run the command again to download it anew, or pass a copy you "
            "trust with --archive FILE"
        )
    part.replace(dest)
    return dest


def _transfer(url: str, part: Path, expected: Expected, progress: bool) -> None:
    """One HTTP request: append to `part` from its current size; raise `_Cut` when the file is not whole."""
    from tqdm import tqdm

    have = part.stat().st_size if part.exists() else 0
    if have > expected.size:  # not a prefix of the file we want
        part.unlink()
        have = 0
    if have == expected.size:
        return
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as err:
        if err.code == 416:  # range past the end: the part is not a prefix of this file
            part.unlink()
            raise _Cut from None
        raise DataError(f"{url}: HTTP {err.code} {err.reason}; check the address, then run again") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DataError(f"{url}: cannot connect ({reason}); check the network, then run again") from None
    with response:
        start = _start_offset(response, have)
        if start is None:  # a range other than the one asked for: start again from the whole file
            part.unlink()
            raise _Cut
        length = response.headers.get("Content-Length")
        if length is not None and start + int(length) != expected.size:
            raise DataError(
                f"{url}: the server sends {start + int(length)} bytes, the project expects {expected.size} "
                "(the file on the server changed?); pass a copy you trust with --archive FILE"
            )
        with (
            open(part, "r+b" if start else "wb") as out,
            tqdm(
                initial=start,
                total=expected.size,
                unit="B",
                unit_scale=True,
                desc=part.name[:-5],
                disable=not progress,
            ) as bar,
        ):
            out.seek(start)
            out.truncate()
            try:
                while block := response.read(CHUNK):
                    out.write(block)
                    bar.update(len(block))
            except (OSError, urllib.error.URLError) as err:  # connection reset mid-transfer
                raise _Cut from err
    if part.stat().st_size < expected.size:
        raise _Cut


def _start_offset(response, have: int) -> int | None:
    """Where the body starts in the file: `have` for the 206 asked for, 0 for a whole-file 200, else None."""
    if response.status != 206:
        return 0
    try:
        first = int(response.headers.get("Content-Range", "").split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None
    return have if first == have else None
