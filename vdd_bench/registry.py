"""Registries by name: built-in entries come from the project's packages, others from entry points."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from vdd_bench.errors import VddError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str, entry_point_group: str) -> None:
        self.kind = kind
        self.package = package
        self.group = entry_point_group
        self._entries: dict[str, T] = {}
        self._prefixes: dict[str, Callable[[str], object]] = {}
        self._dynamic: set[str] = set()
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise VddError(f"two {self.kind}s are registered as {name!r}: rename one of them")
            self._entries[name] = obj
            return obj

        return decorate

    def _load(self) -> None:
        """Import every module of the package (one file per entry) and the entry points of other packages."""
        if self._loaded:
            return
        self._loaded = True
        package = importlib.import_module(self.package)
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{self.package}.{module.name}")
        for entry in entry_points(group=self.group):
            entry.load()

    def __contains__(self, name: object) -> bool:
        """Registered already (including names resolved through a prefix); loads nothing."""
        return name in self._entries

    def register_prefix(self, prefix: str, factory: Callable[[str], object]) -> None:
        """Names `<prefix><rest>` resolve on first use by `factory(rest)`, which registers them (e.g. any
        Avalanche strategy as `avalanche:EWC`); `names()` does not list them."""
        self._prefixes[prefix] = factory

    def get(self, name: str) -> T:
        self._load()
        for prefix, factory in self._prefixes.items():
            if name.startswith(prefix) and name not in self._entries:
                factory(name[len(prefix) :])
                self._dynamic.add(name)
        if name not in self._entries:
            known = ", ".join(sorted(self._entries))
            raise VddError(f"unknown {self.kind} {name!r}: choose one of {known}")
        return self._entries[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(set(self._entries) - self._dynamic)
