"""The main job on the embedded default: the toy decathlon, the local launcher, the CPU.

It generates the toy data if missing, pre-trains the toy backbone on the source task if missing, runs every
registered method on the nine target tasks (runs already done are skipped) and returns the leaderboard of
the toy benchmark. The methods do not run on the source task: there the decathlon's baselines report the
pre-trained network itself, and the real-image configurations leave it out the same way. The runs go in
worker processes, several at once (`demo_jobs`).
"""

from __future__ import annotations

import os
from pathlib import Path

from vdd_bench.backbones import BackboneSpec
from vdd_bench.benchmark import Benchmark
from vdd_bench.cache import default_cache_path, pack
from vdd_bench.config import RunSettings
from vdd_bench.device import Device
from vdd_bench.leaderboard import build_groups
from vdd_bench.local_launcher import LaunchSummary, LocalLauncher, default_jobs
from vdd_bench.method import SGD_RECIPE
from vdd_bench.pretrain import PretrainPlan, pretrain
from vdd_bench.store import RunStore
from vdd_bench.sweep import SweepSpec
from vdd_bench.tables import render_groups
from vdd_bench.tasks.toy import TOY_RESOLUTION, TOY_SOURCE, generate_toy

# A ResNet-26 at width 0.125 and schedules shrunk so that the whole demo takes a few minutes on 2 CPU cores:
# the methods' published recipes scaled by TOY_EPOCH_SCALE (120 -> 2 epochs for the SGD recipe; at least 1
# epoch per phase), on batches small enough for a few hundred training images. Piggyback's new classifier
# gets a larger lr than its masks (a 1-epoch Adam at 1e-4 leaves it untrained). LwF's warm-up (only the new
# head trains; chain and per task) is 1 epoch instead of as long as the main stage. NetTailor's teacher is
# the fine-tuning run itself (its own recipe, 90 epochs at lr 0.01 and batch 256, would leave it near chance
# in 2 epochs), its student trains at the demo scripts' lr 0.1 for 2 epochs and its retraining 1, and it
# tries two candidate prunings (0 and 6 blocks removed) instead of every k.
TOY_BACKBONE = BackboneSpec("resnet26", width=0.125)
TOY_EPOCH_SCALE = 1 / 60
TOY_HPARAMS = {
    "all": {"batch_size": 32},
    "piggyback": {"classifier_lr": 0.01},
    "lwf": {"warmup_epochs": 60},
    "lwf_per_task": {"warmup_epochs": 60},
    "nettailor": {
        "candidates": [0, 6],
        **{f"teacher_{key}": SGD_RECIPE[key] for key in ("epochs", "lr", "weight_decay", "milestones")},
        "teacher_batch_size": 32,
        "epochs": 120,
        "lr": 0.1,
        "retrain_epochs": 60,
    },
}
TOY_PRETRAIN = {"epochs": 10, "batch_size": 64, "milestones": [0.6, 0.85]}


def demo_jobs(device: Device | None) -> int:
    """The demo's runs at once: one per visible GPU, on a CPU one per core (up to 4): its runs are small,
    so worker processes of one thread each use a node better than one process of many threads."""
    if device is not None and device.is_cuda:
        return default_jobs(device)
    return max(1, min(os.cpu_count() or 1, 4))


def run_demo(
    results: Path,
    methods: list[str] | str = "all",
    device: Device | None = None,
    progress: bool = True,
    jobs: int | None = None,
) -> tuple[str, LaunchSummary]:
    results = Path(results)
    root = generate_toy(results / "toy" / "data")
    bench = Benchmark.open(root)
    cache = default_cache_path(results, bench, TOY_RESOLUTION)
    if not cache.exists():  # every run then reads uint8 arrays instead of decoding its JPEGs again
        pack(bench, cache, TOY_RESOLUTION, progress=False)
    plan = PretrainPlan(RunSettings.of(bench, backbone=TOY_BACKBONE), TOY_SOURCE, TOY_PRETRAIN)
    checkpoint = pretrain(plan, results, device=device, progress=progress)
    sweep = SweepSpec(  # the target tasks: the source task is the one the backbone was pre-trained on
        benchmark=str(root),
        methods=methods,
        tasks=[task for task in bench.task_names() if task != TOY_SOURCE],
        backbone_checkpoint=str(checkpoint),
        epoch_scale=TOY_EPOCH_SCALE,
    )
    sweep.hparams = {k: v for k, v in TOY_HPARAMS.items() if k == "all" or k in sweep.method_names()}
    requests = sweep.expand()
    summary = LocalLauncher(results, device, progress, jobs or demo_jobs(device)).launch(requests)
    ids = {request.config.run_id for request in requests}
    records = [r for r in RunStore(results).done_records() if r.run_id in ids]
    return render_groups(build_groups(records)), summary
