"""The main job on the embedded default: the toy decathlon, the local launcher, the CPU.

It generates the toy data if missing, pre-trains the toy backbone if missing, runs every registered method
on every toy task (runs already done are skipped) and returns the leaderboard of the toy benchmark.
"""

from __future__ import annotations

from pathlib import Path

from tasks.toy import TOY_RESOLUTION, TOY_SOURCE, generate_toy
from vdd_bench.backbones import BackboneSpec
from vdd_bench.benchmark import Benchmark
from vdd_bench.cache import default_cache_path, pack
from vdd_bench.device import Device
from vdd_bench.launchers import LaunchSummary, LocalLauncher
from vdd_bench.leaderboard import build_groups, render
from vdd_bench.pretrain import pretrain
from vdd_bench.store import RunStore
from vdd_bench.sweep import SweepSpec

TOY_BACKBONE = BackboneSpec("resnet26", width=0.25)
# Schedules shrunk to fit the whole demo in a few CPU minutes: the methods' published recipes scaled by
# TOY_EPOCH_SCALE (120 -> 3 epochs for the SGD recipe), on batches small enough for a few hundred training
# images. Piggyback's new classifier gets a larger lr than its masks (a 1-epoch Adam at 1e-4 leaves it
# untrained); NetTailor's teacher gets 3 epochs at batch 32 like fine-tuning (its 90 epochs at batch 256
# would leave it near chance), its student the demo scripts' lr 0.1 for 2 epochs and its retraining 2, and
# it tries two candidate prunings (0 and 6 blocks removed) instead of every k.
TOY_EPOCH_SCALE = 0.025
TOY_HPARAMS = {
    "all": {"batch_size": 32},
    "piggyback": {"classifier_lr": 0.01},
    "nettailor": {
        "candidates": [0, 6],
        "teacher_epochs": 120,
        "teacher_batch_size": 32,
        "epochs": 80,
        "lr": 0.1,
        "retrain_epochs": 80,
    },
}
TOY_PRETRAIN = {"epochs": 12, "batch_size": 64, "milestones": [0.6, 0.85]}


def run_demo(
    results: Path, methods: list[str] | str = "all", device: Device | None = None, progress: bool = True
) -> tuple[str, LaunchSummary]:
    results = Path(results)
    root = generate_toy(results / "toy" / "data")
    bench = Benchmark.open(root)
    cache = default_cache_path(results, bench, TOY_RESOLUTION)
    if not cache.exists():  # every run then reads uint8 arrays instead of decoding its JPEGs again
        pack(bench, cache, TOY_RESOLUTION, progress=False)
    checkpoint = pretrain(
        bench, results, TOY_BACKBONE, TOY_SOURCE, overrides=TOY_PRETRAIN, device=device, progress=progress
    )
    sweep = SweepSpec(
        benchmark=str(root),
        methods=methods,
        backbone_checkpoint=str(checkpoint),
        epoch_scale=TOY_EPOCH_SCALE,
    )
    sweep.hparams = {k: v for k, v in TOY_HPARAMS.items() if k == "all" or k in sweep.method_names()}
    requests = sweep.expand()
    summary = LocalLauncher(results, device, progress).launch(requests)
    ids = {request.config.run_id for request in requests}
    records = [r for r in RunStore(results).done_records() if r["run_id"] in ids]
    return render(build_groups(records)), summary
