"""Honest accounting: parameters and storage counted from the real modules, MACs from a real forward pass.

MACs come from ``torch.utils.flop_counter.FlopCounterMode``, which counts the aten ops actually run, so
masked or subclassed convolutions (Piggyback, PackNet) and pruned modules (NetTailor) are counted as
they execute; hook-based counters silently count 0 for modules they do not know. BatchNorm, ReLU and
pooling are not counted, as in the papers' tables.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from vdd_bench.errors import VddError


def count_macs(model: nn.Module, input_size: int, in_channels: int = 3) -> int:
    """Multiply-accumulates of one image (``input_size`` x ``input_size``) through ``model`` in eval mode.

    Papers' "GFLOPs" for these networks are multiply-accumulates, so MACs = counted flops // 2.
    """
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    x = torch.zeros(1, in_channels, input_size, input_size, device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def count_parameters(model: nn.Module, include_classifier: bool = True) -> int:
    """Elements of all (distinct) parameters; ``include_classifier=False`` leaves out ``model.classifier``."""
    excluded: set[int] = set()
    if not include_classifier:
        classifier = getattr(model, "classifier", None)
        if not isinstance(classifier, nn.Module):
            raise VddError(f"{type(model).__name__} has no `classifier` module to leave out of the count")
        excluded = {id(p) for p in classifier.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in excluded)


def _fingerprint(t: Tensor) -> str:
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def tensor_fingerprints(state: dict[str, Tensor]) -> set[str]:
    """Content hashes (dtype, shape, bytes) of the floating-point tensors of a state dict."""
    return {_fingerprint(t) for t in state.values() if isinstance(t, Tensor) and t.is_floating_point()}


def _storage_bits(t: Tensor) -> int:
    """A bool tensor is a bit-packed mask (1 bit per element); others take their dtype's size."""
    if t.dtype == torch.bool:
        return t.numel()
    return t.numel() * t.element_size() * 8


def parameter_split(model: nn.Module, pretrained: dict[str, Tensor]) -> dict:
    """Shared vs task-specific storage, decided by content against the pre-trained state dict.

    A parameter or persistent floating-point buffer whose content equals some pre-trained tensor is the
    shared backbone; everything else must be stored per task. Bool buffers (masks) are always per task,
    at 1 bit per element; integer buffers (BN's ``num_batches_tracked``, PackNet's shared owner mask) are
    bookkeeping or shared across tasks and are not counted. Each tensor's bytes are rounded up.
    """
    shared_prints = tensor_fingerprints(pretrained)

    def is_shared(t: Tensor) -> bool:
        return t.is_floating_point() and _fingerprint(t) in shared_prints

    params = list(model.parameters())
    shared = [is_shared(p) for p in params]
    params_total = sum(p.numel() for p in params)
    params_shared = sum(p.numel() for p, s in zip(params, shared, strict=True) if s)
    task_bytes = sum(-(-_storage_bits(p) // 8) for p, s in zip(params, shared, strict=True) if not s)
    # keep_vars=True gives the live persistent buffers (non-persistent ones are not in the state dict)
    seen = {id(p) for p in params}
    for t in model.state_dict(keep_vars=True).values():
        if not isinstance(t, Tensor) or id(t) in seen or not (t.is_floating_point() or t.dtype == torch.bool):
            continue
        seen.add(id(t))
        if not is_shared(t):
            task_bytes += -(-_storage_bits(t) // 8)
    return {
        "params_total": params_total,
        "params_shared": params_shared,
        "params_task": params_total - params_shared,
        "task_bytes": task_bytes,
        "params_task_equiv": task_bytes / 4,
    }
