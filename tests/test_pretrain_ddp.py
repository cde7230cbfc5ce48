"""`vdd pretrain` data-parallel on CPU: gloo, 2 processes, on the toy's smallest task (colors, 160 images).

What one process and two must share, and why the comparison is made after one optimizer step: with
synchronised BatchNorm, the same global batch and DDP's gradient average, a step of 2 processes computes the
single-process step; only float summation order differs. On the toy's flat images that rounding flips ReLU
kinks shared by whole blocks of identical pixels, so per-step differences are ~1e-3 of the update rather than
1e-6, and SGD at lr 0.1 amplifies them from step to step (even one process run with 2 threads instead of 1
ends two epochs a few percent of the update away). So: one step is compared closely; longer runs are checked
for what holds exactly (identical ranks, resumption from the single-process checkpoint, one writer).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from vdd_bench.backbones import BackboneSpec, build_backbone, load_checkpoint
from vdd_bench.benchmark import Benchmark
from vdd_bench.cli import main
from vdd_bench.config import RunSettings
from vdd_bench.curves import read_curves
from vdd_bench.distributed import Distributed, GlobalBatchNorm2d, weights_digest
from vdd_bench.errors import VddError
from vdd_bench.pretrain import PretrainPlan, pretrain
from vdd_bench.runner import execute
from vdd_bench.slurm.pretrain import SubmititPretrain
from vdd_bench.store import RunStore

TASK = "colors"
SPEC = BackboneSpec("resnet26", width=0.25)
ONE_STEP = {"epochs": 1, "batch_size": 160}  # the whole training set: one step, 80 images per process


def update_distance(a: dict, b: dict, start: dict) -> float:
    """|a - b| / |a - start| over the trained tensors (BatchNorm running statistics left out)."""
    keys = [k for k in a if a[k].is_floating_point() and "running" not in k]
    num = sum(((a[k] - b[k]).double() ** 2).sum() for k in keys) ** 0.5
    den = sum(((a[k] - start[k]).double() ** 2).sum() for k in keys) ** 0.5
    return float(num / den)


def initial_state(num_classes: int) -> dict:
    torch.manual_seed(0)  # the runner seeds with the run's seed before building
    return build_backbone(SPEC, num_classes).state_dict()


def test_run_id_batch_split_and_batchnorm_mode(toy_root: Path) -> None:
    settings = RunSettings(toy_root, backbone=SPEC)
    one = PretrainPlan(settings, TASK, ONE_STEP).request().config
    assert PretrainPlan(settings, TASK, ONE_STEP, processes=2).request().config == one
    per_process = PretrainPlan(settings, TASK, ONE_STEP, processes=2, sync_bn=False).request().config
    assert per_process.run_id != one.run_id
    assert per_process.extra == {"role": "pretrain", "batchnorm": "per-process/2"}
    with pytest.raises(VddError, match="batch_size 33 is not divisible by 2 processes"):
        PretrainPlan(settings, TASK, {"batch_size": 33}, processes=2).request()
    result = CliRunner().invoke(
        main,
        ["pretrain", "--benchmark", str(toy_root), "--task", TASK, "--width", "0.25", "--processes", "2"]
        + ["--set", "batch_size=33", "--results", str(toy_root.parent / "unused"), "--no-progress"],
    )
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: batch_size 33 is not divisible by 2 processes: "
        "pick a batch size that is a multiple of the process count"
    ]


def test_shards_of_a_short_last_batch() -> None:
    """5 images on 2 ranks: 3 and 2, weighted so that DDP's average is the mean loss of the 5."""
    images, labels = torch.arange(5).view(5, 1).float(), torch.arange(5)
    shards = [Distributed(rank, 2).shard(images, labels) for rank in (0, 1)]
    assert [s[1].tolist() for s in shards] == [[0, 1, 2], [3, 4]]
    assert [s[2] for s in shards] == [pytest.approx(6 / 5), pytest.approx(4 / 5)]
    losses = torch.tensor([0.3, 1.1, 2.0, 0.7, 5.0])  # per image; each rank's loss is its shard's mean
    averaged = sum(scale * losses[mine].mean() for _, mine, scale in shards) / 2  # DDP's average
    assert float(averaged) == pytest.approx(float(losses.mean()))
    assert Distributed(0, 2).trains_on(2) and not Distributed(0, 2).trains_on(1)
    assert not Distributed(0, 4).trains_on(3)  # a rank would get no image
    assert not Distributed(0, 2, sync_bn=False).trains_on(3)  # a rank's BatchNorm would see one image
    assert Distributed(0, 2, sync_bn=False).trains_on(4)


def test_global_batchnorm_is_batchnorm_in_one_process(tmp_path: Path) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=(tmp_path / "rdv").as_uri(), rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        plain = nn.BatchNorm2d(5)
        with torch.no_grad():
            plain.weight.uniform_(0.5, 1.5)
            plain.bias.normal_()
        synced = GlobalBatchNorm2d(5)
        synced.load_state_dict(plain.state_dict())
        x = torch.randn(6, 5, 7, 7) * 3 + 1
        outs = []
        for bn in (plain, synced):
            xi = x.clone().requires_grad_(True)
            y = bn(xi)
            (y * torch.arange(y.numel()).view_as(y).sin()).sum().backward()
            outs.append((y, xi.grad, bn.weight.grad, bn.bias.grad))
        for a, b in zip(*outs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        for key, value in plain.state_dict().items():
            torch.testing.assert_close(synced.state_dict()[key], value)
    finally:
        dist.destroy_process_group()


def test_two_processes_take_the_single_process_step(toy_root: Path, tmp_path: Path) -> None:
    bench = Benchmark.open(toy_root)
    settings = RunSettings.of(bench, backbone=SPEC)
    one = pretrain(PretrainPlan(settings, TASK, ONE_STEP), tmp_path / "one", progress=False)
    two = pretrain(PretrainPlan(settings, TASK, ONE_STEP, processes=2), tmp_path / "two", progress=False)
    assert two.name == one.name  # same run, same checkpoint name as the single-process pretraining
    assert [p.name for p in (tmp_path / "two" / "backbones").iterdir()] == [two.name]
    run_dir = RunStore(tmp_path / "two").run_dir(load_checkpoint(two)[2]["run_id"])
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "config.json",
        "done",
        "metrics.csv",
        "model.pt",
        "predictions.npz",
        "record.json",
        "tensorboard",
    ]
    one_dir = RunStore(tmp_path / "one").run_dir(load_checkpoint(one)[2]["run_id"])
    curves_one, curves_two = read_curves(one_dir), read_curves(run_dir)  # the global batch's, from rank 0
    assert [r["epoch"] for r in curves_two] == [1]
    assert curves_two[0]["train_acc"] == pytest.approx(curves_one[0]["train_acc"])
    _, single, meta_one = load_checkpoint(one)
    _, parallel, meta_two = load_checkpoint(two)
    assert "data_parallel" not in meta_one
    how = meta_two["data_parallel"]
    assert how["world_size"] == 2 and how["backend"] == "gloo" and how["batchnorm"] == "sync"
    model = build_backbone(SPEC, bench.tasks[TASK].num_classes)
    model.load_state_dict(parallel)
    assert how["rank_weights"] == [weights_digest(model)] * 2  # both ranks ended with these weights
    start = initial_state(bench.tasks[TASK].num_classes)
    assert update_distance(single, parallel, start) < 0.02  # measured ~2e-3: float rounding at ReLU kinks
    for key in single:
        if "running" in key:  # statistics of the same global batch
            torch.testing.assert_close(parallel[key], single[key], rtol=1e-3, atol=1e-4)
    records = [
        json.loads((RunStore(tmp_path / n).run_dir(meta_one["run_id"]) / "record.json").read_text())
        for n in ("one", "two")
    ]
    assert records[1]["history"][0]["loss"] == pytest.approx(records[0]["history"][0]["loss"], rel=1e-5)

    # Per-process statistics (80 images each) are another computation: another run, another step.
    per_process_bn = PretrainPlan(settings, TASK, ONE_STEP, processes=2, sync_bn=False)
    own = pretrain(per_process_bn, tmp_path / "own", progress=False)
    assert own.name != one.name
    _, per_process, meta_own = load_checkpoint(own)
    assert meta_own["data_parallel"]["batchnorm"] == "per-process"
    assert len(set(meta_own["data_parallel"]["rank_weights"])) == 1  # rank 0's running statistics
    assert update_distance(single, per_process, start) > 0.1  # measured ~0.46


def test_submitit_tasks_resume_the_single_process_checkpoint(toy_root: Path, tmp_path: Path) -> None:
    """Epoch 1 in one process, interrupted; epoch 2 in 2 submitit tasks (the SLURM entry, run locally)."""
    submitit = pytest.importorskip("submitit")
    bench = Benchmark.open(toy_root)
    overrides = {"epochs": 2, "batch_size": 32}
    results = tmp_path / "results"
    plan = PretrainPlan(RunSettings.of(bench, backbone=SPEC), TASK, overrides)
    request = plan.request()

    def stop(phase: int, epoch: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        execute(request, results, progress=False, on_epoch_end=stop)
    folder = RunStore(results).run_dir(request.config.run_id)
    first = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert first["epoch"] == 1

    executor = submitit.LocalExecutor(folder=tmp_path / "submitit")
    executor.update_parameters(tasks_per_node=2, timeout_min=10)  # the default timeout kills at 2 minutes
    job = executor.submit(SubmititPretrain(plan, results, plan.checkpoint_path(results), device="cpu"))
    paths = job.results()
    assert len(paths) == 2 and paths[0] == paths[1]
    _, state, meta = load_checkpoint(Path(paths[0]))
    assert meta["data_parallel"]["world_size"] == 2
    digests = meta["data_parallel"]["rank_weights"]
    assert len(set(digests)) == 1
    model = build_backbone(SPEC, bench.tasks[TASK].num_classes)
    model.load_state_dict(state)
    assert digests[0] == weights_digest(model)
    record = RunStore(results).record(request.config.run_id)
    assert [h["epoch"] for h in record.history] == [1, 2]
    assert record.history[0] == first["history"][0]  # epoch 1 was resumed, not trained again
    assert not (folder / "checkpoint.pt").exists()
    assert [p.name for p in (results / "backbones").iterdir()] == [Path(paths[0]).name]


@pytest.mark.slurm
def test_pretrain_as_one_slurm_job_of_two_tasks(toy_root: Path, tmp_path: Path) -> None:
    """`vdd pretrain --launcher slurm`: one job, 2 tasks (gloo on the CPU test cluster), one checkpoint."""
    import os

    from vdd_bench.slurm import scheduler

    if not os.environ.get("SLURM_CONF") or not scheduler.reachable():
        pytest.skip("no SLURM cluster reachable (start one: slurm/cluster/start.sh, then source its env.sh)")
    profile = Path(__file__).resolve().parents[1] / "slurm" / "profiles" / "local-test.yaml"
    results = tmp_path / "results"
    args = ["pretrain", "--benchmark", str(toy_root), "--task", TASK, "--width", "0.25", "--no-progress"]
    args += ["--set", "epochs=1", "--set", "batch_size=160", "--results", str(results)]
    args += ["--launcher", "slurm", "--profile", str(profile), "--processes", "2", "--wait"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    path = Path(result.output.strip().splitlines()[-1])
    bench = Benchmark.open(toy_root)
    digest = PretrainPlan(RunSettings.of(bench, backbone=SPEC), TASK, ONE_STEP).request().config.digest()
    assert path.name.endswith(f"-{digest}.pt")  # the single-process run's checkpoint name
    assert [p.name for p in (results / "backbones").iterdir()] == [path.name]
    _, state, meta = load_checkpoint(path)
    how = meta["data_parallel"]
    assert how["world_size"] == 2 and how["backend"] == "gloo"
    model = build_backbone(SPEC, bench.tasks[TASK].num_classes)
    model.load_state_dict(state)
    assert how["rank_weights"] == [weights_digest(model)] * 2
