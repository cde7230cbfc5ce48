"""Bad input, end to end: `vdd run` refuses it with one line `error: ...` naming the file or value and what
to do, writes no `done` marker, and `vdd data verify` finds every data defect before any training."""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from record_helpers import make_record

from vdd_bench.backbones import CHECKPOINT_FORMAT, BackboneSpec, build_backbone, save_checkpoint
from vdd_bench.cli import main
from vdd_bench.config import RunConfig, RunSettings
from vdd_bench.errors import VddError
from vdd_bench.store import RunStore

TINY = ["--resolution", "36", "--set", "batch_size=4", "--no-progress", "--device", "cpu"]


def vdd_run(root: Path, results: Path, *extra: str, method: str = "scratch") -> Result:
    args = ["run", "--method", method, "--task", "alpha", "--benchmark", str(root), "--results", str(results)]
    if method == "scratch" and "--backbone" not in extra:
        extra = ("--backbone", "resnet26", "--width", "0.125", *extra)
    return CliRunner().invoke(main, [*args, *TINY, "--set", "epochs=1", *extra])


def refused(result: Result, *needles: str) -> str:
    """The one error line of a refused command, checked to contain every needle."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def no_done_marker(results: Path) -> None:
    assert not list(results.rglob("done")), "a refused run left a done marker"
    assert list(RunStore(results).done_records()) == []


def _train(root: Path) -> dict:
    return json.loads((root / "annotations" / "alpha_train.json").read_text())


def _edit(root: Path, change: Callable[[dict], None], split: str = "train") -> str:
    path = root / "annotations" / f"alpha_{split}.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))
    return f"annotations/alpha_{split}.json"


def missing_image(root: Path) -> str:
    name = _train(root)["images"][1]["file_name"]
    (root / name).unlink()
    return name


def unreadable_image(root: Path) -> str:  # a directory where the image should be: open() fails
    name = _train(root)["images"][2]["file_name"]
    (root / name).unlink()
    (root / name).mkdir()
    return name


def truncated_jpeg(root: Path) -> str:
    name = _train(root)["images"][3]["file_name"]
    data = (root / name).read_bytes()
    (root / name).write_bytes(data[: len(data) // 2])
    return name


def garbage_jpeg(root: Path) -> str:
    name = _train(root)["images"][0]["file_name"]
    (root / name).write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg " * 8)
    return name


def unknown_category(root: Path) -> str:
    return _edit(root, lambda d: d["annotations"][0].update(category_id=4242))


def duplicate_image_ids(root: Path) -> str:
    return _edit(root, lambda d: d["images"][1].update(id=d["images"][0]["id"]))


def empty_split(root: Path) -> str:
    return _edit(root, lambda d: d.update(images=[], annotations=[]), split="val")


def malformed_json(root: Path) -> str:
    path = root / "annotations" / "alpha_val.json"
    path.write_text(path.read_text()[:-15])
    return "annotations/alpha_val.json"


def _outside_copy(root: Path) -> Path:
    """A real image outside the root (beside it), so a refusal is not a missing file's."""
    outside = root.parent / "outside.jpg"
    outside.write_bytes((root / _train(root)["images"][0]["file_name"]).read_bytes())
    return outside


def absolute_file_name(root: Path) -> str:
    outside = _outside_copy(root)
    return _edit(root, lambda d: d["images"][1].update(file_name=str(outside)))


def dotdot_file_name(root: Path) -> str:
    _outside_copy(root)
    return _edit(root, lambda d: d["images"][1].update(file_name="data/../../outside.jpg"))


def symlink_outside(root: Path) -> str:
    outside = _outside_copy(root)
    name = _train(root)["images"][1]["file_name"]
    (root / name).unlink()
    (root / name).symlink_to(outside)
    return name


def fifo_image(root: Path) -> str:  # opening it would wait for a writer forever
    name = _train(root)["images"][1]["file_name"]
    (root / name).unlink()
    os.mkfifo(root / name)
    threading.Thread(target=_unblock_readers, args=(root / name,), daemon=True).start()
    return name


def _unblock_readers(fifo: Path, patience: float = 20.0) -> None:
    """Let a reader that opened the FIFO go after `patience` seconds (it then reads junk and fails on it),
    so that a regression fails this test instead of hanging the suite."""
    time.sleep(patience)
    for _ in range(600):
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)  # ENXIO while nobody reads
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.2)
            continue
        os.write(fd, b"not an image")
        os.close(fd)


DATA_DEFECTS = [
    (missing_image, "image file missing"),
    (unreadable_image, "cannot decode the image"),
    (truncated_jpeg, "cannot decode the image"),
    (garbage_jpeg, "cannot decode the image"),
    (unknown_category, "category ids not in the task's 'categories': 4242"),
    (duplicate_image_ids, "duplicate image ids 10000001"),
    (empty_split, "no images: the split is empty"),
    (malformed_json, "malformed JSON at line 1"),
    (absolute_file_name, "leaves the benchmark root (absolute, or with '..') at positions 1"),
    (dotdot_file_name, "leaves the benchmark root (absolute, or with '..') at positions 1"),
    (symlink_outside, "resolves to a path outside the benchmark root"),
    (fifo_image, "not a regular file (a FIFO, socket or device)"),
]


@pytest.mark.parametrize("damage,message", DATA_DEFECTS, ids=[d.__name__ for d, _ in DATA_DEFECTS])
def test_a_data_defect_is_refused_in_one_line_by_run_and_pack_and_found_by_verify(
    make_root, tmp_path: Path, damage, message: str
) -> None:
    root = make_root()
    file = damage(root)
    results = tmp_path / "results"
    refused(vdd_run(root, results), message, file)
    no_done_marker(results)
    for folder in (results / "runs").iterdir() if (results / "runs").exists() else []:
        assert message in (folder / "failed").read_text()  # so `vdd status` says failed, with the error
    pack = ["data", "pack", str(root), "--size", "36", "--out", str(tmp_path / "pack.h5")]
    packed = CliRunner().invoke(main, pack)  # its progress bar goes to stderr too: the last line is the error
    assert packed.exit_code == 2, packed.output
    last = packed.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last and file in last, packed.stderr
    assert not (tmp_path / "pack.h5").exists()
    report = CliRunner().invoke(main, ["data", "verify", str(root)])
    assert report.exit_code == 1, report.output
    rows = [line for line in report.output.splitlines() if line.startswith("error") and file in line]
    assert rows and message in rows[0], report.output


def test_a_truncated_cache_is_refused_and_names_the_file(make_root, tmp_path: Path) -> None:
    from vdd_bench.benchmark import Benchmark
    from vdd_bench.cache import default_cache_path, pack

    root, results = make_root(), tmp_path / "results"
    bench = Benchmark.open(root)
    cache = pack(bench, default_cache_path(results, bench, 36), 36, progress=False)
    check = ["data", "verify", str(root), "--cache", str(cache)]
    assert CliRunner().invoke(main, check).exit_code == 0
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    refused(vdd_run(root, results), str(cache), "truncated cache", "vdd data pack")
    no_done_marker(results)
    report = CliRunner().invoke(main, check)
    assert report.exit_code == 1 and "truncated cache file" in report.output, report.output


def test_verify_finds_a_cache_of_other_annotations_or_with_images_missing(make_root, tmp_path: Path) -> None:
    import h5py

    from vdd_bench.benchmark import Benchmark
    from vdd_bench.cache import pack

    root = make_root()
    cache = pack(Benchmark.open(root), tmp_path / "c.h5", 36, progress=False)
    with h5py.File(cache, "a") as h5:
        del h5["alpha/val/images"]
        h5.create_dataset("alpha/val/images", shape=(2, 3, 36, 36), dtype="uint8")
    report = CliRunner().invoke(main, ["data", "verify", str(root), "--cache", str(cache)])
    assert report.exit_code == 1 and "alpha/val/images holds 2 images, the annotations 3" in report.output
    unknown_category(root)  # the annotations change: the pack is of other annotations now
    report = CliRunner().invoke(main, ["data", "verify", str(root), "--cache", str(cache)])
    assert report.exit_code == 1 and "packed from other annotations" in report.output


def _checkpoint(path: Path, spec: BackboneSpec, state_of: BackboneSpec, num_classes: int, head: int) -> Path:
    """A checkpoint that says `spec` and `num_classes` but holds a `state_of` net with `head` outputs."""
    torch.manual_seed(0)
    state = build_backbone(state_of, head).state_dict()
    payload = {
        "format": CHECKPOINT_FORMAT,
        "spec": spec.to_dict(),
        "num_classes": num_classes,
        "state_dict": state,
        "meta": {},
    }
    torch.save(payload, path)
    return path


def test_a_backbone_checkpoint_of_another_architecture_is_refused(make_root, tmp_path: Path) -> None:
    root, results = make_root(), tmp_path / "results"
    r26, r18 = BackboneSpec("resnet26", width=0.125), BackboneSpec("resnet18", width=0.125)
    lying = _checkpoint(tmp_path / "lying.pt", r26, r18, 5, 5)
    line = refused(vdd_run(root, results, "--backbone-checkpoint", str(lying), method="finetune"), str(lying))
    assert "another architecture" in line and "resnet26" in line
    no_done_marker(results)
    honest = tmp_path / "r26.pt"
    save_checkpoint(honest, build_backbone(r26, 5), {})
    args = ("--backbone-checkpoint", str(honest), "--backbone", "resnet18", "--width", "0.125")
    refused(vdd_run(root, results, *args, method="finetune"), str(honest), "not the requested resnet18")
    no_done_marker(results)


def test_a_head_that_does_not_match_the_class_count_is_refused(make_root, tmp_path: Path) -> None:
    root, results = make_root(), tmp_path / "results"
    spec = BackboneSpec("resnet26", width=0.125)
    bad = _checkpoint(tmp_path / "head.pt", spec, spec, 10, 7)  # says 10 classes, its classifier has 7
    line = refused(vdd_run(root, results, "--backbone-checkpoint", str(bad), method="finetune"), str(bad))
    assert "classifier has 7 outputs" in line and "num_classes says 10" in line
    no_done_marker(results)


def test_a_finished_model_does_not_load_into_a_task_with_another_class_count(
    make_root, tmp_path: Path
) -> None:
    from vdd_bench.backbones import load_weights

    model = build_backbone(BackboneSpec("resnet26", width=0.125), 3)
    torch.save({"model": model.state_dict()}, tmp_path / "model.pt")
    other = build_backbone(BackboneSpec("resnet26", width=0.125), 5)
    state = torch.load(tmp_path / "model.pt", weights_only=True)["model"]
    with pytest.raises(VddError) as caught:
        load_weights(other, state, tmp_path / "model.pt")
    message = str(caught.value)
    assert "\n" not in message and "model.pt" in message
    assert "classifier.weight" in message and "(3, " in message and "(5, " in message


@pytest.mark.parametrize(
    "text,needle",
    [
        ("benchmark: x\nmethod: [finetune]\n", "unknown key 'method'"),
        ("benchmark: x\nseeds: 3\n", "seeds must be list"),
        ("benchmark: x\nepoch_scale: fast\n", "epoch_scale must be int or float"),
        ("benchmark: [unclosed\n", "not valid YAML at line 2"),
        ("benchmark: !!python/object/apply:os.system [echo]\n", "not valid YAML"),
    ],
)
def test_a_bad_sweep_file_is_refused_in_one_line(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    result = CliRunner().invoke(main, ["sweep", "--file", str(path), "--results", str(tmp_path / "r")])
    refused(result, str(path), needle)


def test_a_non_finite_loss_stops_the_run_names_the_step_and_keeps_the_checkpoint(
    make_root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vdd_bench.methods.scratch import Scratch

    calls = []
    real_loss = Scratch.loss

    def poisoned(self, model, images, labels, ctx):  # the 4th step: epoch 2, step 2 (6 images, batches of 4)
        calls.append(1)
        loss = real_loss(self, model, images, labels, ctx)
        return loss * math.nan if len(calls) == 4 else loss

    monkeypatch.setattr(Scratch, "loss", poisoned)
    root, results = make_root(), tmp_path / "results"
    line = refused(vdd_run(root, results, "--set", "epochs=2"), "loss became nan at step 2 of epoch 2")
    assert "checkpoint of epoch 1 is kept" in line and "lower the lr" in line
    no_done_marker(results)
    [folder] = (results / "runs").iterdir()
    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert (state["phase"], state["epoch"]) == (0, 1)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/../../b", "..", ".", "a\\b", "x\n", "~root"])
def test_run_ids_and_task_names_cannot_leave_the_results_folder(tmp_path: Path, name: str) -> None:
    store = RunStore(tmp_path)
    with pytest.raises(VddError, match="invalid"):
        store.run_dir(name)
    base = dict(
        benchmark="b", benchmark_kind="toy", method="finetune", hparams={}, backbone={}, resolution=36
    )
    with pytest.raises(VddError, match="invalid task name"):
        RunConfig(task=name, **base)
    with pytest.raises(VddError, match="invalid method name"):
        RunConfig(task="alpha", **{**base, "method": name})


@pytest.mark.parametrize(
    "text,needle",
    [
        ("partition: gpu\ngpu: 1\n", "unknown key 'gpu'"),
        ('partition: "gpu\\nrm -rf ~"\n', "partition holds a line break"),
        ('sbatch: {constraint: "a100\\n#SBATCH --wrap=x"}\n', "sbatch.constraint holds a line break"),
    ],
)
def test_a_bad_profile_is_refused_in_one_line(make_root, tmp_path: Path, text: str, needle: str) -> None:
    path, sweep = tmp_path / "profile.yaml", tmp_path / "sweep.yaml"
    path.write_text(text)
    sweep.write_text(f"benchmark: {make_root()}\nmethods: [scratch]\nbackbone: {{name: resnet26}}\n")
    args = ["sweep", "--file", str(sweep), "--launcher", "slurm", "--profile", str(path)]
    result = CliRunner().invoke(main, [*args, "--results", str(tmp_path / "r")])
    refused(result, str(path), needle)


def test_a_done_run_with_an_unreadable_record_is_refused_not_skipped(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    config = RunConfig(
        benchmark="b", benchmark_kind="custom", task="alpha", method="finetune", hparams={}, backbone={},
        resolution=36,
    )  # fmt: skip
    store.start(config)
    store.finish(make_record(config, {"test_acc": 50.0}))
    record = store.run_dir(config.run_id) / "record.json"
    record.write_text(record.read_text()[:40])  # a damaged disk: done, but the record cut short
    for read in (lambda: list(store.done_records()), lambda: store.record(config.run_id)):
        with pytest.raises(VddError) as caught:
            read()
        message = str(caught.value)
        assert "\n" not in message and str(record) in message and "delete" in message
    result = CliRunner().invoke(main, ["leaderboard", "--results", str(tmp_path)])
    refused(result, str(record), "marked done but its record is unreadable")


def test_a_full_disk_stops_the_run_in_one_line_and_the_relaunch_resumes(
    make_root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno
    import os

    root, results = make_root(), tmp_path / "results"
    straight = vdd_run(root, tmp_path / "straight", "--set", "epochs=2")
    assert straight.exit_code == 0, straight.output
    real_fsync, calls = os.fsync, []

    def full(fd: int) -> None:  # the disk fills up while epoch 2's checkpoint is written
        if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(".checkpoint.pt."):
            calls.append(fd)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    line = refused(vdd_run(root, results, "--set", "epochs=2"), "checkpoint.pt: No space left on device")
    assert "previous version, if any, is intact" in line and "free some space and relaunch" in line
    no_done_marker(results)
    [folder] = (results / "runs").iterdir()
    assert torch.load(folder / "checkpoint.pt", weights_only=True)["epoch"] == 1  # the last good one
    assert not list(folder.glob(".*.tmp"))
    monkeypatch.setattr(os, "fsync", real_fsync)
    again = vdd_run(root, results, "--set", "epochs=2")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["metrics"] == json.loads(straight.stdout)["metrics"]
    a = torch.load(folder / "model.pt", weights_only=True)["model"]
    b = torch.load(next((tmp_path / "straight" / "runs").iterdir()) / "model.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


class _RunsCode:
    """Unpickling this would create `marker`: a file that holds it must be refused before that."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("reader", ["backbone", "model", "bundle"])
def test_a_file_holding_code_is_refused_without_the_advice_to_load_it_unsafely(
    tmp_path: Path, reader: str
) -> None:
    from vdd_bench.backbones import load_checkpoint
    from vdd_bench.bundle import Bundle
    from vdd_bench.runner import load_run_model

    marker = tmp_path / "ran"
    file = tmp_path / ("model.pt" if reader == "model" else "evil.pt")
    torch.save({"format": CHECKPOINT_FORMAT, "payload": _RunsCode(marker)}, file)
    load = {
        "backbone": lambda: load_checkpoint(file),
        "model": lambda: load_run_model(tmp_path),
        "bundle": lambda: Bundle.load(file),
    }[reader]
    with pytest.raises(VddError) as caught:
        load()
    message = str(caught.value)
    assert str(file) in message and "never loaded since they could run code" in message
    assert "weights_only" not in message and "likely succeed" not in message
    assert len(message.splitlines()) == 1
    assert not marker.exists()


def test_non_finite_weights_after_the_last_epoch_stop_the_run_and_keep_the_last_good_checkpoint(
    make_root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vdd_bench.methods.scratch import Scratch

    calls = []
    real_loss = Scratch.loss

    def poisoned(self, model, images, labels, ctx):  # the loss stays finite; a weight does not
        calls.append(1)
        if len(calls) == 4:  # epoch 2 (the last), step 2
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] = math.inf
        return real_loss(self, model, images, labels, ctx).nan_to_num(0.0)

    monkeypatch.setattr(Scratch, "loss", poisoned)
    root, results = make_root(), tmp_path / "results"
    line = refused(vdd_run(root, results, "--set", "epochs=2"), "became non-finite at epoch 2")
    assert "checkpoint of epoch 1 is kept" in line
    no_done_marker(results)
    [folder] = (results / "runs").iterdir()
    state = torch.load(folder / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.parametrize(
    "setting,needle",
    [
        ("epochs=0", "scratch.epochs: it must be at least 1"),
        ("epochs=-3", "scratch.epochs: it must be at least 1"),
        ("lr=nan", "scratch.lr: it must be a finite number"),
        ("lr=inf", "scratch.lr: it must be a finite number"),
        ("lr=0", "scratch.lr: it must be a positive number"),
        ("lr=-0.1", "scratch.lr: it must be a positive number"),
        ("momentum=5", "scratch.momentum: it must be in [0, 1)"),
        ("gamma=-1", "scratch.gamma: it must be in (0, 1]"),
        ("weight_decay=-1", "scratch.weight_decay: it must be zero or positive"),
        ("milestones=1.5,-2", "scratch.milestones: it must be increasing fractions"),
        ("batch_size=0", "scratch.batch_size: it must be at least 1"),
    ],
)
def test_a_hyper_parameter_out_of_its_range_is_refused_before_the_run_starts(
    make_root, tmp_path: Path, setting: str, needle: str
) -> None:
    results = tmp_path / "results"
    refused(vdd_run(make_root(), results, "--set", setting), needle, setting.split("=")[1].split(",")[0])
    assert not (results / "runs").exists() or not list((results / "runs").iterdir())


@pytest.mark.parametrize("scale", ["0", "-1", "nan", "inf"])
def test_a_bad_epoch_scale_is_refused_not_read_as_one_epoch(make_root, tmp_path: Path, scale: str) -> None:
    results = tmp_path / "results"
    refused(vdd_run(make_root(), results, "--epoch-scale", scale), "bad epoch scale", "positive number")
    assert not (results / "runs").exists() or not list((results / "runs").iterdir())


def test_an_epoch_count_of_zero_stays_zero_under_an_epoch_scale(make_root, tmp_path: Path) -> None:
    from vdd_bench.benchmark import Benchmark
    from vdd_bench.runner import plan_run

    bench = Benchmark.open(make_root())
    checkpoint = tmp_path / "b.pt"
    save_checkpoint(checkpoint, build_backbone(BackboneSpec("resnet26", width=0.125), 3), {"task": "alpha"})
    settings = RunSettings.of(bench, backbone_checkpoint=checkpoint, epoch_scale=0.5)
    plan = plan_run(settings, "alpha", "lwf", {"warmup_epochs": 0})
    assert plan.config.hparams["warmup_epochs"] == 0  # no warm-up: plain sequential fine-tuning
    assert plan.config.hparams["epochs"] == 60


@pytest.mark.parametrize(
    "extra,needle",
    [
        (("--device", "tpu"), "unknown device 'tpu': use cpu, cuda or cuda:N"),
        (("--device", "cuda:7"), "device 'cuda:7': this machine has"),
        (("--resolution", "-5"), "bad resolution -5: the stored image size must be at least 8 px"),
        (("--resolution", "0"), "bad resolution 0"),
    ],
)
def test_a_bad_device_or_resolution_is_one_line_not_a_traceback_or_a_fallback(
    make_root, tmp_path: Path, extra: tuple[str, ...], needle: str
) -> None:
    if extra[1].startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    results = tmp_path / "results"
    args = ["run", "--method", "scratch", "--task", "alpha", "--benchmark", str(make_root())]
    args += ["--results", str(results), "--backbone", "resnet26", "--width", "0.125", "--no-progress", *extra]
    refused(CliRunner().invoke(main, args), needle)
    no_done_marker(results)


def test_bad_seeds_are_refused_in_one_line(make_root, tmp_path: Path) -> None:
    args = ["sweep", "--benchmark", str(make_root()), "--methods", "scratch", "--seeds", "a,b", "--dry-run"]
    refused(CliRunner().invoke(main, [*args, "--results", str(tmp_path)]), "bad --seeds 'a,b'")
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text("methods: [scratch]\nseeds: [0, true]\n")
    sweep = ["sweep", "--file", str(sweep_file), "--benchmark", str(make_root()), "--dry-run"]
    refused(
        CliRunner().invoke(main, [*sweep, "--results", str(tmp_path)]), "seeds must be a list of integers"
    )


def test_backbone_info_refuses_a_size_of_zero() -> None:
    result = CliRunner().invoke(main, ["backbone-info", "resnet26", "--size", "0"])
    assert result.exit_code == 2 and "0 is not in the range x>=1" in result.output


def test_a_results_folder_the_user_may_not_write_is_one_line_for_run_sweep_pack_and_pretrain(
    make_root, tmp_path: Path
) -> None:
    """A file where the results folder should be (portable), and a read-only mount (where this machine lets
    a test make one): one line, nothing half-written."""
    import shutil
    import subprocess
    import sys

    root = make_root()
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    results = blocked / "results"
    scratch = ["--backbone", "resnet26", "--width", "0.125"]
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("methods: [scratch]\ntasks: [alpha]\nbackbone: {name: resnet26, width: 0.125}\n")
    commands = [
        ["run", "--method", "scratch", "--task", "alpha", "--benchmark", str(root), *scratch, *TINY],
        ["sweep", "--file", str(sweep), "--benchmark", str(root), "--no-progress"],
        ["data", "pack", str(root), "--size", "16"],
        ["pretrain", "--benchmark", str(root), "--width", "0.125", "--no-progress"],
    ]
    for args in commands:
        refused(CliRunner().invoke(main, [*args, "--results", str(results)]), "Not a directory", "--results")
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        pytest.skip("a read-only mount needs unshare and root (the folder-in-the-way case above ran)")
    writable, readonly = tmp_path / "rw", tmp_path / "ro"
    writable.mkdir(), readonly.mkdir()
    mount = f"mount --bind {writable} {readonly} && mount -o remount,ro,bind {readonly}"
    vdd = f"{sys.executable} -c 'from vdd_bench.cli import main; main()'"
    script = f"{mount} || exit 97; " + "; ".join(
        f"{vdd} {' '.join(args)} --results {readonly}" for args in commands
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ran = subprocess.run(
        [unshare, "-m", "sh", "-c", script], capture_output=True, text=True, timeout=300, env=env
    )
    if ran.returncode == 97 or "unshare:" in ran.stderr:
        pytest.skip(f"this machine cannot make a read-only mount: {ran.stderr.strip()[:200]}")
    lines = ran.stderr.strip().splitlines()
    assert len(lines) == 4 and all("Read-only file system: nothing was recorded" in line for line in lines)
    assert not any(writable.iterdir())
