"""SpotTune (Guo et al., CVPR 2019): every residual block twice, the pre-trained copy with its convs frozen
and a copy fine-tuned for the task, and a small policy network that picks, per image and per block, which copy
the image goes through (a two-way Gumbel-softmax, one-hot in the forward pass, straight-through backward).

As the authors' code (gyhui14/spottune @ 0635ecd, docs/fidelity.md has file and line): the policy network is
a ResNet of one block per stage at the input resolution, with two logits per block; both copies start from the
pre-trained block; in the frozen copy only the convs are frozen (its BNs, the stem conv, the head and the
classifier train); the network and the policy train jointly with their own SGD optimizers (lr 0.1 with
the authors' per-dataset weight decay; lr 0.01, weight decay 1e-3), 110 epochs with both lrs divided by 10
after epoch 40 (what their schedule function does; the steps at 60 and 80 it lists never take effect: the
preset `paper-steps`). One deviation: at test the policy takes the likelier copy (argmax) where the code
samples Gumbel noise again, so that a run's predictions, and a bundle's, are deterministic.

While training both copies run on every image and are mixed by the one-hot choice; at inference each copy
runs only on the images routed to it. The two copies cost the same, so every image costs the backbone's
multiply-accumulates plus the policy's whatever the routing: the MACs of one image are the mean over the test
set. The record holds them and the fraction of test images each block sends to its fine-tuned copy.
`policy="global"` learns one choice per block for all the task's images (no policy network); the paper's
Global-k variant, whose extra losses make the policy network fine-tune the same k blocks for every image, is
not built.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from vdd_bench.methods._surgery import batchnorms, freeze

from vdd_bench.backbones import Backbone, build_resnet26
from vdd_bench.config import BackboneSpec
from vdd_bench.errors import VddError
from vdd_bench.method import Method, Phase, TaskContext, pretrained_backbone, register_method
from vdd_bench.search import Distribution, LogUniform

# The authors' weight decay of the fine-tuned network per decathlon task (main.py:43-53); other tasks use
# the `weight_decay` hyper-parameter.
AUTHORS_WEIGHT_DECAY = {
    "aircraft": 5e-4,
    "cifar100": 0.0,
    "daimlerpedcls": 5e-4,
    "dtd": 0.0,
    "gtsrb": 0.0,
    "omniglot": 5e-4,
    "svhn": 0.0,
    "ucf101": 5e-4,
    "vgg-flowers": 1e-4,
    "imagenet12": 1e-4,
}
POLICIES = ("image", "global")


def policy_kind(value: Any) -> str:
    if value not in POLICIES:
        raise VddError(f"bad value {value!r} for spottune.policy: use one of {', '.join(POLICIES)}")
    return str(value)


def gumbel_choice(logits: Tensor, temperature: float, generator: torch.Generator) -> Tensor:
    """A one-hot sample of each row of ``logits`` [..., 2] (Gumbel-max), with the gradient of the softmax of
    the perturbed logits at ``temperature`` (straight-through); returns the weight of choice 1."""
    uniform = torch.rand(logits.shape, generator=generator).to(logits.device, logits.dtype)
    soft = F.softmax((logits - torch.log(-torch.log(uniform + 1e-20) + 1e-20)) / temperature, dim=-1)
    hard = F.one_hot(soft.argmax(-1), 2).to(soft.dtype)
    return (hard - soft.detach() + soft)[..., 1]


class SpotTuneNet(nn.Module):
    """The backbone's stem, head and classifier; for each block a frozen and a fine-tuned copy; a policy."""

    def __init__(self, backbone: Backbone, policy: nn.Module, temperature: float) -> None:
        super().__init__()
        self.stem, self.head, self.classifier = backbone.stem, backbone.head, backbone.classifier
        self.blocks = backbone.blocks
        self.tuned = copy.deepcopy(backbone.blocks)
        self.policy = policy
        self.temperature = temperature
        # Training forward passes so far: the Gumbel noise of each is drawn from (run seed, this count), so a
        # resumed run draws what the uninterrupted one would have (the count is in the checkpoint).
        self.register_buffer("draws", torch.zeros((), dtype=torch.int64))

    def route_logits(self, x: Tensor) -> Tensor:
        """[N, blocks, 2]: per image and block, the logits of (frozen copy, fine-tuned copy)."""
        return self.policy(x).view(len(x), len(self.blocks), 2)

    def choose(self, x: Tensor) -> Tensor:
        """[N, blocks] in {0, 1} at inference (1: the fine-tuned copy): the likelier copy."""
        return self.route_logits(x).argmax(-1)

    def noise_at(self, draw: int) -> torch.Generator:
        """The generator of the Gumbel noise of training forward pass number ``draw`` of this run."""
        digest = hashlib.sha256(f"{torch.initial_seed()}/{draw}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            use_tuned = gumbel_choice(self.route_logits(x), self.temperature, self.noise_at(int(self.draws)))
            self.draws += 1
        else:
            use_tuned = self.choose(x)
        x = self.stem(x)
        for b, (frozen, tuned) in enumerate(zip(self.blocks, self.tuned, strict=True)):
            weight = use_tuned[:, b]
            if self.training:  # both copies on every image, mixed by the one-hot choice
                w = weight.view(-1, 1, 1, 1)
                x = frozen(x) * (1 - w) + tuned(x) * w
            else:  # each copy only on its images
                x = routed(x, weight.bool(), frozen, tuned)
        return self.classifier(self.head(x))


def routed(x: Tensor, to_tuned: Tensor, frozen: nn.Module, tuned: nn.Module) -> Tensor:
    """``frozen`` on the images of ``x`` not ``to_tuned``, ``tuned`` on the others, in their places."""
    if bool(to_tuned.all()):
        return tuned(x)
    if not bool(to_tuned.any()):
        return frozen(x)
    a, b = frozen(x[~to_tuned]), tuned(x[to_tuned])
    out = a.new_empty((len(x), *a.shape[1:]))
    out[~to_tuned], out[to_tuned] = a, b
    return out


class GlobalPolicy(nn.Module):
    """A global policy: one pair of logits per block for every image of the task."""

    def __init__(self, blocks: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(blocks * 2))

    def forward(self, x: Tensor) -> Tensor:
        return self.logits.repeat(len(x), 1)  # a copy: a view of a parameter confuses FlopCounterMode


def image_policy(spec: BackboneSpec, blocks: int) -> nn.Module:
    """The authors' policy network (agent_net.py): a ResNet-26 layout with one block per stage, no ReLU
    after the stem, BN + ReLU before the pooling, two logits per block; at the backbone's width."""
    layout = BackboneSpec(name="resnet26", width=spec.width, stem_relu=False, head_relu=True)
    return build_resnet26(layout, 2 * blocks, blocks_per_stage=1)


@register_method("spottune")
class SpotTune(Method):
    """Per-image routing between frozen and fine-tuned blocks, the authors' decathlon recipe."""

    defaults: ClassVar[dict[str, Any]] = {
        "epochs": 110,
        "lr": 0.1,
        "optimizer": "sgd",
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "authors_weight_decay": True,  # the per-dataset table for decathlon tasks
        "milestones": [40 / 110],
        "gamma": 0.1,
        "batch_size": 128,
        "policy": "image",
        "policy_lr": 0.01,
        "policy_weight_decay": 1e-3,
        "temperature": 5.0,
        "train_frozen_bn": True,
        "train_stem": True,
    }
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "paper-steps": {"milestones": [40 / 110, 60 / 110, 80 / 110]},  # main.py:37-39 as written
        "global": {"policy": "global"},
    }
    converters: ClassVar[dict[str, Callable[[Any], Any]]] = {"policy": policy_kind}
    search_space: ClassVar[dict[str, Distribution]] = {
        "lr": LogUniform(1e-3, 0.3),
        "policy_lr": LogUniform(1e-3, 0.1),
    }

    def build(self, ctx: TaskContext) -> nn.Module:
        hp = ctx.hparams
        backbone = pretrained_backbone(ctx)
        blocks = len(backbone.blocks)
        policy = image_policy(ctx.spec, blocks) if hp["policy"] == "image" else GlobalPolicy(blocks)
        model = SpotTuneNet(backbone, policy, hp["temperature"])
        freeze(model.stem)
        freeze(model.blocks)  # the frozen copy: its convs always, its BNs (and the stem's) unless they train
        for module in model.stem.modules():
            if isinstance(module, nn.Conv2d):
                module.requires_grad_(hp["train_stem"])
        for bn in batchnorms(model.stem) + batchnorms(model.blocks):
            bn.requires_grad_(hp["train_frozen_bn"])
        self._frozen_bn_trains = hp["train_frozen_bn"]
        return model

    def train_mode(self, model: nn.Module) -> None:
        model.train()
        if not self._frozen_bn_trains:  # frozen BNs keep the pre-trained statistics too
            for bn in batchnorms(model.stem) + batchnorms(model.blocks):
                bn.eval()

    def param_groups(self, model: nn.Module, phase: Phase, ctx: TaskContext) -> list[dict[str, Any]]:
        hp = ctx.hparams
        decay = hp["weight_decay"]
        if hp["authors_weight_decay"]:
            decay = AUTHORS_WEIGHT_DECAY.get(ctx.task, decay)
        policy = {id(p) for p in model.policy.parameters()}
        network = [p for p in model.parameters() if p.requires_grad and id(p) not in policy]
        return [
            {"params": network, "weight_decay": decay},
            {
                "params": list(model.policy.parameters()),
                "lr": hp["policy_lr"],
                "weight_decay": hp["policy_weight_decay"],
            },
        ]

    def measure(
        self, model: nn.Module, ctx: TaskContext, test_images: Callable[[], Iterator[Tensor]]
    ) -> dict[str, Any]:
        """The fraction of test images each block sends to its fine-tuned copy (one pass of the policy)."""
        tuned, count = torch.zeros(len(model.blocks)), 0
        model.eval()
        with torch.no_grad():
            for batch in test_images():
                tuned += model.choose(batch).sum(0).float()
                count += len(batch)
        fractions = (tuned / max(count, 1)).tolist()
        return {
            "tuned_fraction": [round(f, 4) for f in fractions],
            "mean_tuned_fraction": round(sum(fractions) / len(fractions), 4),
        }

    def report(self, model: nn.Module, ctx: TaskContext) -> dict[str, Any]:
        return {"policy": ctx.hparams["policy"], "blocks": len(model.blocks)}
