"""The Avalanche bridge: the toy as an Avalanche benchmark, and an Avalanche strategy as a harness method."""

from __future__ import annotations

import io
from collections import defaultdict

import pytest
import torch
from method_helpers import ToyEnv
from torch import nn
from vdd_bench.methods.avalanche_strategies import decode_state, encode_state, register_strategy, to_avalanche

from vdd_bench.continual import chain_results, plan_chain, run_chain
from vdd_bench.leaderboard import build_groups
from vdd_bench.store import RunStore
from vdd_bench.tables import render_continual

ORDER = ["colors", "shapes"]


def test_a_root_becomes_a_task_incremental_avalanche_benchmark(toy_env: ToyEnv) -> None:
    benchmark = to_avalanche(toy_env.bench, ORDER, results=toy_env.results)
    for stream, split in ((benchmark.train_stream, "train"), (benchmark.test_stream, "test")):
        assert len(stream) == len(ORDER)
        for label, (experience, task) in enumerate(zip(stream, ORDER, strict=True)):
            assert experience.task_label == label and experience.task_labels == [label]
            assert len(experience.dataset) == len(toy_env.bench.split(task, split))
            classes = set(experience.classes_in_this_experience)
            assert classes == set(range(toy_env.bench.tasks[task].num_classes))
            x, y, t = experience.dataset[0]
            assert x.shape == (3, 32, 32) and t == label


def test_plugin_state_round_trips_through_a_weights_only_file() -> None:
    from avalanche.training.plugins import EWCPlugin, LwFPlugin
    from avalanche.training.utils import ParamData

    previous = nn.Linear(3, 2)
    ewc, lwf = EWCPlugin(ewc_lambda=0.5), LwFPlugin(alpha=1.0, temperature=2.0)
    ewc.saved_params[0] = {"w": ParamData("w", torch.Size([2, 3]), init_tensor=torch.randn(2, 3))}
    ewc.importances[0] = {"w": ParamData("w", torch.Size([2, 3]), init_tensor=torch.rand(2, 3))}
    lwf.lwf.prev_model = previous
    lwf.lwf.prev_classes_by_task[0] = {0, 1}
    buffer = io.BytesIO()
    torch.save([encode_state(dict(p.__dict__), "test") for p in (ewc, lwf)], buffer)
    buffer.seek(0)
    ewc_state, lwf_state = (decode_state(s, previous) for s in torch.load(buffer, weights_only=True))

    assert ewc_state["ewc_lambda"] == 0.5 and isinstance(ewc_state["saved_params"], defaultdict)
    for key in ("saved_params", "importances"):
        restored, original = ewc_state[key][0]["w"], getattr(ewc, key)[0]["w"]
        assert type(restored) is ParamData and restored.shape == torch.Size([2, 3])
        assert torch.equal(restored.data, original.data)
    restored_lwf = lwf_state["lwf"]
    assert type(restored_lwf) is type(lwf.lwf) and restored_lwf.temperature == 2.0
    assert restored_lwf.prev_classes_by_task[0] == {0, 1} and restored_lwf.prev_classes_by_task[5] == set()
    assert restored_lwf.prev_model is not previous
    assert torch.equal(restored_lwf.prev_model.weight, previous.weight)


@pytest.mark.parametrize("strategy", ["EWC", "LwF"])
def test_an_avalanche_strategy_runs_as_a_chain_and_lands_in_the_leaderboard(
    toy_env: ToyEnv, strategy: str
) -> None:
    method = register_strategy(strategy)
    requests = plan_chain(toy_env.settings, method, ORDER, {"epochs": 1, "batch_size": 32})
    result = run_chain(requests, toy_env.results, progress=False)
    assert result.tasks == ORDER and all(v is not None for v in result.final.values())
    records = [r for r in RunStore(toy_env.results).done_records() if r.method == method]
    [group] = [g for g in build_groups(records)]
    [row] = group.rows
    assert set(row.accs) == set(ORDER)
    assert method in render_continual(chain_results(toy_env.results))
    assert (RunStore(toy_env.results).run_dir(result.run_ids[0]) / "avalanche_state.pt").exists()
    assert (RunStore(toy_env.results).run_dir(result.run_ids[1]) / "predictions.npz").exists()
