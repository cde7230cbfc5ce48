"""The one training loop every method runs through.

Deterministic by construction: the order of the training images and every random augmentation of an
epoch come from a generator seeded by (seed, phase, epoch), and the lr is a pure function of the epoch,
so resuming from an epoch-end checkpoint replays exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from vdd_bench.augment import AugmentSpec, augment_batch
from vdd_bench.batches import epoch_batches
from vdd_bench.curves import curve_rows, write_curves
from vdd_bench.device import Device
from vdd_bench.distributed import Distributed, check_batch
from vdd_bench.errors import Diverged, VddError
from vdd_bench.faults import fault_point
from vdd_bench.method import Method, Phase, TaskContext
from vdd_bench.safeload import load_tensors
from vdd_bench.store import atomic_write_bytes

CHECKPOINT_FORMAT = "vdd-train-state/1"


@dataclass
class LabelledImages:
    images: np.ndarray  # uint8 [N, 3, S, S], possibly a memory-mapped cache
    labels: torch.Tensor  # int64 [N]


def epoch_generator(seed: int, phase: int, epoch: int) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}/{phase}/{epoch}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def make_optimizer(groups: list[dict[str, Any]], phase: Phase) -> torch.optim.Optimizer:
    for group in groups:
        group.setdefault("weight_decay", phase.weight_decay)
        group["base_lr"] = group.get("lr", phase.lr)
        group["lr"] = group["base_lr"]
    if phase.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=phase.lr, momentum=phase.momentum)
    if phase.optimizer == "adam":
        return torch.optim.Adam(groups, lr=phase.lr)
    raise VddError(f"unknown optimizer {phase.optimizer!r} in phase {phase.name}: use sgd or adam")


def first_non_finite(model: nn.Module) -> str | None:
    """The name of the first parameter or floating-point buffer holding a NaN or an infinity, else None."""
    tensors = [*model.named_parameters(), *model.named_buffers()]
    for name, tensor in tensors:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def set_epoch_lr(optimizer: torch.optim.Optimizer, phase: Phase, epoch: int) -> float:
    factor = phase.lr_at(epoch) / phase.lr
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    return phase.lr * factor


def save_state(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def previous_checkpoint(path: Path) -> Path:
    """Where the checkpoint before the last one is kept (`checkpoint.prev.pt` beside `checkpoint.pt`)."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Keep the current checkpoint as the previous one, then write the new one atomically: a checkpoint
    found unreadable later (a filesystem that lost the last write) still leaves the one before it."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    previous = previous_checkpoint(path)
    if path.exists():
        os.replace(path, previous)
    fault_point("engine.rotated")
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except BaseException:  # e.g. a full disk: the last good checkpoint goes back in its place
        if not path.exists() and previous.exists():
            os.replace(previous, path)
        raise


def remove_checkpoints(path: Path) -> None:
    path.unlink(missing_ok=True)
    previous_checkpoint(path).unlink(missing_ok=True)


def load_state(path: Path, digest: str, warn: bool = True) -> dict[str, Any] | None:
    """The saved training state of this run, or None when there is none (or it belongs to another config).

    A missing or unreadable `checkpoint.pt` falls back to `checkpoint.prev.pt`, saying so on stderr; when
    neither is readable the run stops with an error rather than silently starting over."""
    previous = previous_checkpoint(path)
    problems: list[str] = []
    for candidate in (path, previous):
        if not candidate.exists():
            if candidate == path and previous.exists():
                problems.append(f"{path.name} is missing")
            continue
        try:
            state = load_tensors(candidate, "checkpoint")
            if not isinstance(state, dict):
                raise VddError(f"{candidate}: not a training state")
        except VddError as exc:  # a torn or foreign file
            problems.append(f"{candidate.name} is unreadable ({str(exc).removeprefix(f'{candidate}: ')})")
            continue
        if state.get("format") != CHECKPOINT_FORMAT or state.get("config") != digest:
            if warn:
                print(
                    f"warning: {candidate} is the checkpoint of another config: "
                    "the run starts from its first epoch",
                    file=sys.stderr,
                    flush=True,
                )
            return None
        if problems and warn:
            print(
                f"warning: {'; '.join(problems)} in {path.parent}: resuming from {candidate.name} "
                f"(phase {state.get('phase')}, epoch {state.get('epoch')})",
                file=sys.stderr,
                flush=True,
            )
        return state
    if problems:
        raise VddError(
            f"{path}: {'; '.join(problems)}: no readable checkpoint is left; delete {path.name} and "
            f"{previous.name} to restart the run from its first epoch"
        )
    return None


@dataclass
class Trainer:
    """Trains a method's phases on one task, with an epoch-end checkpoint (`checkpoint`, tagged with the
    run's `digest`) to resume from."""

    method: Method
    ctx: TaskContext
    device: Device
    seed: int
    checkpoint: Path
    digest: str
    progress: bool = True
    label: str = ""
    on_epoch_end: Callable[[int, int], None] | None = None
    dist: Distributed | None = None  # data-parallel: this rank's shard of every batch; only rank 0 writes
    rank_digests: list[str] = field(default_factory=list, init=False)  # every rank's final weights digest
    bad_step: int | None = field(default=None, init=False)  # first step (1-based) with a non-finite loss
    # training seconds of the whole run: the segments before a resume (kept in the checkpoint) and this one
    seconds: float = field(default=0.0, init=False)
    _segment_start: float = field(default=0.0, init=False)
    throughput: list[float] = field(default_factory=list, init=False)  # training images/s of each epoch

    def fit(
        self, model: nn.Module, data: LabelledImages, augment: AugmentSpec
    ) -> tuple[nn.Module, list[dict]]:
        phases = self.method.phases(self.ctx)
        start_phase, start_epoch, history = 0, 0, []
        state = load_state(self.checkpoint, self.digest)
        optimizer_state = None
        self.seconds, self._segment_start, self.throughput = 0.0, time.perf_counter(), []
        if state is not None:
            model = self.method.restore_structure(model, state["structure"], self.ctx)
            model.load_state_dict(state["model"])
            start_phase, start_epoch, history = state["phase"], state["epoch"], state["history"]
            optimizer_state = state.get("optimizer")
            self.seconds = float(state.get("train_seconds", 0.0))  # a checkpoint written before: 0
            self.throughput = list(state.get("throughput", []))
        if self.dist is not None:
            self.dist.agree((start_phase, start_epoch), f"resume point of {self.checkpoint}")
        model = self._prepare(model)
        total = sum(p.epochs for p in phases)
        done = sum(p.epochs for p in phases[:start_phase]) + start_epoch
        bar = tqdm(
            total=total, initial=done, desc=self.label, disable=not self.progress, leave=False, unit="ep"
        )
        for index in range(start_phase, len(phases)):
            phase = phases[index]
            net = model
            if self.dist is not None:
                check_batch(phase.batch_size, self.dist.world_size)
                net = self.dist.wrap(model, self.device)
            optimizer = make_optimizer(self.method.param_groups(model, phase, self.ctx), phase)
            if optimizer_state is not None and index == start_phase and start_epoch > 0:
                optimizer.load_state_dict(optimizer_state)
            first = start_epoch if index == start_phase else 0
            for epoch in range(first, phase.epochs):
                lr = set_epoch_lr(optimizer, phase, epoch)
                generator = epoch_generator(self.seed, index, epoch)
                started = time.perf_counter()
                loss, accuracy, seen = self._epoch(net, optimizer, data, augment, phase, generator)
                self.throughput.append(round(seen / max(time.perf_counter() - started, 1e-9), 1))
                if not np.isfinite(loss):
                    raise Diverged(self._diverged(f"loss became {loss}", phase, epoch))
                if (name := first_non_finite(model)) is not None:  # a finite loss can hide them (lr=inf)
                    self.bad_step = None
                    raise Diverged(self._diverged(f"{name} became non-finite", phase, epoch))
                fault_point("engine.epoch")
                history.append(
                    {"phase": phase.name, "epoch": epoch + 1, "lr": lr, "loss": loss, "train_acc": accuracy}
                )
                self._save(model, optimizer, index, epoch + 1, history)
                bar.update(1)
                if self.on_epoch_end is not None:
                    self.on_epoch_end(index, epoch + 1)
            model = self.method.end_phase(model, phase, self.ctx)
            model = self._prepare(model)
            self._save(model, None, index + 1, 0, history)
        bar.close()
        if self.dist is not None:
            model, self.rank_digests = self.dist.finish(model)
        self.seconds = self._elapsed()
        return model, history

    def _elapsed(self) -> float:
        """Training seconds so far: the earlier segments' and this one's."""
        return self.seconds + time.perf_counter() - self._segment_start

    def _diverged(self, what: str, phase: Phase, epoch: int) -> str:
        """The one-line error of a non-finite loss or weights: where it happened and which checkpoint is
        kept (the checkpoint of the epoch that went wrong is never written)."""
        if epoch > 0:
            kept = f"the checkpoint of epoch {epoch} is kept in {self.checkpoint}"
        elif self.checkpoint.exists():
            kept = f"the checkpoint before this phase is kept in {self.checkpoint}"
        else:
            kept = "no checkpoint was written yet"
        step = f"step {self.bad_step} of " if self.bad_step is not None else ""  # None: another rank's
        return (
            f"{self.label}: {what} at {step}epoch {epoch + 1} in phase {phase.name}; {kept}: lower the lr "
            "(the run is settled as diverged: `vdd sweep --retry-diverged` runs it again)"
        )

    def _prepare(self, model: nn.Module) -> nn.Module:
        model = self.device.prepare_model(model)
        return self.dist.prepare(model, self.device) if self.dist is not None else model

    def _epoch(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        data: LabelledImages,
        augment: AugmentSpec,
        phase: Phase,
        generator: torch.Generator,
    ) -> tuple[float, float | None, int]:
        """One epoch: mean loss, training accuracy (%) and the images seen. The accuracy comes from the
        model's output in each step, when the step runs the model once and it gives one score per class
        (else None: a method with several heads or outputs)."""
        self.method.train_mode(model)
        outputs: list[Any] = []
        hook = model.register_forward_hook(lambda module, args, output: outputs.append(output))
        correct = torch.zeros((), dtype=torch.float64, device=self.device.torch_device)
        scored = True
        count = len(data.labels)
        order = torch.randperm(count, generator=generator).numpy()
        batches = [
            index
            for index in (order[s : s + phase.batch_size] for s in range(0, count, phase.batch_size))
            # a single image breaks BatchNorm in training mode
            if len(index) >= 2 and (self.dist is None or self.dist.trains_on(len(index)))
        ]
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device.torch_device)
        seen = 0
        step_losses: list[torch.Tensor] = []  # to name the first non-finite step without a sync per step
        for images, labels in epoch_batches(
            data.images, data.labels, batches, augment, generator, self.device.torch_device
        ):
            scale = 1.0
            if self.dist is not None:  # the whole batch's augmentation is drawn, as in one process
                images, labels, scale = self.dist.shard(images, labels)
            images = self.device.prepare_batch(images)
            with self.device.autocast():
                loss = self.method.loss(model, images, labels, self.ctx)
            optimizer.zero_grad(set_to_none=True)
            (loss * scale if scale != 1.0 else loss).backward()
            optimizer.step()
            fault_point("engine.step")
            step_losses.append(loss.detach())
            loss_sum += loss.detach().double() * len(labels)
            seen += len(labels)
            scored = scored and _scores(outputs, len(labels), self.ctx.num_classes)
            if scored:
                correct += (outputs[0].detach().argmax(1) == labels).sum()
            outputs.clear()
        hook.remove()
        if self.dist is not None:  # the mean over the global batch, the same on every rank
            totals = self.dist.sum(torch.stack([loss_sum, loss_sum.new_tensor(float(seen)), correct]))
            loss_sum, seen, correct = totals[0], int(totals[1]), totals[2]
        mean = float(loss_sum) / max(seen, 1)
        if not np.isfinite(mean) and step_losses:
            bad = torch.stack(step_losses).float().isfinite().logical_not().nonzero()
            self.bad_step = int(bad[0]) + 1 if len(bad) else None
        accuracy = round(100.0 * float(correct) / seen, 4) if scored and seen else None
        return mean, accuracy, seen

    def _save(
        self, model: nn.Module, optimizer: torch.optim.Optimizer | None, phase: int, epoch: int, history: list
    ) -> None:
        if self.dist is not None and not self.dist.is_main:
            return
        state = {
            "format": CHECKPOINT_FORMAT,
            "config": self.digest,
            "phase": phase,
            "epoch": epoch,
            "structure": self.method.structure(model),
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "history": history,
            "train_seconds": self._elapsed(),
            "throughput": self.throughput,
        }
        save_checkpoint(self.checkpoint, state)
        write_curves(self.checkpoint.parent, curve_rows(history, self.throughput))


def _scores(outputs: list[Any], batch: int, classes: int) -> bool:
    """Whether a step's forward passes were one, giving a (batch, classes) tensor of class scores."""
    return len(outputs) == 1 and isinstance(outputs[0], torch.Tensor) and outputs[0].shape == (batch, classes)


def eval_batches(
    images: torch.Tensor, augment: AugmentSpec, device: Device, batch_size: int = 256
) -> Iterator[torch.Tensor]:
    """uint8 ``images`` in batches, in the recipe's test-time transform, on ``device`` and in its layout."""
    for start in range(0, len(images), batch_size):
        uint8 = images[start : start + batch_size].to(device.torch_device)
        yield device.prepare_batch(augment_batch(uint8, augment, train=False))


@torch.no_grad()
def predict(
    model: nn.Module, images: torch.Tensor, augment: AugmentSpec, device: Device, batch_size: int = 256
) -> np.ndarray:
    """Class index predicted for every image (test-time transform of the recipe)."""
    model.eval()
    out = []
    for batch in eval_batches(images, augment, device, batch_size):
        with device.autocast():
            logits = model(batch)
        out.append(logits.argmax(dim=1).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)
