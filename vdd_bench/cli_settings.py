"""The command-line options that make a `RunSettings`, shared by `vdd run`, `chain`, `sweep` and `pretrain`.

Every option defaults to None (not given), so that `vdd sweep` can lay the given ones over its file's values;
`GivenSettings.settings()` fills in the defaults for the commands that take no file."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from vdd_bench.config import BACKBONE_NAMES, PROTOCOLS, RECIPES, BackboneSpec, RunSettings
from vdd_bench.errors import VddError

_OPTIONS = [
    click.option(
        "--benchmark",
        "root",
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        help="Benchmark root.",
    ),
    click.option(
        "--test-labels", type=click.Path(exists=True, path_type=Path), help="Test labels (file or folder)."
    ),
    click.option(
        "--backbone-checkpoint",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help="Pre-trained backbone (vdd pretrain writes one).",
    ),
    click.option(
        "--backbone",
        type=click.Choice(BACKBONE_NAMES),
        default=None,
        help="Architecture when no checkpoint gives it (runs without pre-training; vdd pretrain: resnet26).",
    ),
    click.option("--width", type=float, default=None, help="Channel multiplier of --backbone [default: 1]."),
    click.option(
        "--stem-relu", is_flag=True, default=None, help="ResNet-26: ReLU after the stem (NetTailor's)."
    ),
    click.option(
        "--head-relu/--no-head-relu",
        default=None,
        help="ResNet-26: ReLU after the final BN (Rebuffi's, the default); NetTailor's variant has none.",
    ),
    click.option("--resolution", type=int, default=None, help="Stored image size [default: 72; toy 36]."),
    click.option(
        "--recipe", type=click.Choice(RECIPES), default=None, help="Data recipe [default: residual_adapters]."
    ),
    click.option(
        "--protocol",
        type=click.Choice(PROTOCOLS),
        default=None,
        help="train: fit on train, select on val; trainval: fit on train+val [default: train].",
    ),
    click.option(
        "--epoch-scale",
        type=float,
        default=None,
        help="Multiply each method's schedule lengths (its epochs) [default: 1].",
    ),
]
_NAMES = (
    "root",
    "test_labels",
    "backbone_checkpoint",
    "backbone",
    "width",
    "stem_relu",
    "head_relu",
    "resolution",
    "recipe",
    "protocol",
    "epoch_scale",
)


@dataclass(frozen=True)
class GivenSettings:
    """The settings options as given on the command line (None: not given)."""

    values: dict[str, Any]

    def backbone_spec(self, default: str | None = None) -> BackboneSpec | None:
        name = self.values["backbone"] or default
        if name is None:
            if any(self.values[k] is not None for k in ("width", "stem_relu", "head_relu")):
                raise VddError("--width, --stem-relu and --head-relu describe --backbone: give it too")
            return None
        return BackboneSpec(
            name,
            width=1.0 if self.values["width"] is None else self.values["width"],
            stem_relu=bool(self.values["stem_relu"]),
            head_relu=self.values["head_relu"] is not False,
        )

    def settings(self, backbone_default: str | None = None) -> RunSettings:
        """The run settings of a command that takes no sweep file: --benchmark is required."""
        if self.values["root"] is None:
            raise VddError("missing --benchmark: give the root of a benchmark in the decathlon layout")
        given = {k: self.values[k] for k in ("resolution", "recipe", "protocol", "epoch_scale")}
        return RunSettings(
            root=self.values["root"],
            test_labels=self.values["test_labels"],
            backbone_checkpoint=self.values["backbone_checkpoint"],
            backbone=self.backbone_spec(backbone_default),
            **{k: v for k, v in given.items() if v is not None},
        )

    def sweep_keys(self) -> dict[str, Any]:
        """The given options as sweep-file keys, to lay over a file's values."""
        spec = self.backbone_spec()
        keys = {
            "benchmark": self.values["root"],
            "test_labels": self.values["test_labels"],
            "backbone_checkpoint": self.values["backbone_checkpoint"],
            "backbone": spec.to_dict() if spec else None,
            "resolution": self.values["resolution"],
            "recipe": self.values["recipe"],
            "protocol": self.values["protocol"],
            "epoch_scale": self.values["epoch_scale"],
        }
        return {k: str(v) if isinstance(v, Path) else v for k, v in keys.items() if v is not None}


def settings_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the settings options to a click command; it receives them as one `given: GivenSettings`."""

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        values = {name: kwargs.pop(name) for name in _NAMES}
        return command(given=GivenSettings(values), **kwargs)

    for option in reversed(_OPTIONS):
        wrapper = option(wrapper)
    return wrapper
