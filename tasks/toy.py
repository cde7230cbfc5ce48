"""Deterministic toy decathlon: ten small procedural image tasks in the official decathlon-1.0 format.

The toy is the project's embedded default benchmark: it needs no download, is generated in a few seconds
and is read by the same reader as the real decathlon, as it has the same layout:
``annotations/<task>_{train,val,test_stripped,test}.json`` plus ``data/<task>/<split>/[<class>/]<n>.jpg``.
Images are square 36 px JPEGs, the toy's "shorter side" (the decathlon's is 72 px); training crops 32 px.

``source`` plays imagenet12: 40 classes mixing the visual factors the targets use (shape x colour, stripe
orientation x frequency, textures, stroke glyphs), so a small network pre-trained on it learns features
that transfer. The nine targets are graded from nearly trivial to hard; ``TOY_TASKS`` lists them after the
source from easiest to hardest, as measured by fine-tuning a tiny CNN pre-trained on ``source``:

==============  =======  ============  =========================================================
task            classes  train/val/te  what it is, and why it is easy or hard
==============  =======  ============  =========================================================
source          40       2000/240/240  the pre-training task (imagenet12 analogue)
colors          4        160/100/100   dominant background hue; separable by mean colour alone
stripes         8        240/96/104    orientation in 22.5 deg steps; the source has 45 deg steps
pedestrians     2        240/100/100   gray: stick figure vs upright clutter in noise (daimler)
shapes          6        240/96/102    shape of one object of any colour, size and place
textures        10       250/100/100   texture families under noise; four absent from the source
quadrants       4        240/100/100   position of a small object: not a source factor (pooled
                                       frozen features discard it, fine-tuning can recover it)
digits          10       300/100/100   seven-segment digits with neighbour distractors (svhn)
signs           24       240/96/96     sign outline x rim colour x small inner symbol (gtsrb)
glyphs          30       240/90/120    gray: novel stroke characters, 8 examples each (omniglot)
==============  =======  ============  =========================================================

``generate_toy`` writes everything, then ``TOY_COMPLETE`` (the seed and the toy's version) last, so a
half-written folder is detected and regenerated. Same seed, same bytes: every task draws from its own
numpy Generator seeded with (seed, task prefix), and PIL's JPEG encoder is deterministic.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

TOY_RESOLUTION = 36
TOY_SOURCE = "source"
TOY_INFO_DESCRIPTION = "vdd-bench toy decathlon"
TOY_VERSION = "1"
TOY_MARKER = "TOY_COMPLETE"

_SPLITS = ("train", "val", "test")
_SPLIT_OFFSET = {"train": 0, "val": 100_000, "test": 200_000}
_JPEG_QUALITY = 95

Array = np.ndarray
Rng = np.random.Generator

# ----------------------------------------------------------------------------------------------------------
# Drawing primitives. Images are float HxWx3 arrays in [0, 1]; shapes are signed distance fields (pixels,
# negative inside) turned into anti-aliased coverage by _cover.

_N = TOY_RESOLUTION
_YY, _XX = np.mgrid[0:_N, 0:_N].astype(np.float64) + 0.5
_C = _N / 2

_COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.16, 0.16),
    "green": (0.16, 0.70, 0.24),
    "blue": (0.16, 0.31, 0.86),
    "yellow": (0.90, 0.82, 0.16),
    "white": (0.95, 0.95, 0.95),
    "black": (0.06, 0.06, 0.06),
}
_SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond")


def _cover(sdf: Array) -> Array:
    return np.clip(0.5 - sdf, 0.0, 1.0)


def _paint(img: Array, alpha: Array, color: Array | tuple[float, ...]) -> Array:
    a = alpha[..., None]
    return img * (1.0 - a) + a * np.asarray(color, dtype=np.float64)


def _rotated(cx: float, cy: float, angle: float) -> tuple[Array, Array]:
    c, s = np.cos(angle), np.sin(angle)
    x, y = _XX - cx, _YY - cy
    return c * x + s * y, -s * x + c * y


def _shape_sdf(kind: str, cx: float, cy: float, r: float, angle: float) -> Array:
    u, v = _rotated(cx, cy, angle)
    if kind == "circle":
        return np.hypot(u, v) - r
    if kind == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 0.82 * r
    if kind == "diamond":
        return (np.abs(u) + np.abs(v)) / np.sqrt(2.0) - 0.75 * r
    if kind == "triangle":
        normals = [(np.sin(t), -np.cos(t)) for t in (0.0, 2 * np.pi / 3, 4 * np.pi / 3)]
        return np.max([nx * u + ny * v for nx, ny in normals], axis=0) - 0.55 * r
    if kind == "cross":
        arm = 0.3 * r
        bar1 = np.maximum(np.abs(u) - r, np.abs(v) - arm)
        bar2 = np.maximum(np.abs(v) - r, np.abs(u) - arm)
        return np.minimum(bar1, bar2)
    if kind == "ring":
        return np.abs(np.hypot(u, v) - 0.72 * r) - 0.28 * r
    raise ValueError(kind)


def _segments_dist(segments: Array) -> Array:
    """Distance of every pixel centre to the nearest of ``segments`` (S x 2 x 2, pixel coordinates)."""
    a, b = segments[:, 0, :], segments[:, 1, :]
    d = b - a
    px = _XX[None] - a[:, 0, None, None]
    py = _YY[None] - a[:, 1, None, None]
    length2 = np.maximum((d**2).sum(axis=1), 1e-9)[:, None, None]
    t = np.clip((px * d[:, 0, None, None] + py * d[:, 1, None, None]) / length2, 0.0, 1.0)
    return np.hypot(px - t * d[:, 0, None, None], py - t * d[:, 1, None, None]).min(axis=0)


@cache
def _upsample_matrix(cells: int) -> Array:
    """Bilinear interpolation weights from ``cells`` samples to _N pixels (rows sum to 1)."""
    pos = np.clip((np.arange(_N) + 0.5) * cells / _N - 0.5, 0.0, cells - 1.0)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, cells - 1)
    w = pos - lo
    m = np.zeros((_N, cells))
    m[np.arange(_N), lo] += 1.0 - w
    m[np.arange(_N), hi] += w
    return m


def _smooth_noise(rng: Rng, cells: int, channels: int = 3) -> Array:
    m = _upsample_matrix(cells)
    return (m @ rng.random((channels, cells, cells)) @ m.T).transpose(1, 2, 0)


def _background(rng: Rng, base: Array | tuple[float, ...], contrast: float) -> Array:
    """Low-frequency coloured clutter around ``base``."""
    return np.clip(np.asarray(base) + contrast * (_smooth_noise(rng, int(rng.integers(3, 7))) - 0.5), 0, 1)


def _random_color(rng: Rng) -> Array:
    return rng.uniform(0.05, 0.95, 3)


def _jitter(rng: Rng, color: tuple[float, ...], amount: float = 0.08) -> Array:
    return np.clip(np.asarray(color) + rng.normal(0.0, amount, 3), 0.0, 1.0)


def _noisy(rng: Rng, img: Array, sigma: float) -> Array:
    return np.clip(img + rng.normal(0.0, sigma, img.shape), 0.0, 1.0)


def _gray(level: Array | float) -> Array:
    return np.repeat(np.asarray(level, dtype=np.float64)[..., None], 3, axis=-1)


def _stripes(theta: float, period: float, phase: float, sharp: float = 1.5) -> Array:
    proj = _XX * np.cos(theta) + _YY * np.sin(theta)
    return np.clip(0.5 + sharp * np.sin(2 * np.pi * proj / period + phase), 0.0, 1.0)


def _two_tone(rng: Rng, pattern: Array) -> Array:
    """Map a [0, 1] pattern onto two random, clearly different colours."""
    c1 = _random_color(rng)
    c2 = np.clip(1.0 - c1 + rng.normal(0, 0.1, 3), 0, 1)
    return c1 * (1 - pattern[..., None]) + c2 * pattern[..., None]


def _texture(rng: Rng, kind: str) -> Array:
    """A [0, 1] texture pattern of one family, random scale / orientation / phase."""
    theta = rng.uniform(0, np.pi)
    period = rng.uniform(5.0, 8.0)
    if kind == "checker":
        u, v = _rotated(_C, _C, theta)
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float64)
    if kind == "dots":
        u, v = _rotated(_C + rng.uniform(0, period), _C, theta)
        uu, vv = (u % period) - period / 2, (v % period) - period / 2
        return _cover(np.hypot(uu, vv) - period * 0.28)
    if kind == "crosshatch":
        return np.maximum(_stripes(theta, period, 0, 3), _stripes(theta + np.pi / 2, period, 0, 3))
    if kind == "blotches":
        return (_smooth_noise(rng, 7, 1)[..., 0] > 0.5).astype(np.float64)
    if kind == "rings":
        r = np.hypot(_XX - rng.uniform(8, 28), _YY - rng.uniform(8, 28))
        return np.clip(0.5 + 1.5 * np.sin(2 * np.pi * r / period), 0, 1)
    if kind == "grain":
        return (_smooth_noise(rng, 18, 1)[..., 0] > 0.5).astype(np.float64)
    if kind == "zigzag":
        u, v = _rotated(_C, _C, theta)
        tri = np.abs((u / period) % 2 - 1) * period
        return np.clip(0.5 + 1.5 * np.sin(2 * np.pi * (v + tri) / period), 0, 1)
    if kind == "bricks":
        row = np.floor(_YY / period)
        x = _XX + (row % 2) * period
        mortar = np.minimum(_YY % period, (x % (2 * period)))
        return (mortar > 1.2).astype(np.float64)
    if kind == "scales":
        row = np.floor(_YY / period)
        x = (_XX + (row % 2) * period / 2) % period - period / 2
        y = _YY % period
        return _cover(np.abs(np.hypot(x, y) - period * 0.6) - 0.8)
    if kind == "waves":
        u, v = _rotated(_C, _C, theta)
        return np.clip(0.5 + 1.5 * np.sin(2 * np.pi * (u + 2.5 * np.sin(2 * np.pi * v / 14)) / period), 0, 1)
    raise ValueError(kind)


def _glyph_prototypes(rng: Rng, count: int) -> list[Array]:
    """Random 'characters': 2-3 polyline strokes with 2-3 points each, in unit coordinates [-1, 1]^2."""
    protos = []
    for _ in range(count):
        strokes = []
        for _ in range(int(rng.integers(2, 4))):
            pts = rng.uniform(-1, 1, (int(rng.integers(2, 4)), 2))
            strokes.extend(np.stack([pts[:-1], pts[1:]], axis=1))
        protos.append(np.asarray(strokes))
    return protos


def _glyph_dist(rng: Rng, proto: Array, size: float, wobble: float) -> Array:
    """Distance field of one hand-drawn instance: jittered points, small rotation / scale / shift."""
    segs = proto + rng.normal(0, wobble, proto.shape)
    angle = rng.uniform(-0.2, 0.2)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    segs = segs @ rot.T * size * rng.uniform(0.85, 1.1) + _C + rng.uniform(-2, 2, 2)
    return _segments_dist(segs)


# Seven-segment digits in unit coordinates (x in [-0.5, 0.5], y in [-1, 1], y down).
_SEGMENTS = {
    "a": ((-0.5, -1), (0.5, -1)),
    "b": ((0.5, -1), (0.5, 0)),
    "c": ((0.5, 0), (0.5, 1)),
    "d": ((-0.5, 1), (0.5, 1)),
    "e": ((-0.5, 0), (-0.5, 1)),
    "f": ((-0.5, -1), (-0.5, 0)),
    "g": ((-0.5, 0), (0.5, 0)),
}
_DIGIT_SEGMENTS = ("abcdef", "bc", "abged", "abgcd", "fgbc", "afgcd", "afgedc", "abc", "abcdefg", "abcdfg")


def _digit_segments(digit: int, cx: float, cy: float, height: float, slant: float) -> Array:
    segs = np.array([_SEGMENTS[s] for s in _DIGIT_SEGMENTS[digit]], dtype=np.float64) * height / 2
    segs[..., 0] -= slant * segs[..., 1]
    return segs + (cx, cy)


# ----------------------------------------------------------------------------------------------------------
# Tasks. Each draw function maps (rng, 0-based class index) to one float HxWx3 image in [0, 1].

Drawer = Callable[[Rng, int], Array]


@dataclass(frozen=True)
class _Task:
    name: str
    classes: tuple[str, ...]
    per_class: tuple[int, int, int]  # train, val, test images per class
    gray: bool
    description: str
    make_drawer: Callable[[Rng], Drawer]  # may draw class prototypes from the task's Generator first


_SOURCE_COLORS = ("red", "blue", "yellow")
_SOURCE_TEXTURES = ("checker", "dots", "crosshatch", "blotches", "rings", "grain")
_SOURCE_STRIPES = [(o, p) for o in (0, 45, 90, 135) for p in ("fine", "coarse")]
_SOURCE_GLYPHS = 8
_SOURCE_CLASSES = (
    tuple(f"{c}-{s}" for s in _SHAPES for c in _SOURCE_COLORS)
    + tuple(f"stripes-{o}deg-{p}" for o, p in _SOURCE_STRIPES)
    + tuple(f"texture-{t}" for t in _SOURCE_TEXTURES)
    + tuple(f"glyph-{i + 1}" for i in range(_SOURCE_GLYPHS))
)


def _source(rng: Rng) -> Drawer:
    glyphs = _glyph_prototypes(rng, _SOURCE_GLYPHS)
    n_shape = len(_SHAPES) * len(_SOURCE_COLORS)

    def draw(rng: Rng, cls: int) -> Array:
        img = _background(rng, rng.uniform(0.3, 0.7, 3), 0.5)
        if cls < n_shape:
            shape, color = _SHAPES[cls // len(_SOURCE_COLORS)], _SOURCE_COLORS[cls % len(_SOURCE_COLORS)]
            cx, cy = _C + rng.uniform(-5, 5, 2)
            sdf = _shape_sdf(shape, cx, cy, rng.uniform(7, 12), rng.uniform(-0.3, 0.3))
            img = _paint(img, _cover(sdf), _jitter(rng, _COLORS[color]))
        elif cls < n_shape + len(_SOURCE_STRIPES):
            orient, period = _SOURCE_STRIPES[cls - n_shape]
            theta = np.deg2rad(orient + rng.uniform(-6, 6))
            pattern = _stripes(
                theta, rng.uniform(4, 5.5) if period == "fine" else rng.uniform(8, 11), 7 * rng.random()
            )
            img = 0.3 * img + 0.7 * _two_tone(rng, pattern)
        elif cls < n_shape + len(_SOURCE_STRIPES) + len(_SOURCE_TEXTURES):
            pattern = _texture(rng, _SOURCE_TEXTURES[cls - n_shape - len(_SOURCE_STRIPES)])
            img = 0.3 * img + 0.7 * _two_tone(rng, pattern)
        else:
            proto = glyphs[cls - n_shape - len(_SOURCE_STRIPES) - len(_SOURCE_TEXTURES)]
            dist = _glyph_dist(rng, proto, 10.0, 0.06)
            img = _paint(img, _cover(dist - rng.uniform(0.8, 1.3)), _random_color(rng))
        return _noisy(rng, img, 0.04)

    return draw


_COLOR_CLASSES = ("red", "green", "blue", "yellow")


def _colors(rng: Rng) -> Drawer:
    def draw(rng: Rng, cls: int) -> Array:
        img = _background(rng, _jitter(rng, _COLORS[_COLOR_CLASSES[cls]], 0.06), 0.25)
        for _ in range(int(rng.integers(1, 4))):
            sdf = _shape_sdf(
                str(rng.choice(_SHAPES)), *rng.uniform(6, 30, 2), rng.uniform(3, 6), rng.uniform(0, 6)
            )
            img = _paint(img, _cover(sdf), _random_color(rng))
        return _noisy(rng, img, 0.05)

    return draw


def _shapes(rng: Rng) -> Drawer:
    def draw(rng: Rng, cls: int) -> Array:
        base = rng.uniform(0.2, 0.8, 3)
        img = _background(rng, base, 0.35)
        ink = np.clip(1.0 - base + rng.normal(0, 0.15, 3), 0, 1)
        cx, cy = _C + rng.uniform(-5, 5, 2)
        sdf = _shape_sdf(_SHAPES[cls], cx, cy, rng.uniform(7, 12), rng.uniform(-0.35, 0.35))
        return _noisy(rng, _paint(img, _cover(sdf), ink), 0.05)

    return draw


_STRIPE_ANGLES = tuple(22.5 * i for i in range(8))


def _stripes_task(rng: Rng) -> Drawer:
    def draw(rng: Rng, cls: int) -> Array:
        theta = np.deg2rad(_STRIPE_ANGLES[cls] + rng.uniform(-7, 7))
        pattern = _stripes(theta, rng.uniform(4, 11), 7 * rng.random(), rng.uniform(0.6, 2.0))
        img = 0.4 * _background(rng, rng.uniform(0.3, 0.7, 3), 0.6) + 0.6 * _two_tone(rng, pattern)
        return _noisy(rng, img, 0.12)

    return draw


_TEXTURE_CLASSES = (
    "checker",
    "dots",
    "crosshatch",
    "blotches",
    "rings",
    "zigzag",
    "bricks",
    "scales",
    "waves",
    "grain",
)


def _textures(rng: Rng) -> Drawer:
    def draw(rng: Rng, cls: int) -> Array:
        pattern = _texture(rng, _TEXTURE_CLASSES[cls])
        img = 0.45 * _background(rng, rng.uniform(0.3, 0.7, 3), 0.7) + 0.55 * _two_tone(rng, pattern)
        return _noisy(rng, img, 0.1)

    return draw


def _digits(rng: Rng) -> Drawer:
    def draw(rng: Rng, cls: int) -> Array:
        bg = _random_color(rng)
        ink = np.clip(1.0 - bg + rng.normal(0, 0.15, 3), 0, 1)
        img = _background(rng, bg, 0.3)
        height, slant = rng.uniform(18, 24), rng.uniform(-0.1, 0.25)
        cx, cy = _C + rng.uniform(-2, 2), _C + rng.uniform(-2, 2)
        gap = height * rng.uniform(0.85, 1.0)
        segs = [_digit_segments(cls, cx, cy, height, slant)]
        for side in (-1, 1):  # neighbouring house-number digits, partly cut off as in SVHN crops
            if rng.random() < 0.5:
                segs.append(_digit_segments(int(rng.integers(10)), cx + side * gap, cy, height, slant))
        dist = _segments_dist(np.concatenate(segs))
        img = _paint(img, _cover(dist - rng.uniform(1.0, 1.8)), ink)
        return _noisy(rng, img, 0.06)

    return draw


def _pedestrians(rng: Rng) -> Drawer:
    def clutter(rng: Rng, level: float) -> Array:
        """Upright bars and blobs, as in the background crops of the Daimler set."""
        count = int(rng.integers(2, 5))
        segs = np.stack([rng.uniform(4, 32, (count, 2)), rng.uniform(4, 32, (count, 2))], axis=1)
        segs[:count, 1, 0] = segs[:count, 0, 0] + rng.uniform(-3, 3, count)  # mostly vertical
        return _cover(_segments_dist(segs) - rng.uniform(0.8, 2.5)) * level

    def draw(rng: Rng, cls: int) -> Array:
        base = rng.uniform(0.3, 0.7)
        level = rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 0.45)
        img = base + 0.4 * (_smooth_noise(rng, int(rng.integers(3, 7)), 1)[..., 0] - 0.5)
        img = img + clutter(rng, level * rng.uniform(0.5, 1.0))
        if cls == 1:  # a stick figure: head, torso, two legs, two arms
            cx, top, h = _C + rng.uniform(-3, 3), rng.uniform(4, 8), rng.uniform(22, 27)
            head = _cover(np.hypot(_XX - cx, _YY - top - 0.1 * h) - 0.1 * h)
            neck, hip, foot = top + 0.2 * h, top + 0.6 * h, top + h
            stride, arm = rng.uniform(1.5, 4.5), rng.uniform(2, 4)
            limbs = np.array(
                [
                    [[cx, neck], [cx, hip]],
                    [[cx, hip], [cx - stride, foot]],
                    [[cx, hip], [cx + stride, foot]],
                    [[cx, neck + 1], [cx - arm, hip - 1]],
                    [[cx, neck + 1], [cx + arm, hip - 1]],
                ]
            )
            body = _cover(_segments_dist(limbs) - rng.uniform(1.0, 1.8))
            img = img + level * np.maximum(head, body)
        return _gray(_noisy(rng, np.clip(img, 0, 1), 0.1))

    return draw


_QUADRANTS = ("top-left", "top-right", "bottom-left", "bottom-right")


def _quadrants(rng: Rng) -> Drawer:
    def draw(rng: Rng, cls: int) -> Array:
        img = _background(rng, rng.uniform(0.2, 0.8, 3), 0.35)
        cx = (9.0 if cls % 2 == 0 else 27.0) + rng.uniform(-3, 3)
        cy = (9.0 if cls < 2 else 27.0) + rng.uniform(-3, 3)
        sdf = _shape_sdf(str(rng.choice(_SHAPES)), cx, cy, rng.uniform(5, 7.5), rng.uniform(0, 6))
        return _noisy(rng, _paint(img, _cover(sdf), _random_color(rng)), 0.06)

    return draw


_SIGN_SHAPES = ("circle", "triangle", "diamond", "square")
_SIGN_RIMS = ("red", "blue")
_SIGN_SYMBOLS = ("bar", "pillar", "dot")
_SIGN_CLASSES = tuple(f"{r}-{s}-{m}" for s in _SIGN_SHAPES for r in _SIGN_RIMS for m in _SIGN_SYMBOLS)


def _signs(rng: Rng) -> Drawer:
    def draw(rng: Rng, cls: int) -> Array:
        shape = _SIGN_SHAPES[cls // 6]
        rim = _COLORS[_SIGN_RIMS[(cls // 3) % 2]]
        symbol = _SIGN_SYMBOLS[cls % 3]
        img = _background(rng, rng.uniform(0.2, 0.8, 3), 0.7)
        cx, cy = _C + rng.uniform(-3, 3, 2)
        r, angle = rng.uniform(10, 14), rng.uniform(-0.15, 0.15)
        img = _paint(img, _cover(_shape_sdf(shape, cx, cy, r, angle)), _jitter(rng, rim, 0.1))
        img = _paint(
            img, _cover(_shape_sdf(shape, cx, cy, 0.68 * r, angle)), _jitter(rng, _COLORS["white"], 0.1)
        )
        u, v = _rotated(cx, cy + (0.12 * r if shape == "triangle" else 0.0), angle)
        half = 0.22 * r
        if symbol == "bar":
            sym = np.maximum(np.abs(u) - half, np.abs(v) - 0.35 * half)
        elif symbol == "pillar":
            sym = np.maximum(np.abs(v) - half, np.abs(u) - 0.35 * half)
        else:
            sym = np.hypot(u, v) - 0.55 * half
        img = _paint(img, _cover(sym), _jitter(rng, _COLORS["black"], 0.05))
        return _noisy(rng, img * rng.uniform(0.45, 1.1), 0.07)

    return draw


def _glyphs(rng: Rng) -> Drawer:
    protos = _glyph_prototypes(rng, 30)

    def draw(rng: Rng, cls: int) -> Array:
        ink = _cover(_glyph_dist(rng, protos[cls], 11.0, 0.17) - rng.uniform(0.5, 1.4))
        return _gray(_noisy(rng, 0.05 + 0.9 * ink, 0.1))  # white strokes on black, as omniglot's mean .08

    return draw


_TASKS: tuple[_Task, ...] = (
    _Task(
        "source",
        _SOURCE_CLASSES,
        (50, 6, 6),
        False,
        "pre-training task (imagenet12 analogue): 18 shape x colour, 8 stripe orientation x frequency, "
        "6 texture and 8 stroke-glyph classes on coloured clutter",
        _source,
    ),
    _Task(
        "colors",
        _COLOR_CLASSES,
        (40, 25, 25),
        False,
        "easy: dominant background hue under a few random shapes; the mean colour alone separates it",
        _colors,
    ),
    _Task(
        "stripes",
        tuple(f"{a:g}deg" for a in _STRIPE_ANGLES),
        (30, 12, 13),
        False,
        "easy: stripe orientation in 22.5 deg steps at random frequency; the source only has 45 deg steps",
        _stripes_task,
    ),
    _Task(
        "pedestrians",
        ("non-pedestrian", "pedestrian"),
        (120, 50, 50),
        True,
        "medium (daimler analogue, grayscale): stick figure vs upright bars and blobs, low contrast, noise",
        _pedestrians,
    ),
    _Task(
        "shapes",
        _SHAPES,
        (40, 16, 17),
        False,
        "medium: which of six shapes, in any colour, size and place on clutter; shape is a source factor",
        _shapes,
    ),
    _Task(
        "textures",
        _TEXTURE_CLASSES,
        (25, 10, 10),
        False,
        "medium (dtd analogue): ten texture families, random colours, noise; four not in the source",
        _textures,
    ),
    _Task(
        "quadrants",
        _QUADRANTS,
        (60, 25, 25),
        False,
        "hard for frozen features: where a small random shape sits; position is no source factor and "
        "global pooling discards it, so fine-tuning must learn it",
        _quadrants,
    ),
    _Task(
        "digits",
        tuple(str(d) for d in range(10)),
        (30, 10, 10),
        False,
        "hard (svhn analogue): the centre seven-segment digit; cut-off neighbour digits distract",
        _digits,
    ),
    _Task(
        "signs",
        _SIGN_CLASSES,
        (10, 4, 4),
        False,
        "hard (gtsrb analogue): outline x rim colour x a small inner symbol, fine-grained, with brightness "
        "changes and 10 examples per class",
        _signs,
    ),
    _Task(
        "glyphs",
        tuple(f"character{i + 1:02d}" for i in range(30)),
        (8, 3, 4),
        True,
        "hard (omniglot analogue, grayscale): 30 novel stroke characters, 8 hand-drawn examples each",
        _glyphs,
    ),
)

TOY_TASKS: tuple[str, ...] = tuple(t.name for t in _TASKS)
TOY_DESCRIPTIONS: dict[str, str] = {t.name: t.description for t in _TASKS}
TOY_PREFIX: dict[str, int] = {name: k for k, name in enumerate(sorted(TOY_TASKS), start=1)}
TOY_SIZES: dict[str, tuple[int, ...]] = {
    t.name: tuple(n * len(t.classes) for n in t.per_class) for t in _TASKS
}

# ----------------------------------------------------------------------------------------------------------
# Writing.


def _to_pil(img: Array, gray: bool) -> Image.Image:
    arr = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(arr[..., 0] if gray else arr)


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj))


def _write_task(root: Path, task: _Task, seed: int) -> None:
    k = TOY_PREFIX[task.name]
    rng = np.random.default_rng([seed, k])
    draw = task.make_drawer(rng)
    info = {"description": TOY_INFO_DESCRIPTION, "version": TOY_VERSION, "task": task.name, "seed": seed}
    categories = [
        {"id": k * 10**7 + c + 1, "name": name, "supercategory": task.name}
        for c, name in enumerate(task.classes)
    ]
    index = 0  # the running index continues across splits, as in the decathlon
    for split, n_per_class in zip(_SPLITS, task.per_class, strict=True):
        labels = np.repeat(np.arange(len(task.classes)), n_per_class)
        if split == "test":  # shuffled, so that the stripped file's order does not give the labels away
            labels = rng.permutation(labels)
        images, annotations = [], []
        for cls in labels:
            index += 1
            image_id = k * 10**7 + _SPLIT_OFFSET[split] + index
            folder = f"data/{task.name}/{split}" + ("" if split == "test" else f"/{cls + 1:04d}")
            file_name = f"{folder}/{index:06d}.jpg"
            path = root / file_name
            path.parent.mkdir(parents=True, exist_ok=True)
            _to_pil(draw(rng, int(cls)), task.gray).save(path, format="JPEG", quality=_JPEG_QUALITY)
            images.append({"id": image_id, "width": _N, "height": _N, "file_name": file_name})
            annotations.append(
                {
                    "id": image_id,
                    "image_id": image_id,
                    "category_id": k * 10**7 + int(cls) + 1,
                    "segmentation": [],
                    "area": 0,
                    "bbox": [],
                    "iscrowd": 0,
                }
            )
        doc = {
            "info": info,
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        name = "test" if split == "test" else split
        _write_json(root / "annotations" / f"{task.name}_{name}.json", doc)
        if split == "test":
            stripped = {key: value for key, value in doc.items() if key != "annotations"}
            _write_json(root / "annotations" / f"{task.name}_test_stripped.json", stripped)


def _marker_text(seed: int) -> str:
    return json.dumps({"seed": seed, "version": TOY_VERSION}) + "\n"


def generate_toy(root: Path, seed: int = 0) -> Path:
    """Write the toy decathlon into ``root`` (decathlon-1.0 layout) and return ``root``.

    Returns at once when ``root/TOY_COMPLETE`` records the same seed and version. Otherwise whatever an
    earlier, possibly interrupted, run left (``annotations/``, ``data/``, the marker) is deleted first;
    other files in ``root`` are left alone, so a mistaken ``root`` never loses unrelated data.
    """
    root = Path(root)
    marker = root / TOY_MARKER
    if marker.is_file() and marker.read_text() == _marker_text(seed):
        return root
    marker.unlink(missing_ok=True)
    for sub in ("annotations", "data"):
        if (root / sub).exists():
            shutil.rmtree(root / sub)
    (root / "annotations").mkdir(parents=True)
    for task in _TASKS:
        _write_task(root, task, seed)
    marker.write_text(_marker_text(seed))
    return root
