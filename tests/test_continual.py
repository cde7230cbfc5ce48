"""The continual protocol: chains of runs, the accuracy matrix and forgetting, relaunching a killed chain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from method_helpers import ToyEnv
from vdd_bench.tasks.toy import TOY_SOURCE

from vdd_bench.chains import ChainResult
from vdd_bench.cli import main
from vdd_bench.continual import plan_chain, run_chain
from vdd_bench.errors import VddError
from vdd_bench.runner import load_run_model
from vdd_bench.store import RunStore

ORDER = ["colors", "pedestrians"]
TINY = {"epochs": 1, "warmup_epochs": 1, "lr": 0.01, "batch_size": 32}


class Interrupt(Exception):
    pass


def test_forgetting_is_the_drop_from_the_best_earlier_accuracy() -> None:
    result = ChainResult(
        "m", ["a", "b", "c"], ["a", "b", "c"], [[80, None, None], [90, 50, None], [70, 55, 60]], "test"
    )
    assert result.final == {"a": 70, "b": 55, "c": 60}
    assert result.forgetting == {"a": 20, "b": -5}
    assert result.mean_final == pytest.approx(61.6667, abs=1e-3) and result.mean_forgetting == 7.5


def test_chain_ids_encode_the_history_and_a_task_comes_once(toy_env: ToyEnv) -> None:
    ab = plan_chain(toy_env.settings, "lwf", ["colors", "shapes"], TINY)
    cb = plan_chain(toy_env.settings, "lwf", ["pedestrians", "shapes"], TINY)
    assert ab[1].config.inputs["previous"] == ab[0].config.run_id
    assert ab[1].config.run_id != cb[1].config.run_id  # same task and settings, other history
    with pytest.raises(VddError, match="every task once"):
        plan_chain(toy_env.settings, "lwf", ["colors", "colors"], TINY)
    with pytest.raises(VddError, match="not sequential"):
        plan_chain(toy_env.settings, "finetune", ORDER)


def test_a_chain_killed_between_tasks_continues_from_the_last_finished_task(
    toy_env: ToyEnv, tmp_path: Path
) -> None:
    requests = plan_chain(toy_env.settings, "lwf", ORDER, TINY)

    def stop(step: int, phase: int, epoch: int) -> None:
        if step == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_chain(requests, tmp_path, progress=False, on_epoch_end=stop)
    store = RunStore(tmp_path)
    first = store.run_dir(requests[0].config.run_id)
    assert store.is_done(requests[0].config.run_id) and not store.is_done(requests[1].config.run_id)
    stamp = (first / "record.json").stat().st_mtime_ns
    trained: list[tuple[int, int, int]] = []
    result = run_chain(requests, tmp_path, progress=False, on_epoch_end=lambda *at: trained.append(at))
    assert {step for step, _, _ in trained} == {1} and (first / "record.json").stat().st_mtime_ns == stamp
    assert trained[0] == (1, 1, 1)  # the warm-up epoch was checkpointed before the kill
    assert result.run_ids == [r.config.run_id for r in requests] and len(result.matrix) == 2


def test_cli_chain_and_the_continual_leaderboard(toy_env: ToyEnv, tmp_path: Path) -> None:
    args = ["chain", "--method", "lwf", "--benchmark", str(toy_env.bench.root), "--order", ",".join(ORDER)]
    args += ["--backbone-checkpoint", str(toy_env.checkpoint), "--results", str(tmp_path), "--no-progress"]
    args += [f"--set={k}={v}" for k, v in TINY.items()]
    ran = CliRunner().invoke(main, args)
    assert ran.exit_code == 0, ran.output
    assert json.loads(ran.output)["tasks"] == ORDER
    table = CliRunner().invoke(main, ["leaderboard", "--continual", "--results", str(tmp_path)])
    assert table.exit_code == 0, table.output
    assert "lwf: colors -> pedestrians" in table.output and "forgetting" in table.output
    as_json = CliRunner().invoke(
        main, ["leaderboard", "--continual", "--format", "json", "--results", str(tmp_path)]
    )
    [chain] = json.loads(as_json.output)
    assert set(chain["forgetting"]) == {"colors"} and chain["matrix"][0][1] is None
    # the main leaderboard's row is the network at the end of the chain, not each step's own network
    board = CliRunner().invoke(main, ["leaderboard", "--format", "json", "--results", str(tmp_path)])
    [row] = [r for group in json.loads(board.output) for r in group["rows"] if r["method"] == "lwf"]
    assert row["accuracy"] == chain["final"]


def test_a_chain_from_the_backbones_source_task_starts_from_the_pretrained_network(toy_env: ToyEnv) -> None:
    """As the authors start from ImageNet: a chain whose order begins with the task the backbone was
    pre-trained on sets `source_first` on every step; LwF's source step is the pre-trained network itself
    (bitwise, its classifier the first head) and PackNet's prunes the pre-trained weights, keeping the largest
    `1 - prune_first` of each layer for the source before any new task trains."""
    assert not any(r.config.hparams["source_first"] for r in plan_chain(toy_env.settings, "lwf", ORDER, TINY))
    pretrained = toy_env.pretrained
    store = RunStore(toy_env.results)

    lwf = plan_chain(toy_env.settings, "lwf", [TOY_SOURCE, "colors"], TINY)
    assert all(r.config.hparams["source_first"] for r in lwf)
    source_step = run_chain(lwf, toy_env.results, progress=False).run_ids[0]
    state = load_run_model(store.run_dir(source_step))[0]
    for key, value in pretrained.items():
        assert torch.equal(state[key.replace("classifier.", "classifier.tasks.0.")], value), key

    short = {"epochs": 1, "lr": 0.01, "batch_size": 32, "retrain_epochs": 1, "prune_first": 0.6}
    packnet = plan_chain(toy_env.settings, "packnet", [TOY_SOURCE, "colors"], short)
    source_step = run_chain(packnet, toy_env.results, progress=False).run_ids[0]
    state = load_run_model(store.run_dir(source_step))[0]
    owners = {k.removesuffix(".owner"): v for k, v in state.items() if k.endswith(".owner")}
    assert owners
    for name, owner in owners.items():
        weights = pretrained[f"{name}.weight"].abs().flatten()
        kept = owner.flatten() == 1
        assert abs(kept.float().mean().item() - 0.4) < 0.01, name
        assert weights[kept].min() >= weights[~kept].max(), name  # the largest pre-trained weights are kept
