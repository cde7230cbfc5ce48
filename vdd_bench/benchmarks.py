"""`vdd bench`: the harness's speed as ratios against baselines measured in the same process.

Sections (each a list of rows with a value, its baseline and their ratio):
- ``data``: images per second of one training epoch through the harness's read path (HDF5 cache read +
  batched crop, flip and normalise) against the usual loader (PIL JPEG decode + torchvision per-image
  transforms in a DataLoader with the same number of workers) over the same images, and against copying
  the same bytes in memory (the physical limit); also the block-shuffle reader for splits beyond memory.
- ``methods``: training step time of each method relative to fine-tuning (``bench/method_costs.py``).
- ``tailored``: each NetTailor model's inference latency ratio against its fine-tuned teacher next to its
  MACs ratio (finished ``nettailor`` runs; randomly pruned students when there are none).
- ``bundle``: `vdd export` bundles of the finished runs: size against separately fine-tuned networks and
  the task-switch time.
- ``harness``: `vdd leaderboard` over 10,000 run records, a sweep dry-run of 80 runs, `import vdd_bench`.

Nothing here asserts a timing; the numbers depend on the machine and its load, which the report states.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

SECTIONS = ("data", "methods", "tailored", "bundle", "harness")
_REPO = Path(__file__).resolve().parents[1]
HARNESS_TARGET_S = 2.0
STATUS_TARGET_S = 0.5  # a status command answers before torch could even load


CPU = torch.device("cpu")


@dataclass
class BenchOptions:
    quick: bool = False
    sections: list[str] | None = None
    data_root: Path | None = None
    nettailor_results: Path | None = None
    workers: int = 2  # the baseline loader's worker processes, and the harness path's threads
    threads: int = 1  # torch threads for the model timings (methods, tailored)
    device: torch.device = CPU  # a GPU adds the GPU rows
    compile: bool = True  # the torch.compile rows (training step, tailored networks)


def _row(
    section: str, name: str, value: float, unit: str, baseline: str, base: float, goal: str = ""
) -> dict:
    return {
        "section": section,
        "measure": name,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "baseline_value": base,
        "ratio": value / base if base else float("nan"),
        "goal": goal,
    }


@contextlib.contextmanager
def _threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------- data


def _data_root(options: BenchOptions, tmp: Path) -> Path:
    return options.data_root if options.data_root is not None else _toy(tmp)


def _toy(tmp: Path) -> Path:
    """The toy benchmark, generated once per `vdd bench` (its marker makes a second call free)."""
    from vdd_bench.tasks.toy import generate_toy

    return generate_toy(tmp.parent / "toy")


class _JpegDataset(torch.utils.data.Dataset):
    """The usual loader: PIL decode + torchvision transforms, one image at a time."""

    def __init__(self, files: list[Path], labels: np.ndarray, size: int, crop: int, mean, std) -> None:
        from torchvision import transforms

        self.files, self.labels = files, labels
        self.transform = transforms.Compose(
            [
                transforms.Resize(size),
                transforms.CenterCrop(size),
                transforms.RandomCrop(crop),
                transforms.RandomHorizontalFlip(),
                transforms.ToTensor(),
                transforms.Normalize(mean, std),
            ]
        )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.files[i]) as img:
            return self.transform(img.convert("RGB")), int(self.labels[i])


def _best(fn: Callable[[], float], repeats: int) -> float:
    """The best of `repeats` rates (images/s): the fastest repeat, as for every side of a ratio."""
    return max(fn() for _ in range(repeats))


def bench_data(options: BenchOptions, tmp: Path) -> tuple[list[dict], dict]:
    from vdd_bench.augment import augment_batch, make_spec
    from vdd_bench.batches import epoch_batches
    from vdd_bench.benchmark import Benchmark
    from vdd_bench.cache import BlockShuffleReader, pack, read_split
    from vdd_bench.normalization import channel_mean_std

    root = _data_root(options, tmp)
    bench = Benchmark.open(root)
    pick = min if options.quick else max  # quick: the smallest task; else the largest
    task = pick(bench.task_names(), key=lambda t: len(bench.split(t, "train")))
    size = 36 if bench.kind == "toy" else 72
    index = bench.split(task, "train")
    cache = pack(bench, tmp / "cache.h5", size, [task], progress=False)
    batch, workers = 128, options.workers
    n = len(index)
    labels = torch.from_numpy(index.labels)
    packed = read_split(cache, bench, index, size)
    spec = make_spec("residual_adapters", "any-task", size, *channel_mean_std(packed[:256]))
    resident: dict[str, np.ndarray] = {}

    def harness_epoch(seed: int, read: bool = True, device: torch.device = CPU) -> float:
        """Cache read (`read_split`: the contiguous dataset memory-mapped; `read=False`: already mapped and
        paged in, as from the second epoch on) + one epoch of shuffled, augmented batches made by
        `epoch_batches` exactly as the engine asks for them, with `workers` threads."""
        start = time.perf_counter()
        if read or "images" not in resident:
            resident["images"] = read_split(cache, bench, index, size)
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(n, generator=generator).numpy()
        batches = [order[s : s + batch] for s in range(0, n, batch)]
        for _ in epoch_batches(resident["images"], labels, batches, spec, generator, device, workers):
            pass
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return n / (time.perf_counter() - start)

    def block_epoch(seed: int) -> float:
        start = time.perf_counter()
        reader = BlockShuffleReader(cache, task, "train", block=1024, window=2)
        generator = torch.Generator().manual_seed(seed)
        for images, _ in reader.batches(generator, batch):
            augment_batch(images, spec, train=True, generator=generator)
        return n / (time.perf_counter() - start)

    files = [bench.root / f for f in index.files]
    crop = round(size * 64 / 72)

    def baseline_epoch(seed: int) -> float:
        dataset = _JpegDataset(files, index.labels, size, crop, spec.mean, spec.std)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=batch,
            shuffle=True,
            num_workers=workers,
            generator=torch.Generator().manual_seed(seed),
        )
        start = time.perf_counter()
        for _ in loader:
            pass
        return n / (time.perf_counter() - start)

    target = np.empty_like(packed)

    def memcopy(seed: int) -> float:
        start = time.perf_counter()
        np.copyto(target, packed)
        return n / (time.perf_counter() - start)

    repeats = 1 if options.quick else 3
    harness_epoch(0)  # warm-up: lazy imports, the kernel's compilation (or its cache) and first allocations
    ours = _best(lambda: harness_epoch(0), repeats)
    steady = _best(lambda: harness_epoch(0, read=False), repeats)
    block = _best(lambda: block_epoch(0), repeats)
    copy = _best(lambda: memcopy(0), 5)
    base = _best(lambda: baseline_epoch(0), 1 if options.quick else 2)
    setup = {
        "data": f"{bench.name} ({bench.kind}) task {task}: {n} images stored at {size} px, batch {batch}, "
        f"the cache file in the OS file cache (as the baseline's JPEGs are); the harness path with {workers} "
        f"threads, the loader with {workers} worker processes"
    }
    loader = f"PIL+torchvision, {workers} workers"
    memory = "memory copy of the same bytes"
    first, later = (
        "harness read path (1st epoch: cache read + epoch), img/s",
        "harness read path (later epochs), img/s",
    )
    block_name = "block-shuffle reader (reads included), img/s"
    rows = [
        _row("data", first, ours, "img/s", loader, base, ">= 50"),
        _row("data", first, ours, "img/s", memory, copy, ">= 0.25"),
        _row("data", later, steady, "img/s", loader, base, ">= 50"),
        _row("data", later, steady, "img/s", memory, copy, ">= 0.25"),
        _row("data", block_name, block, "img/s", loader, base),
        _row("data", block_name, block, "img/s", memory, copy),
    ]
    if options.device.type == "cuda":
        gpu = _best(lambda: harness_epoch(0, read=False, device=options.device), repeats)
        consumed, model = _training_consumption(options, batch)
        rows.append(
            _row(
                "data",
                f"harness read path to {_gpu_name(options)}, img/s",
                gpu,
                "img/s",
                model,
                consumed,
                ">= 3",
            )
        )
    return rows, setup


def _gpu_name(options: BenchOptions) -> str:
    return torch.cuda.get_device_name(options.device)


def _training_consumption(options: BenchOptions, batch: int) -> tuple[float, str]:
    """Images per second that fine-tuning ResNet-26 at 64 px consumes on the bench's device (the harness's
    GPU form: bf16 autocast, channels_last)."""
    args = ["--methods", "finetune", "--batch", str(batch), "--precision", "bf16", "--steps", "20"]
    rows = _method_costs([*args, "--warmup", "5", "--device", str(options.device)])
    if rows is None:
        raise RuntimeError("bench/method_costs.py not found (not a source checkout)")
    return batch / rows[0]["step_s"], f"finetune training, resnet26 64 px, batch {batch}, bf16, img/s"


# ---------------------------------------------------------------------------------------- methods


def _bench_script(name: str):
    path = _REPO / "bench" / f"{name}.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(f"vdd_bench_script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _method_costs(args: list[str]) -> list[dict] | None:
    """Rows of `bench/method_costs.py` (None outside a source checkout), its table silenced."""
    costs = _bench_script("method_costs")
    if costs is None:
        return None
    with contextlib.redirect_stdout(open(os.devnull, "w")):  # noqa: SIM115 - closed with the process
        return costs.main(["--json", *args])


def bench_methods(options: BenchOptions) -> tuple[list[dict], dict]:
    """Each method's training step against fine-tuning's, then fine-tuning itself in bf16 autocast +
    channels_last against fp32 and compiled against eager (all on the bench's device)."""
    batch = 4 if options.quick else 32
    common = ["--threads", str(options.threads), "--device", str(options.device)]
    if options.quick:
        common += ["--width", "0.25", "--size", "32", "--batch", "4", "--steps", "1", "--warmup", "1"]

    def measure(*extra: str) -> list[dict] | None:
        return _method_costs([*common, *extra])

    rows = measure()
    if rows is None:
        return [], {"methods": "bench/method_costs.py not found (not a source checkout)"}
    base = next(r for r in rows if r["method"] == "finetune")
    out = [
        _row(
            "methods",
            f"{r['method']} training, img/s",
            batch / r["step_s"],
            "img/s",
            "finetune",
            batch / base["step_s"],
        )
        for r in rows
        if r["method"] != "finetune"
    ]
    bf16 = measure("--methods", "finetune", "--precision", "bf16")[0]
    name = "finetune training, bf16 autocast + channels_last, img/s"
    out.append(
        _row("methods", name, batch / bf16["step_s"], "img/s", "finetune fp32", batch / base["step_s"])
    )
    notes = []
    if options.compile:
        try:
            compiled = measure("--methods", "finetune", "--compile")[0]
        except Exception as exc:  # the compiler backend's errors have no common type
            notes.append(f"torch.compile rows left out: {str(exc).strip().splitlines()[0][:200]}")
        else:
            name = "finetune training, torch.compile, img/s"
            out.append(
                _row(
                    "methods",
                    name,
                    batch / compiled["step_s"],
                    "img/s",
                    "finetune eager",
                    batch / base["step_s"],
                )
            )
    model = "resnet26 w0.25 at 32 px, batch 4" if options.quick else "resnet26 at 64 px, batch 32"
    where = str(options.device) if options.device.type == "cuda" else f"cpu, {options.threads} threads"
    return out, {"methods": f"{model}, {where}, fp32 unless said" + "".join(f"; {n}" for n in notes)}


# --------------------------------------------------------------------------------------- tailored


def _nettailor_records(results: Path | None) -> list[dict[str, Any]]:
    from vdd_bench.store import RunStore

    if results is None:
        return []
    return [r for r in RunStore(results).done_records() if r["config"]["method"] == "nettailor"]


def random_student(spec, size: int, remove_blocks: int, classes: int = 10) -> torch.nn.Module:
    """A NetTailor student pruned for real with random attention logits (fixed seed) standing in for trained
    ones: timing does not depend on the weights."""
    from vdd_bench.backbones import build_backbone
    from vdd_bench.methods._nettailor_graph import TailoredNet, choose_paths, parse_skips

    torch.manual_seed(0)
    model = TailoredNet(build_backbone(spec, classes), parse_skips("3"), size, "backbone")
    with torch.no_grad():
        for logits in model.logits.values():
            logits.normal_(0.0, 2.0)
    model.restrict(choose_paths(model, remove_blocks, 0.05)[0])
    return model


def at_decathlon_scale(model: Any, classes: int = 10) -> tuple[Any, Any, int]:
    """A tailored network's architecture (its kept blocks and proxies) on ResNet-26 at width 1 and 64 px
    with random weights, the full network of that size, and the input size: what the architecture of a
    small run costs at the decathlon's scale (timing does not depend on the weights)."""
    from vdd_bench.backbones import BackboneSpec, build_backbone
    from vdd_bench.methods._nettailor_graph import TailoredNet

    spec, size = BackboneSpec("resnet26", width=1.0), 64
    torch.manual_seed(0)
    scaled = TailoredNet(build_backbone(spec, classes), model.skips, size, model.main_path)
    scaled.restrict([list(paths) for paths in model.paths])
    return scaled, build_backbone(spec, classes), size


def _tailored_pairs(options: BenchOptions) -> tuple[list[tuple[str, Any, Any, int]], str]:
    """(name, tailored network, its fine-tuned teacher, input size) for every finished nettailor run of the
    run store; randomly pruned students against a random full network when there are none."""
    from vdd_bench.backbones import BackboneSpec, build_backbone
    from vdd_bench.config import RunConfig
    from vdd_bench.method import TaskContext, get_method
    from vdd_bench.runner import load_run_model
    from vdd_bench.store import RunStore

    records = _nettailor_records(options.nettailor_results)
    pairs = []
    if records:
        store = RunStore(options.nettailor_results)
        method = get_method("nettailor")
        for r in records:
            config = r["config"]
            spec = RunConfig.from_dict(config).backbone_spec
            state, structure = load_run_model(store.run_dir(r["run_id"]))
            size = r["accounting"]["input_size"]
            pretrained_like = build_backbone(spec, r["num_classes"]).state_dict()
            hparams = config["hparams"]
            ctx = TaskContext(
                r["task"], r["num_classes"], spec, pretrained_like, r["num_classes"], hparams, size
            )
            model = method.inference_model(ctx, structure)
            model.load_state_dict(state)
            teacher_state, _ = load_run_model(store.run_dir(config["inputs"]["teacher"]))
            teacher = build_backbone(spec, r["num_classes"])
            teacher.load_state_dict(teacher_state)
            name = f"{r['task']} ({r['run_id'][-6:]})"
            pairs.append((name, model, teacher, size))
            if not options.quick and spec != BackboneSpec("resnet26", width=1.0):
                pairs.append((f"{name} at resnet26 w1 64 px", *at_decathlon_scale(model)))
        return pairs, f"{len(records)} finished nettailor runs, and their architectures at resnet26 w1 64 px"
    spec = BackboneSpec("resnet26", width=0.25 if options.quick else 1.0)
    size = 32 if options.quick else 64
    torch.manual_seed(0)
    teacher = build_backbone(spec, 10)
    for k in (0, 4, 8):
        pairs.append((f"random student, {k} blocks removed", random_student(spec, size, k), teacher, size))
    return pairs, f"no finished nettailor runs: randomly pruned students of {spec} at {size} px"


def bench_tailored(options: BenchOptions) -> tuple[list[dict], dict]:
    """Per tailored network and device: its latency against its teacher's next to its MACs ratio, eager
    (as the harness evaluates) and compiled (`vdd_bench.latency.compiled`, the deployed form)."""
    from vdd_bench.accounting import count_macs
    from vdd_bench.device import Device
    from vdd_bench.latency import CompileUnavailable, compiled, interleaved_median_seconds

    pairs, source = _tailored_pairs(options)
    batch, repeats = (8, 3) if options.quick else (32, 25)
    devices = [Device(torch.device("cpu"))] + (
        [Device(options.device)] if options.device.type == "cuda" else []
    )
    rows, notes = [], []
    with _threads(options.threads):
        for number, (name, model, teacher, size) in enumerate(pairs):
            macs_ratio = count_macs(model, size) / count_macs(teacher, size)
            for device in devices:
                where = "" if device.torch_device.type == "cpu" else f", {_gpu_name(options)}"
                nets = [device.prepare_model(model.eval()), device.prepare_model(teacher.eval())]
                images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
                images = device.prepare_batch(images.to(device.torch_device))
                forms = ["eager"]
                if options.compile and not (options.quick and number > 0):  # quick: one compiled pair
                    forms.append("compiled")
                for form in forms:
                    with device.autocast():
                        try:
                            timed = compiled(nets, images) if form == "compiled" else nets
                        except CompileUnavailable as exc:
                            notes.append(str(exc))
                            continue
                        tailored_s, teacher_s = interleaved_median_seconds(timed, images, repeats)
                    row = _row(
                        "tailored",
                        f"{name}, {form}{where}: latency ratio",
                        tailored_s / teacher_s,
                        "x teacher",
                        "MACs ratio",
                        macs_ratio,
                        "<= 1.25" if form == "compiled" else "",  # the goal is for the deployed form
                    )
                    row["latency_ms"], row["teacher_ms"] = 1000 * tailored_s, 1000 * teacher_s
                    rows.append(row)
    setup = f"{source}; batch {batch}, CPU {options.threads} threads" + "".join(
        f"; {n}" for n in sorted(set(notes))
    )
    return rows, {"tailored": setup}


# ----------------------------------------------------------------------------------------- bundle


def bench_bundle(options: BenchOptions, tmp: Path) -> tuple[list[dict], dict]:
    """Every listed method with finished runs in the run store, bundled: size and task-switch time."""
    from vdd_bench.bundle import Bundle, export
    from vdd_bench.errors import VddError
    from vdd_bench.method import METHODS
    from vdd_bench.store import RunStore

    results = options.nettailor_results
    methods = sorted(
        {
            r["config"]["method"]
            for r in (RunStore(results).done_records() if results is not None else [])
            if r["config"]["method"] in METHODS.names()
            and METHODS.get(r["config"]["method"]).listed
            and METHODS.get(r["config"]["method"]).uses_pretrained
        }
    )
    if not methods:
        return [], {"bundle": "no finished runs to bundle (pass --results)"}
    try:
        bench_root = _benchmark_root(results)
    except FileNotFoundError as exc:
        return [], {"bundle": str(exc)}
    rows, notes = [], []
    for method in methods:
        try:
            summary = export(method, results, bench_root, tmp / f"{method}.pt")
        except VddError as exc:
            notes.append(f"{method}: {exc}")
            continue
        switch = Bundle.load(tmp / f"{method}.pt").switch_seconds()
        n = len(summary.tasks)
        rows.append(
            _row(
                "bundle",
                f"{method} bundle, {n} tasks, MiB",
                summary.bundle_bytes / 2**20,
                "MiB",
                f"{n} fine-tuned networks",
                summary.finetuned_bytes / 2**20,
            )
        )
        rows[-1]["switch_ms"] = 1000 * switch
        rows.append(_row("bundle", f"{method} task switch, ms", 1000 * switch, "ms", "", 0.0))
    return rows, {"bundle": f"finished runs of {results}" + "".join(f"; {n}" for n in notes)}


def _benchmark_root(results: Path) -> Path:
    """The benchmark root of a run store's runs: the toy `vdd demo` leaves in it (or one beside it)."""
    for candidate in (results / "toy" / "data", results / "toy", results.parent / "toy"):
        if (candidate / "annotations").is_dir():
            return candidate
    raise FileNotFoundError(f"no benchmark root found beside {results}")


# ---------------------------------------------------------------------------------------- harness

_TEMPLATE_TASKS = [
    "source",
    "colors",
    "shapes",
    "pedestrians",
    "stripes",
    "digits",
    "textures",
    "quadrants",
    "signs",
    "glyphs",
]
_TEMPLATE_METHODS = [
    "finetune",
    "feature",
    "scratch",
    "adapters_series",
    "adapters_parallel",
    "piggyback",
    "dan",
]


def synthetic_records(count: int) -> Iterator[dict[str, Any]]:
    """`count` plausible finished-run records on one toy benchmark: methods x tasks x lr x seeds."""
    benchmark = {
        "fingerprint": "0123456789ab",
        "kind": "toy",
        "name": "toy-decathlon",
        "tasks": _TEMPLATE_TASKS,
    }
    i = 0
    for seed in range(10**6):
        for lr in (0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 0.0005, 0.0002, 0.0001):
            for method in _TEMPLATE_METHODS:
                for task in _TEMPLATE_TASKS:
                    if i == count:
                        return
                    i += 1
                    run_id = f"{method}--{task}--{i:012x}"
                    config = {
                        "backbone": {
                            "checkpoint": "0c9bad86a969",
                            "name": "resnet26",
                            "stem_relu": False,
                            "width": 0.25,
                        },
                        "benchmark": benchmark["fingerprint"],
                        "benchmark_kind": "toy",
                        "extra": {},
                        "hparams": {"epochs": 8, "lr": lr, "batch_size": 64},
                        "inputs": {},
                        "method": method,
                        "protocol": "train",
                        "recipe": "residual_adapters",
                        "resolution": 36,
                        "seed": seed,
                        "task": task,
                    }
                    yield {
                        "format": "vdd-record/1",
                        "run_id": run_id,
                        "config": config,
                        "benchmark": benchmark,
                        "task": task,
                        "method": method,
                        "internal": False,
                        "num_classes": 4,
                        "official_baseline_acc": None,
                        "method_report": {},
                        "metrics": {"test_acc": 50.0 + (i % 50), "val_acc": 50.0 + (i % 40)},
                        "accounting": {
                            "input_size": 32,
                            "macs": 13492480,
                            "params_shared": 0,
                            "params_task": 365292,
                            "params_task_equiv": 367228.0,
                            "params_total": 365292,
                            "task_bytes": 1468912,
                        },
                        "history": [],
                        "timing": {"train_s": 1.0, "eval_s": 0.1},
                    }


def _cli_seconds(args: list[str], cwd: Path) -> float:
    """One `vdd` command as a user runs it (a fresh process: interpreter start and imports included)."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "vdd_bench", *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"vdd {args[0]} failed: {result.stderr.strip() or result.stdout.strip()}")
    return seconds


def bench_harness(options: BenchOptions, tmp: Path) -> tuple[list[dict], dict]:
    from vdd_bench.backbones import BackboneSpec, build_backbone, save_checkpoint

    count = 500 if options.quick else 10_000
    store = tmp / "records"
    for record in synthetic_records(count):
        folder = store / "runs" / record["run_id"]
        folder.mkdir(parents=True)
        (folder / "record.json").write_text(json.dumps(record))
        (folder / "done").write_bytes(b"")
    leaderboard_s = _cli_seconds(["leaderboard", "--results", str(store)], tmp)
    (tmp / "empty").mkdir()
    status_s = _cli_seconds(["status", "--results", str(tmp / "empty")], tmp)

    toy = _toy(tmp)
    checkpoint = tmp / "backbone.pt"
    save_checkpoint(checkpoint, build_backbone(BackboneSpec("resnet26", width=0.25), 10), {"task": "source"})
    methods = "finetune,feature,scratch,adapters_series,adapters_parallel,piggyback,dan,nettailor"
    sweep = ["sweep", "--benchmark", str(toy), "--methods", methods, "--backbone-checkpoint", str(checkpoint)]
    sweep_s = _cli_seconds([*sweep, "--results", str(tmp / "sweep-results"), "--dry-run"], tmp)
    planned = len(methods.split(",")) * 10

    def import_seconds(code: str) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    python_s = import_seconds("pass")
    import_s = import_seconds("import vdd_bench.cli") - python_s
    rows = [
        _row(
            "harness",
            f"vdd leaderboard, {count} records, s",
            leaderboard_s,
            "s",
            "2 s target",
            HARNESS_TARGET_S,
            "<= 1",
        ),
        _row(
            "harness",
            f"vdd sweep --dry-run, {planned} runs, s",
            sweep_s,
            "s",
            "2 s target",
            HARNESS_TARGET_S,
            "<= 1",
        ),
        _row("harness", "import vdd_bench.cli, s", import_s, "s", "2 s target", HARNESS_TARGET_S, "<= 1"),
        _row("harness", "vdd status, empty results, s", status_s, "s", "0.5 s", STATUS_TARGET_S, "<= 1"),
    ]
    setup = "each command a fresh process (start and imports included); import time beyond a bare interpreter"
    return rows, {"harness": setup}


# ------------------------------------------------------------------------------------------ report


def run_benchmarks(options: BenchOptions) -> dict[str, Any]:
    sections = options.sections or list(SECTIONS)
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        from vdd_bench.errors import VddError

        raise VddError(f"unknown bench sections {sorted(unknown)}: choose from {', '.join(SECTIONS)}")
    rows: list[dict] = []
    setup: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
        + ("GPU: " + torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"),
        "load average": " ".join(f"{v:.1f}" for v in os.getloadavg()),
        "torch": torch.__version__,
        "quick": options.quick,
    }
    with tempfile.TemporaryDirectory(prefix="vdd-bench-") as tmp_name:
        tmp = Path(tmp_name)
        for section in sections:
            start = time.perf_counter()
            if section == "data":
                found, notes = bench_data(options, tmp / "data")
            elif section == "methods":
                found, notes = bench_methods(options)
            elif section == "tailored":
                found, notes = bench_tailored(options)
            elif section == "bundle":
                found, notes = bench_bundle(options, tmp / "bundle")
            else:
                found, notes = bench_harness(options, tmp / "harness")
            rows += found
            setup.update(notes)
            setup[f"{section} took s"] = round(time.perf_counter() - start, 1)
    setup["load average after"] = " ".join(f"{v:.1f}" for v in os.getloadavg())
    return {"setup": setup, "rows": rows}


def render(report: dict[str, Any]) -> str:
    from tabulate import tabulate

    lines = [f"{k}: {v}" for k, v in report["setup"].items()]
    table = [
        [
            r["section"],
            r["measure"],
            _fmt(r["value"]),
            r["baseline"],
            _fmt(r["baseline_value"]) if r["baseline"] else "",
            f"{r['ratio']:.3g}" if r["baseline"] else "",
            r["goal"],
        ]
        for r in report["rows"]
    ]
    headers = ["section", "measure", "value", "baseline", "baseline value", "ratio", "goal (ratio)"]
    return "\n".join(lines) + "\n\n" + tabulate(table, headers, tablefmt="github")


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"
