"""NetTailor's student graph: frozen pre-trained blocks, lean proxies, per-block attention, real pruning.

Nodes: node 0 is the stem's output, node ``i + 1`` the output of block ``i``. Block ``i`` merges its paths
into node ``i + 1``: the pre-trained block (a "main" path, reading node ``i``) and proxies reading the last
``skips`` nodes ``i, i - 1, ...`` (all earlier nodes when dense). Output = ReLU(sum of alpha * path) with
alpha = softmax over the block's kept paths. The main path follows the authors' model of the backbone
(``main_path``): their decathlon ResNet-26 block returns ``relu(y + shortcut)``, so the pre-trained path
enters the merge after its ReLU ("activated": ReLU(alpha_main * ReLU(main) + sum alpha_p * proxy_p));
their torchvision-style blocks return ``y + shortcut`` and only the merge's ReLU follows
("preactivation").

Pruning is surgery: a removed path's module leaves the ``nn.Module`` (state dict, parameters and forward),
a block with no path left has no logits and no output node.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vdd_bench.accounting import count_macs
from vdd_bench.backbones import Backbone
from vdd_bench.errors import VddError

MAIN, PROXY = "main", "proxy"
Path = tuple[str, int]  # (kind, source node)


def preactivation(block: nn.Module, x: Tensor) -> Tensor:
    """A residual block's output before its final ReLU (ResNet-26 and torchvision Basic/Bottleneck)."""
    if hasattr(block, "shortcut"):  # ResNet-26 basic block
        y = F.relu(block.bn1(block.conv1(x)))
        return block.bn2(block.conv2(y)) + block.shortcut(x)
    y = block.relu(block.bn1(block.conv1(x)))
    if hasattr(block, "conv3"):
        y = block.relu(block.bn2(block.conv2(y)))
        y = block.bn3(block.conv3(y))
    else:
        y = block.bn2(block.conv2(y))
    return y + (block.downsample(x) if block.downsample is not None else x)


MAIN_PATHS = ("backbone", "activated", "preactivation")


def main_path_form(option: str, backbone: Backbone) -> str:
    """ "backbone" resolves to the form of the authors' model of that backbone family: "activated" for
    ResNet-26 (wide_nettailor.py), "preactivation" for the torchvision ResNets (nettailor.py)."""
    if option not in MAIN_PATHS:
        raise VddError(f"nettailor main_path must be one of {', '.join(MAIN_PATHS)}, got {option!r}")
    if option != "backbone":
        return option
    return "activated" if backbone.spec.name == "resnet26" else "preactivation"


class MainPath(nn.Module):
    """A frozen pre-trained block, with its final ReLU ("activated") or without it ("preactivation")."""

    def __init__(self, block: nn.Module, activated: bool) -> None:
        super().__init__()
        self.block = block
        self.activated = activated

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x) if self.activated else preactivation(self.block, x)


def proxy_stride(in_size: int, out_size: int) -> int:
    """The pooling stride that takes a node of `in_size` to a block output of `out_size`: the blocks halve
    the resolution with stride-2 convs (an odd size rounds up: 9 -> 5), so the drop is a power of two even
    when the ratio of sizes is not (18 -> 5 is two stride-2 blocks: 4)."""
    stride = 2 ** round(math.log2(in_size / out_size))
    pooled = (in_size + 2 * (stride // 2) - (stride + 1)) // stride + 1 if stride > 1 else in_size
    if pooled != out_size:
        raise VddError(f"nettailor: no proxy pooling takes {in_size} px to {out_size} px: try another size")
    return stride


def make_proxy(in_ch: int, out_ch: int, stride: int, bottleneck: bool) -> nn.Sequential:
    """[max-pool(s+1, s, s//2) when the resolution drops by s] + 1x1 conv + BN, no ReLU; a bottleneck backbone
    gets two 1x1 convs through max(out/32, 16) channels (the authors' code). Convs N(0, 0.01), no bias."""
    layers: list[nn.Module] = []
    if stride > 1:
        layers.append(nn.MaxPool2d(stride + 1, stride, stride // 2))
    if bottleneck:
        mid = max(out_ch // 32, 16)
        layers += [nn.Conv2d(in_ch, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True)]
        in_ch = mid
    layers += [nn.Conv2d(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch)]
    for m in layers:
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0.0, 0.01)
    return nn.Sequential(*layers)


def parse_skips(skips: str) -> int | None:
    """ "3" -> 3 proxies per block; "dense" -> None (a proxy from every earlier node)."""
    if skips == "dense":
        return None
    if skips.isdigit() and int(skips) > 0:
        return int(skips)
    raise VddError(f"nettailor skips must be a positive integer or 'dense', got {skips!r}")


_COMPLEXITY: dict[tuple, dict[tuple[int, Path], float]] = {}


class TailoredNet(nn.Module):
    """The student (before pruning) or a tailored network (after): stem -> merged blocks -> head."""

    def __init__(self, backbone: Backbone, skips: int | None, input_size: int, main_path: str) -> None:
        super().__init__()
        self.stem, self.head, self.classifier = backbone.stem, backbone.head, backbone.classifier
        self.skips = skips
        for module in (self.stem, self.head, *backbone.blocks):
            module.requires_grad_(False)
        shapes = _node_shapes(backbone, input_size)
        bottleneck = hasattr(backbone.blocks[0], "conv3")
        self.main_path = main_path_form(main_path, backbone)
        activated = self.main_path == "activated"
        self.mains = nn.ModuleDict({str(i): MainPath(b, activated) for i, b in enumerate(backbone.blocks)})
        self.proxies = nn.ModuleDict()
        self.logits = nn.ParameterDict()
        self.paths: list[list[Path]] = []
        for i in range(len(backbone.blocks)):
            first = 0 if skips is None else max(0, i + 1 - skips)
            paths: list[Path] = [(MAIN, i)] + [(PROXY, src) for src in range(i, first - 1, -1)]
            out_ch, out_h = shapes[i + 1][0], shapes[i + 1][1]
            for _, src in paths[1:]:
                stride = proxy_stride(shapes[src][1], out_h)
                self.proxies[f"{i}_{src}"] = make_proxy(shapes[src][0], out_ch, stride, bottleneck)
            self.logits[str(i)] = nn.Parameter(torch.tensor([2.0] + [-2.0] * (len(paths) - 1)))
            self.paths.append(paths)
        key = (repr(self.stem), repr(backbone.blocks), skips, input_size, self.main_path)
        if key not in _COMPLEXITY:  # the same for every task: MACs depend on the architecture only
            _COMPLEXITY[key] = self._measure_complexity(shapes, input_size)
        self.complexity = _COMPLEXITY[key]

    def path_module(self, block: int, path: Path) -> nn.Module:
        kind, src = path
        return self.mains[str(block)] if kind == MAIN else self.proxies[f"{block}_{src}"]

    def _measure_complexity(
        self, shapes: list[tuple[int, int, int]], input_size: int
    ) -> dict[tuple[int, Path], float]:
        """MACs of every path from a real forward pass, over the pre-trained network's (stem + blocks)."""
        macs = {
            (i, p): count_macs(self.path_module(i, p), shapes[p[1]][1], shapes[p[1]][0])
            for i, paths in enumerate(self.paths)
            for p in paths
        }
        total = count_macs(self.stem, input_size) + sum(v for (_, p), v in macs.items() if p[0] == MAIN)
        return {key: value / total for key, value in macs.items()}

    def alphas(self, block: int) -> Tensor:
        return torch.softmax(self.logits[str(block)], 0)

    def mix(self, block: int, nodes: list[Tensor | None], detach: bool = False) -> Tensor:
        total: Tensor | None = None
        for alpha, path in zip(self.alphas(block), self.paths[block], strict=True):
            x = nodes[path[1]]
            y = alpha * self.path_module(block, path)(x.detach() if detach else x)
            total = y if total is None else total + y
        return F.relu(total)

    def nodes(self, x: Tensor) -> list[Tensor | None]:
        nodes: list[Tensor | None] = [self.stem(x)]
        for i, paths in enumerate(self.paths):
            nodes.append(self.mix(i, nodes) if paths else None)
        return nodes

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.head(self.nodes(x)[-1]))

    def expected_complexity(self, form: str = "code") -> Tensor:
        """E[C] = sum_ij C_ij (alpha_ij - P_in - P_out), P = prod of (1 - alpha) over a node's paths (or 1).

        P_out: the paths reading the block's output node. P_in, "code": the paths into the block's input node
        for every path of the block (the authors' code); "paper": the paths into each path's own source node.
        """
        alphas = [self.alphas(i) if paths else None for i, paths in enumerate(self.paths)]
        into: list[list[Tensor]] = [[] for _ in range(len(self.paths) + 1)]
        reading: list[list[Tensor]] = [[] for _ in range(len(self.paths) + 1)]
        for i, paths in enumerate(self.paths):
            for alpha, (_, src) in zip(alphas[i] if paths else [], paths, strict=True):
                into[i + 1].append(alpha)
                reading[src].append(alpha)
        clear_in = [_clear(a) for a in into]
        clear_out = [_clear(a) for a in reading]
        total = torch.zeros(())
        for i, paths in enumerate(self.paths):
            for alpha, path in zip(alphas[i] if paths else [], paths, strict=True):
                p_in = clear_in[path[1] if form == "paper" else i]
                total = total + self.complexity[(i, path)] * (alpha - p_in - clear_out[i + 1])
        return total

    def restrict(self, kept: list[list[Path]]) -> None:
        """Surgery: keep only the given paths (a subset of the current ones), removing everything else."""
        if len(kept) != len(self.paths) or not kept[-1]:
            raise VddError("a tailored network needs one path list per block and a path into the last node")
        for i, (old, new) in enumerate(zip(self.paths, kept, strict=True)):
            if not set(new) <= set(old):
                raise VddError(f"block {i}: paths {new} are not a subset of {old}")
            index = [old.index(p) for p in new]
            for path in old:
                if path not in new:
                    if path[0] == MAIN:
                        del self.mains[str(i)]
                    else:
                        del self.proxies[f"{i}_{path[1]}"]
            logits = self.logits[str(i)]
            del self.logits[str(i)]
            if new:
                self.logits[str(i)] = nn.Parameter(logits.detach()[index].clone())
            self.paths[i] = list(new)

    def describe(self) -> list[dict[str, Any]]:
        """Per block: the kept paths with their alphas (JSON-safe)."""
        out = []
        for i, paths in enumerate(self.paths):
            alphas = self.alphas(i).tolist() if paths else []
            out.append(
                {
                    "block": i,
                    "main": any(k == MAIN for k, _ in paths),
                    "proxies": [src for k, src in paths if k == PROXY],
                    "alphas": {_path_name(p): round(a, 4) for p, a in zip(paths, alphas, strict=True)},
                }
            )
        return out


def _clear(alphas: list[Tensor]) -> Tensor:
    return torch.prod(1.0 - torch.stack(alphas)) if alphas else torch.ones(())


def _path_name(path: Path) -> str:
    return "main" if path[0] == MAIN else f"proxy<{path[1]}"


@torch.no_grad()
def _node_shapes(backbone: Backbone, size: int) -> list[tuple[int, int, int]]:
    was_training = backbone.training
    backbone.eval()
    x = backbone.stem(torch.zeros(1, 3, size, size))
    shapes = [tuple(x.shape[1:])]
    for block in backbone.blocks:
        x = block(x)
        shapes.append(tuple(x.shape[1:]))
    backbone.train(was_training)
    return shapes


KEEP_ONE_PATH = ("when_disconnected", "always", "never")


def choose_paths(
    model: TailoredNet, remove_blocks: int, threshold: float, keep_one_path: str = "when_disconnected"
) -> tuple[list[list[Path]], list[int]]:
    """The paths kept after pruning, and the blocks that kept their strongest proxy (see below).

    Proxies with alpha <= threshold and the `remove_blocks` pre-trained blocks of smallest alpha go, then
    input and output exclusion (`exclude`). A block left with no path loses its node, as in the authors'
    code (its output is None there and the paths reading it are skipped). `keep_one_path`: "never" is
    exactly that, and raises when no path reaches the last node (the code would crash); "always" keeps the
    strongest proxy of every block left with no path; "when_disconnected" (the default) behaves as "never"
    and falls back to "always" only when the network would otherwise be disconnected."""
    if keep_one_path not in KEEP_ONE_PATH:
        raise VddError(f"nettailor keep_one_path must be one of {', '.join(KEEP_ONE_PATH)}")
    with torch.no_grad():
        alphas = [model.alphas(i).tolist() if paths else [] for i, paths in enumerate(model.paths)]
    mains = [(alphas[i][p.index((MAIN, i))], i) for i, p in enumerate(model.paths) if (MAIN, i) in p]
    dropped = {i for _, i in sorted(mains)[:remove_blocks]}
    kept, emptied = [], []
    for i, (paths, block_alphas) in enumerate(zip(model.paths, alphas, strict=True)):
        keep = [
            p
            for p, a in zip(paths, block_alphas, strict=True)
            if (p[0] == MAIN and i not in dropped) or (p[0] == PROXY and a > threshold)
        ]
        proxies = [(a, p) for p, a in zip(paths, block_alphas, strict=True) if p[0] == PROXY]
        kept.append(keep)
        emptied.append(max(proxies)[1] if not keep and proxies else None)
    if keep_one_path != "always":
        try:
            return exclude(kept), []
        except VddError:
            if keep_one_path == "never":
                raise
    rescued = [i for i, proxy in enumerate(emptied) if proxy is not None]
    for i in rescued:
        kept[i] = [emptied[i]]
    return exclude(kept), rescued


def exclude(paths: list[list[Path]]) -> list[list[Path]]:
    """Input exclusion (a path from a node with no input goes) then output exclusion (the paths into a node
    nobody reads go); the two passes reach the fixed point. Raises when the head loses its input."""
    alive = [True]
    kept = []
    for block_paths in paths:
        block_kept = [p for p in block_paths if alive[p[1]]]
        kept.append(block_kept)
        alive.append(bool(block_kept))
    needed = [False] * len(kept) + [True]
    for i in range(len(kept) - 1, -1, -1):
        if not needed[i + 1]:
            kept[i] = []
        for _, src in kept[i]:
            needed[src] = True
    if not kept[-1]:
        raise VddError("pruning disconnected the network: no path reaches the last block's output")
    return kept


def paths_to_json(paths: list[list[Path]]) -> list[list[list[Any]]]:
    return [[[kind, src] for kind, src in block] for block in paths]


def paths_from_json(data: list[list[list[Any]]]) -> list[list[Path]]:
    return [[(str(kind), int(src)) for kind, src in block] for block in data]
