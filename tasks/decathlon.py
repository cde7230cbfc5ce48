"""Facts about the ten Visual Decathlon tasks (decathlon-1.0).

Sizes and baseline accuracies from Rebuffi et al. 2017; per-task RGB mean / std (0-1 scale) from the
residual-adapters code; category-id prefixes k from the alphabetical task order of the official files.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskFacts:
    name: str
    short: str  # column label used by the papers' tables
    num_classes: int
    train: int
    val: int
    test: int
    baseline_acc: float  # percent, the "Finetune" baseline that earns 250 points
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    prefix: int  # category id = prefix * 10**7 + class index (1-based)
    flip: bool = True  # residual-adapters recipe: random crop + flip, unless the task reads symbols
    random_crop: bool = True


def _gray(v: float) -> tuple[float, float, float]:
    return (v, v, v)


_FACTS = [
    TaskFacts(
        "imagenet12",
        "ImNet",
        1000,
        1_232_167,
        49_000,
        48_238,
        59.87,
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
        6,
    ),
    TaskFacts(
        "aircraft",
        "Airc",
        100,
        3_334,
        3_333,
        3_333,
        60.34,
        (0.4798, 0.5107, 0.5344),
        (0.2107, 0.2051, 0.2373),
        1,
    ),
    TaskFacts(
        "cifar100",
        "C100",
        100,
        40_000,
        10_000,
        10_000,
        82.12,
        (0.5071, 0.4867, 0.4408),
        (0.2675, 0.2565, 0.2761),
        2,
    ),
    TaskFacts("daimlerpedcls", "DPed", 2, 23_520, 5_880, 19_600, 92.82, _gray(0.4820), _gray(0.2361), 3),
    TaskFacts(
        "dtd", "DTD", 47, 1_880, 1_880, 1_880, 55.53, (0.5270, 0.4703, 0.4240), (0.2523, 0.2409, 0.2499), 4
    ),
    TaskFacts(
        "gtsrb",
        "GTSR",
        43,
        31_367,
        7_842,
        12_630,
        97.53,
        (0.3392, 0.3118, 0.3205),
        (0.2756, 0.2658, 0.2709),
        5,
        flip=False,
        random_crop=False,
    ),
    TaskFacts(
        "vgg-flowers",
        "Flwr",
        102,
        1_020,
        1_020,
        6_149,
        81.41,
        (0.4341, 0.3831, 0.2971),
        (0.2851, 0.2384, 0.2640),
        10,
    ),
    TaskFacts(
        "omniglot",
        "Oglt",
        1623,
        17_853,
        6_492,
        8_115,
        87.69,
        _gray(0.0810),
        _gray(0.2705),
        7,
        flip=False,
        random_crop=False,
    ),
    TaskFacts(
        "svhn",
        "SVHN",
        10,
        47_217,
        26_040,
        26_032,
        96.55,
        (0.4377, 0.4438, 0.4728),
        (0.1980, 0.2010, 0.1970),
        8,
        flip=False,
        random_crop=False,
    ),
    TaskFacts(
        "ucf101",
        "UCF",
        101,
        7_585,
        1_952,
        3_783,
        51.20,
        (0.4995, 0.4988, 0.4998),
        (0.1090, 0.1081, 0.1068),
        9,
    ),
]

DECATHLON: dict[str, TaskFacts] = {f.name: f for f in _FACTS}
OFFICIAL_ORDER: tuple[str, ...] = tuple(f.name for f in _FACTS)
SOURCE_TASK = "imagenet12"
NATIVE_RESOLUTION = 72  # shorter side of every decathlon image; training crops 64 of it
