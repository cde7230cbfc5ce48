"""docs/fidelity.md cannot drift: its defaults and presets columns are what `vdd methods` prints.

Every method has a section (`## `name``); a row whose first cell is a `key` is a hyper-parameter whose
"harness default" cell holds the value as JSON; a presets table lists each preset's values as JSON. The
internal NetTailor steps take their values from the nettailor section.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from vdd_bench.cli import main

DOC = Path(__file__).resolve().parents[1] / "docs" / "fidelity.md"
SECTION_OF = {"nettailor_student": "nettailor", "nettailor_prune": "nettailor"}
CODE = re.compile(r"`([^`]*)`")


def tables(text: str) -> dict[str, list[list[list[str]]]]:
    """Method -> its tables -> rows -> cells (the header row included, the separator left out)."""
    out: dict[str, list[list[list[str]]]] = {}
    method = None
    for block in re.split(r"\n(?=## )", text):
        heading = re.match(r"## `([^`]+)`", block)
        if heading is None:
            continue
        method = heading.group(1)
        out[method] = []
        table: list[list[str]] = []
        for line in [*block.splitlines(), ""]:
            if line.startswith("|"):
                cells = [c.strip() for c in line.strip().strip("|").split("|")]
                if not set("".join(cells)) <= set("-: "):
                    table.append(cells)
            elif table:
                out[method].append(table)
                table = []
    return out


def documented(method_tables: list[list[list[str]]], kind: str) -> dict[str, Any]:
    """{key: value} of the hyper-parameter rows (kind "default") or the presets table (kind "preset")."""
    values = {}
    for table in method_tables:
        is_presets = table[0][0] == "preset"
        if is_presets != (kind == "preset"):
            continue
        for cells in table[1:]:
            key = CODE.fullmatch(cells[0])
            if key is None:
                continue
            column = 1 if is_presets else 3
            literal = CODE.search(cells[column])
            assert literal, f"{key.group(1)}: no `value` in {cells[column]!r}"
            assert key.group(1) not in values, f"{key.group(1)} documented twice"
            values[key.group(1)] = json.loads(literal.group(1))
    return values


def same(documented_value: Any, actual: Any) -> bool:
    if isinstance(actual, float) and not isinstance(actual, bool):
        return documented_value == pytest.approx(actual, rel=1e-9)
    if isinstance(actual, list):
        return (
            isinstance(documented_value, list)
            and len(actual) == len(documented_value)
            and all(same(d, a) for d, a in zip(documented_value, actual, strict=True))
        )
    return documented_value == actual and type(documented_value) is type(actual)


def vdd_methods(*options: str) -> dict[str, Any]:
    """The project's methods as `vdd methods` prints them; Avalanche's strategies (`avalanche:<Name>`,
    registered when a chain asks for one) are that library's, not the project's."""
    result = CliRunner().invoke(main, ["methods", "--json", *options])
    assert result.exit_code == 0, result.output
    return {k: v for k, v in json.loads(result.output).items() if not k.startswith("avalanche:")}


def test_every_method_has_a_section_and_every_default_is_the_one_vdd_methods_prints() -> None:
    doc = tables(DOC.read_text())
    methods = vdd_methods()
    assert set(doc) == {m for m in methods if m not in SECTION_OF}
    for section in doc:
        rows = documented(doc[section], "default")
        keys = {k for m, d in methods.items() if SECTION_OF.get(m, m) == section for k in d}
        assert set(rows) == keys, f"{section}: documented {sorted(rows)}, vdd methods {sorted(keys)}"
    for method, defaults in methods.items():
        rows = documented(doc[SECTION_OF.get(method, method)], "default")
        for key, value in defaults.items():
            assert same(rows[key], value), f"{method}.{key}: docs say {rows[key]!r}, vdd methods {value!r}"


def test_every_preset_is_documented_with_its_values() -> None:
    doc = tables(DOC.read_text())
    for method, presets in vdd_methods("--preset").items():
        rows = documented(doc[method], "preset")
        assert set(rows) == set(presets), method
        for name, values in presets.items():
            assert (
                same(rows[name], values) if isinstance(values, list) else rows[name].keys() == values.keys()
            )
            for key, value in values.items():
                assert same(rows[name][key], value), f"{method} preset {name}: {key}"
