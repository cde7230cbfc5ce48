"""Hyper-parameter search spaces and the trials drawn from them.

A method declares, beside its `defaults`, a distribution for each hyper-parameter a search may vary
(`Method.search_space`). Trial 0 of a search is the defaults; trial t > 0 draws every searchable value the
user did not fix from a generator seeded by (method, task, trial), so the same search is the same runs on
every machine and a trial is an ordinary run whose drawn values are part of its id. A sequential method's
trial is one setting for its whole chain, seeded by the chain's task order instead of one task.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from typing import Any


def _rounded(value: float) -> float:
    """Three significant digits: readable in tables and the same float on every platform."""
    return float(f"{value:.3g}")


@dataclass(frozen=True)
class LogUniform:
    """A positive number whose logarithm is uniform in [log low, log high] (learning rates, weights)."""

    low: float
    high: float

    def draw(self, rng: random.Random) -> float:
        return _rounded(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))

    def __str__(self) -> str:
        return f"log-uniform [{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class Uniform:
    """A number uniform in [low, high] (fractions)."""

    low: float
    high: float

    def draw(self, rng: random.Random) -> float:
        return _rounded(rng.uniform(self.low, self.high))

    def __str__(self) -> str:
        return f"uniform [{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class Choice:
    """One of a few values, each as likely (a temperature, an integer option, a flag)."""

    options: tuple[Any, ...]

    def draw(self, rng: random.Random) -> Any:
        return self.options[rng.randrange(len(self.options))]

    def __str__(self) -> str:
        return "one of " + ", ".join(str(o) for o in self.options)


Distribution = LogUniform | Uniform | Choice


def trial_generator(method: str, key: str, trial: int) -> random.Random:
    """The generator of one trial: seeded by the method, the task (or a chain's task order) and the trial
    number through SHA-256, so that it does not depend on Python's hash seed or on the order of planning."""
    digest = hashlib.sha256(f"{method}|{key}|{trial}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def trial_values(
    space: dict[str, Distribution], method: str, key: str, trial: int, fixed: set[str]
) -> dict[str, Any]:
    """The values trial `trial` sets: none for trial 0 (the defaults), else a draw of every key of `space`
    but those in `fixed` (the keys the user set). Every key is drawn, in sorted order, before the fixed ones
    are dropped, so fixing one key leaves the draws of the others as they were."""
    if trial == 0:
        return {}
    rng = trial_generator(method, key, trial)
    drawn = {name: space[name].draw(rng) for name in sorted(space)}
    return {name: value for name, value in drawn.items() if name not in fixed}


def free_keys(space: dict[str, Distribution], fixed: set[str]) -> list[str]:
    """The searchable keys a search of this method may still vary."""
    return sorted(k for k in space if k not in fixed)
