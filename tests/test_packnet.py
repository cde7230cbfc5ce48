"""PackNet on the toy decathlon: earlier tasks keep bitwise the same outputs, also across a resumed chain."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from method_helpers import ToyEnv

from vdd_bench.augment import augment_batch
from vdd_bench.continual import plan_chain, run_chain
from vdd_bench.runner import RunRequest
from vdd_bench.sequential import eval_split, step_model
from vdd_bench.store import RunStore

ORDER = ["colors", "shapes", "digits"]
SHORT = {"epochs": 2, "retrain_epochs": 1, "lr": 0.01, "batch_size": 32}


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def chain(toy_env: ToyEnv) -> list[RunRequest]:
    requests = plan_chain(toy_env.settings, "packnet", ORDER, SHORT)
    run_chain(requests, toy_env.results, progress=False)
    return requests


def task_logits(toy_env: ToyEnv, results: Path, run_id: str, task: str) -> torch.Tensor:
    method, model, _ = step_model(results, run_id)
    model = method.select_task(model, task)
    data = eval_split(toy_env.bench, task, "test", 36, "residual_adapters", results)
    with torch.no_grad():
        return model(augment_batch(data.images, data.augment, train=False))


def test_first_task_outputs_are_bitwise_unchanged_by_later_tasks(
    toy_env: ToyEnv, chain: list[RunRequest]
) -> None:
    first, last = chain[0].config.run_id, chain[-1].config.run_id
    results = toy_env.results
    assert torch.equal(
        task_logits(toy_env, results, first, ORDER[0]), task_logits(toy_env, results, last, "colors")
    )
    assert torch.equal(
        task_logits(toy_env, toy_env.results, chain[1].config.run_id, ORDER[1]),
        task_logits(toy_env, toy_env.results, last, ORDER[1]),
    )
    record = RunStore(toy_env.results).record(last)
    owned = record.method_report["weights_owned"]
    assert owned["colors"] == pytest.approx(0.5, abs=0.01)  # prune_first frees half of the first task's
    assert owned["shapes"] == pytest.approx(0.5 * 0.25, abs=0.01)  # then 75% of each new task's
    # the chain's last task is not pruned (the authors' sequence): it keeps every free weight
    assert owned["digits"] == pytest.approx(1 - 0.5 - 0.125, abs=0.01)
    assert record.method_report["weights_free"] == 0
    assert [h["phase"] for h in record.history] == ["train"] * SHORT["epochs"]


def bn_state(results: Path, run_id: str) -> dict[str, torch.Tensor]:
    state = torch.load(RunStore(results).run_dir(run_id) / "model.pt", weights_only=True)["model"]
    return {k: v for k, v in state.items() if "bn" in k or k.startswith(("stem.1", "head.0"))}


def test_the_shared_bn_trains_with_the_first_task_then_stays_bitwise_frozen(
    toy_env: ToyEnv, chain: list[RunRequest]
) -> None:
    first, last = (bn_state(toy_env.results, r.config.run_id) for r in (chain[0], chain[-1]))
    assert first.keys() == last.keys() and all(torch.equal(first[k], last[k]) for k in first)
    assert any(not torch.equal(first[k], toy_env.pretrained[k]) for k in first)  # trained by the first task
    # the named option: a BN per task, the first task's untouched by the second
    per_task = plan_chain(toy_env.settings, "packnet", ORDER[:2], {**SHORT, "train_bn": True})
    run_chain(per_task, toy_env.results, progress=False)
    a, b = (per_task[0].config.run_id, per_task[1].config.run_id)
    results = toy_env.results
    assert torch.equal(task_logits(toy_env, results, a, "colors"), task_logits(toy_env, results, b, "colors"))
    bns = bn_state(toy_env.results, b)
    assert any(".tasks.1." in k for k in bns) and any(
        not torch.equal(bns[k], bns[k.replace(".tasks.1.", ".tasks.0.")]) for k in bns if ".tasks.1." in k
    )


def test_accounting_counts_each_weight_once(toy_env: ToyEnv, chain: list[RunRequest]) -> None:
    """Task k uses the weights of tasks <= k and stores only its own: the network is not counted twice."""
    store = RunStore(toy_env.results)
    _, model, _ = step_model(toy_env.results, chain[-1].config.run_id)
    convs = [m for m in model.modules() if type(m).__name__ == "PackedConv"]
    conv_weights = sum(conv.layer.weight.numel() for conv in convs)
    records = [store.record(request.config.run_id) for request in chain]
    for k, record in enumerate(records, start=1):
        acc, owned = record.accounting, record.method_report["weights_owned"]
        own_weights = round(owned[ORDER[k - 1]] * conv_weights)
        assert abs(acc.params_shared - sum(owned[t] for t in ORDER[: k - 1]) * conv_weights) < 2
        assert acc.params_total == acc.params_shared + acc.params_task
        assert acc.params_total < conv_weights + 5000  # the convs once, plus BN and a head
        # stored: its own weights, head (and the shared BN with its running statistics, which the first task
        # trained) in float32, a 1-bit mask of the convs
        floats = acc.task_bytes - conv_weights / 8
        assert 4 * acc.params_task <= floats < 4 * acc.params_task * 1.1
        assert (floats > 4 * acc.params_task) == (k == 1)
        assert acc.params_task >= own_weights


def test_a_resumed_chain_keeps_the_first_task_bitwise(
    toy_env: ToyEnv, chain: list[RunRequest], tmp_path: Path
) -> None:
    first = chain[0].config.run_id
    shutil.copytree(RunStore(toy_env.results).run_dir(first), RunStore(tmp_path).run_dir(first))

    def stop(step: int, phase: int, epoch: int) -> None:
        if step == 1 and epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_chain(chain, tmp_path, progress=False, on_epoch_end=stop)
    trained: list[tuple[int, int, int]] = []
    run_chain(chain, tmp_path, progress=False, on_epoch_end=lambda *at: trained.append(at))
    assert trained[0] == (1, 0, 2)  # step 1 resumed from its epoch-end checkpoint, step 0 not rerun
    for request in chain[1:]:
        run_id = request.config.run_id
        a = torch.load(RunStore(toy_env.results).run_dir(run_id) / "model.pt", weights_only=True)["model"]
        b = torch.load(RunStore(tmp_path).run_dir(run_id) / "model.pt", weights_only=True)["model"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    last = chain[-1].config.run_id
    assert torch.equal(
        task_logits(toy_env, toy_env.results, first, "colors"), task_logits(toy_env, tmp_path, last, "colors")
    )


def test_pruning_reads_weights_in_their_logical_order_whatever_the_memory_layout() -> None:
    """A GPU run converts the model to channels_last; pruning must free the same weights as in NCHW."""
    from vdd_bench.methods.packnet import PackedConv

    torch.manual_seed(0)
    layouts = [PackedConv(torch.nn.Conv2d(4, 6, 3)) for _ in range(2)]
    layouts[1].layer.weight.data.copy_(layouts[0].layer.weight.data)
    layouts[1] = layouts[1].to(memory_format=torch.channels_last)
    assert not layouts[1].layer.weight.is_contiguous()
    for conv in layouts:
        conv.owner.fill_(1)
        conv.prune(0.5)
    assert (
        torch.equal(layouts[0].owner, layouts[1].owner.contiguous()) and (layouts[0].owner == 0).sum() == 108
    )
    assert torch.equal(layouts[0].layer.weight, layouts[1].layer.weight.contiguous())
