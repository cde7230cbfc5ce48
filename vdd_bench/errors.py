"""User-facing errors: the CLI prints `error: <message>` and exits with status 2.

A message is one line that names the file or value at fault and says what to do about it.
"""

from __future__ import annotations


class VddError(Exception):
    """An error the user can fix; its message is one line naming the file or value and the fix."""


class DataError(VddError):
    """A benchmark root, annotation file, image or cache file that cannot be used as it is."""


class Diverged(VddError):
    """Training met a non-finite loss or weight. For a search trial this is the outcome of its setting (an
    lr drawn too high diverges again on every attempt), so the run is settled as diverged, not failed."""
