"""LwF with one network per task (the decathlon tables' LwF row): the pre-trained network's own head is the
old task, distillation holds its answers, and on the source task the run is the pre-trained network."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from method_helpers import TOY_TASK, ToyEnv, run_method, trained_model
from vdd_bench.tasks.generic import native_resolution
from vdd_bench.tasks.toy import TOY_SOURCE

from vdd_bench.augment import augment_batch, make_spec
from vdd_bench.backbones import build_backbone
from vdd_bench.cache import load_split_images
from vdd_bench.leaderboard import build_groups
from vdd_bench.local_launcher import LocalLauncher
from vdd_bench.method import get_method
from vdd_bench.normalization import task_mean_std
from vdd_bench.runner import task_planner
from vdd_bench.store import RunStore

SHORT = {"epochs": 4, "lr": 0.1, "warmup_epochs": 1, "warmup_lr": 0.01, "batch_size": 32}


def source_head_drift(env: ToyEnv, overrides: dict) -> float:
    """KL divergence (temperature 2) of the trained network's source-task head from the pre-trained network's
    classifier, on the toy task's training images."""
    run = run_method(env, "lwf_per_task", overrides)
    model = trained_model(run)
    model.classifier.active = 0  # the old head: the source task's
    pretrained = build_backbone(run.ctx.spec, run.ctx.pretrained_classes)
    pretrained.load_state_dict(env.pretrained)
    size = native_resolution(env.bench)
    images = load_split_images(env.bench, env.bench.split(TOY_TASK, "train"), size)
    mean, std = task_mean_std(env.bench, TOY_TASK, images, env.results)
    batch = augment_batch(
        torch.from_numpy(images), make_spec("residual_adapters", TOY_TASK, size, mean, std), False
    )
    with torch.no_grad():
        before, after = pretrained.eval()(batch), model(batch)
    return float(
        F.kl_div(
            F.log_softmax(after / 2, 1), F.log_softmax(before / 2, 1), log_target=True, reduction="batchmean"
        )
    )


def test_distillation_holds_the_pretrained_head_where_finetuning_lets_it_drift(toy_env: ToyEnv) -> None:
    # measured here: 0.11 at the default weight 1, 0.54 without the distillation term
    with_distillation = source_head_drift(toy_env, SHORT)
    without = source_head_drift(toy_env, {**SHORT, "distill_weight": 0.0})
    assert with_distillation < 0.5 * without, (with_distillation, without)


def test_each_task_starts_from_the_pretrained_network_and_the_source_task_is_that_network(
    toy_env: ToyEnv,
) -> None:
    method = get_method("lwf_per_task")
    requests = method.plan_runs(
        [TOY_SOURCE, TOY_TASK], task_planner(toy_env.settings, "lwf_per_task", SHORT, 0)
    )
    assert [r.config.hparams["source_task"] for r in requests] == [True, False]
    assert not any(r.config.inputs for r in requests)  # no chain: neither run reads the other
    LocalLauncher(toy_env.results, None, False, 1).launch(requests)
    store = RunStore(toy_env.results)
    source, target = (store.record(r.config.run_id) for r in requests)
    state = torch.load(store.run_dir(source.run_id) / "model.pt", map_location="cpu", weights_only=True)[
        "model"
    ]
    pretrained = toy_env.pretrained
    for name, tensor in pretrained.items():  # untrained: bitwise the pre-trained network, its classifier
        assert torch.equal(state[name.replace("classifier.", "classifier.tasks.0.")], tensor), name
    assert source.accounting.params_task == 0  # it stores nothing of its own
    # a target task's network is a whole network of its own, both heads included
    assert target.accounting.params_task == target.accounting.params_total
    # the per-run key does not split the method's row: one row, both tasks
    rows = [row for group in build_groups([source, target]) for row in group.rows]
    assert len(rows) == 1 and set(rows[0].accs) == {TOY_SOURCE, TOY_TASK}
