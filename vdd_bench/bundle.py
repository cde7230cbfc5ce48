"""One file for all tasks of a method: the shared pre-trained weights once, plus each task's own part.

`vdd export --method M` gathers the finished runs of M (one per task; for a sequential method the last
step of its chain, whose model holds every task) and writes a bundle that loads with
``torch.load(weights_only=True)``. What is a task's own part is decided by content, as the accounting does
(`vdd_bench.accounting.parameter_split`): a tensor equal to a pre-trained tensor is stored as a reference
to it, every other tensor is stored once (tensors equal across tasks or within a model, such as PackNet's
two copies of its weights, are stored once), bool tensors (Piggyback's masks) bit-packed, and integer tensors
whose values fit in a byte (PackNet's ownership mask) as uint8. No method needs code here: a task's model is
rebuilt with the method's own `inference_model` (a sequential method's with `skeleton` + `select_task`) and
its run's saved weights loaded into it.

Layout (plain dicts, lists, strings, numbers and tensors):
``{"format", "method", "spec", "pretrained_classes", "pretrained": {name: tensor}, "blobs": [tensor],
"chain": None | {"run_id", "structure", "state"}, "tasks": {task: {"run_id", "num_classes", "hparams",
"input_size", "structure", "augment", "state"}}}``, where a ``state`` maps each state-dict key to a
reference: ``["pretrained", name]``, ``["blob", i]``, ``["bits", i, shape]`` or ``["int", i, dtype]``.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from vdd_bench.augment import AugmentSpec
from vdd_bench.backbones import BackboneSpec, build_backbone, load_checkpoint
from vdd_bench.benchmark import Benchmark
from vdd_bench.chains import setting
from vdd_bench.config import RunConfig
from vdd_bench.device import Device
from vdd_bench.engine import predict
from vdd_bench.errors import VddError
from vdd_bench.method import METHODS, Method, TaskContext, coerce, get_method
from vdd_bench.record import RunRecord
from vdd_bench.runner import file_fingerprint, load_run_model, task_transform
from vdd_bench.safeload import load_tensors
from vdd_bench.store import RunStore, atomic_write_bytes

BUNDLE_FORMAT = "vdd-bundle/1"
_INT_DTYPES = {"int8": torch.int8, "int16": torch.int16, "int32": torch.int32, "int64": torch.int64}


def _digest(t: Tensor) -> str:
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class _Encoder:
    """Turns state dicts into references to the pre-trained tensors or to blobs stored once."""

    def __init__(self, pretrained: dict[str, Tensor]) -> None:
        self.pretrained_by_digest = {
            _digest(t): name for name, t in pretrained.items() if t.is_floating_point()
        }
        self.used_pretrained: set[str] = set()
        self.blobs: list[Tensor] = []
        self._blob_index: dict[str, int] = {}

    def _blob(self, t: Tensor) -> int:
        key = _digest(t)
        if key not in self._blob_index:
            self._blob_index[key] = len(self.blobs)
            self.blobs.append(t.detach().cpu().contiguous().clone())
        return self._blob_index[key]

    def encode(self, state: dict[str, Tensor]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        for key, t in state.items():
            t = t.detach().cpu()
            if t.dtype == torch.bool:
                packed = torch.from_numpy(np.packbits(t.numpy().reshape(-1)))
                out[key] = ["bits", self._blob(packed), list(t.shape)]
            elif t.is_floating_point() and _digest(t) in self.pretrained_by_digest:
                name = self.pretrained_by_digest[_digest(t)]
                self.used_pretrained.add(name)
                out[key] = ["pretrained", name]
            elif (
                not t.is_floating_point()
                and str(t.dtype).removeprefix("torch.") in _INT_DTYPES
                and t.numel() > 1
                and int(t.min()) >= 0
                and int(t.max()) < 256
            ):
                out[key] = ["int", self._blob(t.to(torch.uint8)), str(t.dtype).removeprefix("torch.")]
            else:
                out[key] = ["blob", self._blob(t)]
        return out


def decode_state(
    refs: dict[str, list[Any]], pretrained: dict[str, Tensor], blobs: list[Tensor]
) -> dict[str, Tensor]:
    """The state dict a bundle's references describe."""
    out = {}
    for key, ref in refs.items():
        kind = ref[0]
        if kind == "pretrained":
            out[key] = pretrained[ref[1]]
        elif kind == "blob":
            out[key] = blobs[ref[1]]
        elif kind == "bits":
            shape = [int(s) for s in ref[2]]
            count = int(np.prod(shape)) if shape else 1
            bits = np.unpackbits(blobs[ref[1]].numpy(), count=count).astype(bool)
            out[key] = torch.from_numpy(bits).reshape(shape)
        elif kind == "int":
            out[key] = blobs[ref[1]].to(_INT_DTYPES[ref[2]])
        else:
            raise VddError(f"bundle: unknown tensor reference {kind!r} for {key}")
    return out


# ----------------------------------------------------------------------------------------- export


def _hparams_key(record: RunRecord) -> str:
    return json.dumps(setting(record.config.hparams), sort_keys=True)


def _pick_runs(records: list[RunRecord], method: str, filters: dict[str, Any]) -> list[RunRecord]:
    """The runs of one hyper-parameter setting: among those matching `filters`, the one that covers the most
    tasks, then the one closest to the method's defaults; a tie is refused."""
    defaults = METHODS.get(method).defaults
    for key, value in filters.items():
        if key not in defaults:
            raise VddError(f"--set {key}: not a hyper-parameter of {method} (known: {sorted(defaults)})")
        wanted = coerce(value, defaults[key], f"{method}.{key}")
        records = [r for r in records if r.config.hparams.get(key) == wanted]
    groups: dict[str, list[RunRecord]] = {}
    for record in records:
        groups.setdefault(_hparams_key(record), []).append(record)
    if not groups:
        return []

    def rank(group: list[RunRecord]) -> tuple[int, int]:
        """More tasks first; then the setting closest to the method's defaults (a sweep's plain runs
        before the same method run with another recipe as an input of another method, e.g. a teacher)."""
        hparams = group[0].config.hparams
        return len({r.task for r in group}), sum(hparams.get(k) == v for k, v in defaults.items())

    ranked = sorted(groups.values(), key=rank, reverse=True)
    if len(ranked) > 1 and rank(ranked[0]) == rank(ranked[1]):
        differing = sorted(
            k
            for k in ranked[0][0].config.hparams
            if len({json.dumps(g[0].config.hparams.get(k)) for g in ranked}) > 1
        )
        raise VddError(
            f"{len(ranked)} hyper-parameter settings of {method} cover as many tasks (they differ in "
            f"{', '.join(differing)}): choose one with --set KEY=VALUE"
        )
    return ranked[0]


def _find_backbone(results: Path, fingerprint: str, given: Path | None) -> Path:

    candidates = [given] if given is not None else sorted((Path(results) / "backbones").glob("*.pt"))
    for path in candidates:
        if path.is_file() and file_fingerprint(path) == fingerprint:
            return path
    where = str(given) if given is not None else f"{results}/backbones"
    raise VddError(
        f"the runs' backbone checkpoint (content {fingerprint}) is not in {where}: pass --backbone-checkpoint"
    )


def _augment(bench: Benchmark, config: RunConfig, results: Path) -> AugmentSpec:
    return task_transform(bench, config.task, config.resolution, config.recipe, results)


@dataclass
class ExportSummary:
    path: Path
    method: str
    tasks: list[str]
    bundle_bytes: int
    finetuned_bytes: int  # N separately fine-tuned networks (float32 state dicts, task classifiers)
    pretrained_bytes: int
    task_bytes: dict[str, int]  # bytes stored for each task alone (shared blobs counted for each user)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        out["ratio_to_finetuned"] = self.bundle_bytes / self.finetuned_bytes
        return out


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def finetuned_bytes(spec: BackboneSpec, classes: list[int]) -> int:
    """Bytes of the float tensors of `len(classes)` separately fine-tuned networks (their state dicts)."""
    total = 0
    for n in classes:
        total += sum(_nbytes(t) for t in build_backbone(spec, n).state_dict().values())
    return total


def export(
    method: str,
    results: Path,
    root: Path,
    out: Path,
    seed: int = 0,
    filters: dict[str, Any] | None = None,
    backbone_checkpoint: Path | None = None,
) -> ExportSummary:
    """Write the bundle of `method`'s finished runs on the benchmark at `root`; returns what it holds."""

    bench = Benchmark.open(root)
    store = RunStore(results)
    instance = get_method(method)
    records = [
        r
        for r in store.done_records()
        if r.method == method and r.config.benchmark == bench.fingerprint and r.seed == seed
    ]
    records = _pick_runs(records, method, filters or {})
    if not records:
        raise VddError(
            f"no finished {method} runs of seed {seed} on {root} under {results}: run them first (vdd sweep)"
        )
    records, shared = instance.serving_runs(records, bench.task_names())
    fingerprints = {r.config.backbone.get("checkpoint") for r in records}
    if len(fingerprints) != 1 or None in fingerprints:
        raise VddError(f"the {method} runs do not share one pre-trained backbone: a bundle needs one")
    ckpt = _find_backbone(results, fingerprints.pop(), backbone_checkpoint)
    spec, pretrained, _ = load_checkpoint(ckpt)
    pretrained_classes = int(pretrained["classifier.weight"].shape[0])
    encoder = _Encoder(pretrained)
    tasks: dict[str, dict[str, Any]] = {}
    task_bytes: dict[str, int] = {}
    chain = None
    if shared is not None:
        state, structure = load_run_model(store.run_dir(shared.run_id))
        chain = {"run_id": shared.run_id, "structure": structure, "state": encoder.encode(state)}
    for record in records:
        entry: dict[str, Any] = {
            "run_id": record.run_id,
            "num_classes": int(record.num_classes),
            "hparams": record.config.hparams,
            "input_size": int(record.accounting.input_size),
            "augment": asdict(_augment(bench, record.config, results)),
        }
        if shared is None:
            state, structure = load_run_model(store.run_dir(record.run_id))
            entry["structure"] = structure
            entry["state"] = encoder.encode(state)
            own = {ref[1] for ref in entry["state"].values() if ref[0] != "pretrained"}
            task_bytes[record.task] = sum(_nbytes(encoder.blobs[i]) for i in own)
        tasks[record.task] = entry
    if shared is not None:
        task_bytes = {"(chain)": sum(_nbytes(b) for b in encoder.blobs)}
    # one shared network never reads the pre-trained tensors it does not reference; per-task networks are
    # rebuilt from the whole pre-trained network (`build`), so it is kept whole
    kept = encoder.used_pretrained if shared is not None else set(pretrained)
    payload = {
        "format": BUNDLE_FORMAT,
        "method": method,
        "spec": spec.to_dict(),
        "pretrained_classes": pretrained_classes,
        "pretrained": {k: v.detach().cpu() for k, v in pretrained.items() if k in kept},
        "blobs": encoder.blobs,
        "chain": chain,
        "tasks": tasks,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(Path(out), buffer.getvalue())
    return ExportSummary(
        path=Path(out),
        method=method,
        tasks=list(tasks),
        bundle_bytes=len(buffer.getvalue()),
        finetuned_bytes=finetuned_bytes(spec, [e["num_classes"] for e in tasks.values()]),
        pretrained_bytes=sum(_nbytes(t) for t in payload["pretrained"].values()),
        task_bytes=task_bytes,
    )


# ----------------------------------------------------------------------------------------- load


class Bundle:
    """A loaded bundle: `set_task(name)` returns (and serves through `predict`) that task's model."""

    def __init__(self, payload: dict[str, Any], device: torch.device | str = "cpu") -> None:
        if not isinstance(payload, dict) or payload.get("format") != BUNDLE_FORMAT:
            raise VddError(f"not a {BUNDLE_FORMAT} bundle")
        self.payload = payload
        self.method_name: str = payload["method"]
        self.method: Method = get_method(self.method_name)
        self.spec = BackboneSpec.from_dict(payload["spec"])
        self.device = torch.device(device)
        self.task: str | None = None
        self.model: nn.Module | None = None
        self._chain_model: nn.Module | None = None

    @classmethod
    def load(cls, path: Path, device: torch.device | str = "cpu") -> Bundle:
        payload = load_tensors(Path(path), "bundle")
        return cls(payload, device)

    @property
    def tasks(self) -> list[str]:
        return list(self.payload["tasks"])

    def augment(self, task: str) -> AugmentSpec:
        fields = dict(self._entry(task)["augment"])
        fields["mean"], fields["std"] = tuple(fields["mean"]), tuple(fields["std"])
        return AugmentSpec(**fields)

    def _entry(self, task: str) -> dict[str, Any]:
        if task not in self.payload["tasks"]:
            raise VddError(f"task {task!r} is not in this bundle: it holds {', '.join(self.tasks)}")
        return self.payload["tasks"][task]

    def _state(self, refs: dict[str, list[Any]]) -> dict[str, Tensor]:
        return decode_state(refs, self.payload["pretrained"], self.payload["blobs"])

    def set_task(self, task: str) -> nn.Module:
        """The model of `task` (eval mode, on the bundle's device); it becomes the one `predict` uses."""
        entry = self._entry(task)
        if self.payload["chain"] is not None:
            if self._chain_model is None:
                chain = self.payload["chain"]
                model = self.method.skeleton(self.spec, chain["structure"])
                model.load_state_dict(self._state(chain["state"]))
                self._chain_model = model.to(self.device).eval()
            model = self.method.select_task(self._chain_model, task)
        else:
            ctx = TaskContext(
                task=task,
                num_classes=entry["num_classes"],
                spec=self.spec,
                pretrained=self.payload["pretrained"],
                pretrained_classes=self.payload["pretrained_classes"],
                hparams=entry["hparams"],
                input_size=entry["input_size"],
            )
            with torch.random.fork_rng(devices=[]):  # building draws random initial weights: keep the
                model = self.method.inference_model(ctx, entry["structure"])  # caller's RNG untouched
            model.load_state_dict(self._state(entry["state"]))
            model = model.to(self.device).eval()
        self.task, self.model = task, model
        return model

    def predict(self, images: Tensor, batch_size: int = 256) -> np.ndarray:
        """Predicted classes of uint8 [N, 3, S, S] images of the current task (its test-time transform),
        stored in the geometry its recipe reads (`vdd_bench.augment.geometry`: squashed for some tasks of the
        nettailor recipe)."""

        if self.model is None or self.task is None:
            raise VddError("call set_task(name) before predict")
        return predict(self.model, images, self.augment(self.task), Device(self.device), batch_size)

    def switch_seconds(self, rounds: int = 3) -> float:
        """Median wall time of `set_task` when moving from one task to the next, over every task."""
        times = []
        order = self.tasks
        self.set_task(order[-1])
        for _ in range(rounds):
            for task in order:
                start = time.perf_counter()
                self.set_task(task)
                times.append(time.perf_counter() - start)
        return float(np.median(times))
