"""The Avalanche bridge: the toy as an Avalanche benchmark, and an Avalanche strategy as a harness method."""

from __future__ import annotations

import pytest
from method_helpers import ToyEnv, make_toy_env

from vdd_bench.avalanche import register_strategy, to_avalanche
from vdd_bench.continual import plan_chain, render_continual, run_chain
from vdd_bench.leaderboard import build_groups
from vdd_bench.store import RunStore

ORDER = ["colors", "shapes"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> ToyEnv:
    return make_toy_env(tmp_path_factory)


def test_a_root_becomes_a_task_incremental_avalanche_benchmark(env: ToyEnv) -> None:
    benchmark = to_avalanche(env.bench, ORDER, results=env.results)
    for stream, split in ((benchmark.train_stream, "train"), (benchmark.test_stream, "test")):
        assert len(stream) == len(ORDER)
        for label, (experience, task) in enumerate(zip(stream, ORDER, strict=True)):
            assert experience.task_label == label and experience.task_labels == [label]
            assert len(experience.dataset) == len(env.bench.split(task, split))
            classes = set(experience.classes_in_this_experience)
            assert classes == set(range(env.bench.tasks[task].num_classes))
            x, y, t = experience.dataset[0]
            assert x.shape == (3, 32, 32) and t == label


def test_an_avalanche_strategy_runs_as_a_chain_and_lands_in_the_leaderboard(env: ToyEnv) -> None:
    method = register_strategy("EWC")
    requests = plan_chain(
        env.bench, method, ORDER, {"epochs": 1, "batch_size": 32}, backbone_checkpoint=env.checkpoint
    )
    result = run_chain(requests, env.results, progress=False)
    assert result.tasks == ORDER and all(v is not None for v in result.final.values())
    records = [r for r in RunStore(env.results).done_records() if r["method"] == method]
    [group] = [g for g in build_groups(records)]
    [row] = group.rows
    assert set(row.accs) == set(ORDER)
    assert method in render_continual(env.results)
    assert (RunStore(env.results).run_dir(result.run_ids[0]) / "avalanche_state.pt").exists()
