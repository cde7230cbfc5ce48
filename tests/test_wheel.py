"""A non-editable install: the wheel carries the methods, the task facts and the published rows inside the
package, and `vdd demo`, `vdd leaderboard` and `vdd status` work from it, away from the repository.

The venv sees this interpreter's site-packages (torch and the other dependencies are not installed again);
the test checks that `vdd_bench` is imported from the venv's own copy."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(args: list[str], cwd: Path) -> str:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("wheel")
    wheels = base / "dist"
    pip = [sys.executable, "-m", "pip"]
    run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(REPO)], base)
    [wheel] = wheels.glob("vdd_bench-*.whl")
    env = base / "venv"
    venv.create(env, system_site_packages=True, with_pip=False)
    python = env / "bin" / "python"
    run([*pip, "--python", str(python), "install", "-q", "--no-deps", str(wheel)], base)
    return env


def test_the_wheel_installs_the_methods_and_tasks_inside_the_package(installed: Path, tmp_path: Path) -> None:
    code = (
        "import importlib.util, vdd_bench, vdd_bench.methods, vdd_bench.tasks.toy;"
        "from vdd_bench.method import METHODS; from vdd_bench.reference import published_rows;"
        "print(vdd_bench.__file__); print(vdd_bench.methods.__file__); print(len(published_rows()));"
        "print(importlib.util.find_spec('methods'), importlib.util.find_spec('tasks'));"
        "print(METHODS.names())"
    )
    lines = run([str(installed / "bin" / "python"), "-c", code], tmp_path).splitlines()
    assert all(Path(line).is_relative_to(installed) for line in lines[:2]), lines
    assert int(lines[2]) > 0  # the published rows are package data
    assert lines[3] == "None None"  # no top-level `methods` or `tasks` package is installed
    assert "nettailor" in lines[4] and "finetune" in lines[4]


def test_the_demo_leaderboard_and_status_run_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    vdd = str(installed / "bin" / "vdd")
    demo = run([vdd, "demo", "--methods", "finetune,feature", "--no-progress"], tmp_path)
    assert "| finetune" in demo and "| feature" in demo
    board = run([vdd, "leaderboard"], tmp_path)
    assert "| finetune" in board and "Score" in board
    status = run([vdd, "status"], tmp_path)
    assert "done" in status
