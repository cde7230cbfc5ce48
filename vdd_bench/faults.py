"""Fault injection for the reliability tests: `VDD_FAULT=<point>:<n>` kills the process (SIGKILL) the
n-th time it reaches the named point (n defaults to 1).

A test hook only. Points are placed where a crash is most harmful: mid-epoch (`engine.step`), between an
epoch's end and its checkpoint (`engine.epoch`), during evaluation (`runner.evaluate`), after the done
marker but before clean-up (`runner.done`), and inside every atomic write of the run store, both with half
the bytes in the temporary file (`torn:<file name>`) and with the whole file written but not yet renamed
(`write:<file name>`). Unset (always, outside the tests) a point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

_ENV = "VDD_FAULT"
_hits: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Kill this process with SIGKILL when `VDD_FAULT` arms this point and this is its n-th visit."""
    armed = os.environ.get(_ENV)
    if not armed:
        return
    point, _, count = armed.rpartition(":")
    if not point or not count.isdigit():
        point, count = armed, "1"
    if point != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == int(count):
        os.kill(os.getpid(), signal.SIGKILL)
