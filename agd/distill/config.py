"""Distillation loss configuration: which terms, their weights, which feature layers, which extractor.

The total loss is ``pixel * L1(student, teacher) + gt_pixel * L1(student, ground truth)
+ content * sum_l crit(phi_l(student), phi_l(teacher)) + style * sum_l MSE(G_l(student), G_l(teacher))
+ tv * TV(student)`` (the terms are defined in :mod:`agd.distill.terms`). ``phi`` is the extractor:
``vgg16`` / ``vgg19`` (torchvision layout, user-given weights, layer names such as ``relu2_2`` or
``conv5_4``) or ``teacher`` (the teacher's early layers, taps ``t1``, ``t2``, ``t3``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from agd.distill.vgg import vgg_layer_index
from agd.io import AgdError

EXTRACTORS = ("vgg16", "vgg19", "teacher")
CONTENT_CRITERIA = ("l1", "mse")
WEIGHT_FIELDS = ("pixel", "gt_pixel", "content", "style", "tv")
TEACHER_TAPS = ("t1", "t2", "t3")


def vgg_to_teacher_tap(name: str, task: str = "translation") -> str:
    """Fallback mapping of a VGG layer to a teacher tap.

    Translation teachers, by depth: block 1 -> ``t1``, block 2 -> ``t2``, blocks 3-5 -> ``t3`` (the stem
    and the two downsamplings: about 3 of the CycleGAN teacher's 50 GMACs). SR teachers: every layer ->
    ``t1`` (the teacher's first convolution, 64 learned filters at HR resolution). The deeper SR taps run
    the teacher's dense blocks on the student's output at HR resolution; ``t3`` (a whole RRDB) took 4.9 s of
    a 12 s ``small`` search step on a 2-core CPU, a perceptual term costing more than the network it trains."""
    if task == "sr":
        return "t1"
    digits = [c for c in name if c.isdigit()]
    block = int(digits[0]) if digits else 3
    return TEACHER_TAPS[min(block, 3) - 1]


@dataclass(frozen=True)
class LossConfig:
    """Weights (>= 0, finite) and layers of the distillation loss. A term with weight 0 is not computed.

    ``content_criterion``: ``l1`` (mean absolute difference of feature maps) or ``mse`` (mean squared).
    ``gt_pixel``: weight of an L1 term against ground truth (SR with HR images); ``forward`` then needs ``gt``.
    ``note``: where the numbers come from (kept in the run's record)."""

    name: str = "custom"
    pixel: float = 0.0
    gt_pixel: float = 0.0
    content: float = 0.0
    style: float = 0.0
    tv: float = 0.0
    content_layers: tuple[str, ...] = ()
    style_layers: tuple[str, ...] = ()
    content_criterion: str = "l1"
    extractor: str = "vgg16"
    note: str = ""

    def __post_init__(self) -> None:
        for f in ("content_layers", "style_layers"):
            v = getattr(self, f)
            if isinstance(v, str) or not all(isinstance(n, str) for n in v):
                raise AgdError(f"loss config {self.name}: {f} must be a list of layer names, got {v!r}")
            object.__setattr__(self, f, tuple(v))
        for f in WEIGHT_FIELDS:
            w = getattr(self, f)
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                raise AgdError(f"loss config {self.name}: weight {f}={w!r} must be a finite number >= 0")
            object.__setattr__(self, f, float(w))
        if self.extractor not in EXTRACTORS:
            raise AgdError(f"loss config {self.name}: extractor {self.extractor!r} is not one of "
                           f"{', '.join(EXTRACTORS)}")
        if self.content_criterion not in CONTENT_CRITERIA:
            raise AgdError(f"loss config {self.name}: content_criterion {self.content_criterion!r} is not "
                           f"one of {', '.join(CONTENT_CRITERIA)}")
        if self.content > 0 and not self.content_layers:
            raise AgdError(f"loss config {self.name}: content weight {self.content} needs content_layers")
        if self.style > 0 and not self.style_layers:
            raise AgdError(f"loss config {self.name}: style weight {self.style} needs style_layers")
        if self.extractor == "teacher":
            bad = [n for n in self.content_layers + self.style_layers if n not in TEACHER_TAPS]
            if bad:
                raise AgdError(f"loss config {self.name}: teacher extractor taps are {', '.join(TEACHER_TAPS)}, "
                               f"not {bad}")
        else:

            for n in self.content_layers + self.style_layers:
                vgg_layer_index(self.extractor, n)

    @property
    def uses_features(self) -> bool:
        """Whether a feature extractor is needed (a content or style weight above 0)."""
        return self.content > 0 or self.style > 0

    def feature_layers(self) -> tuple[str, ...]:
        """Layers the active terms need, each once, in first-use order."""
        names = (self.content_layers if self.content > 0 else ()) + (self.style_layers if self.style > 0 else ())
        return tuple(dict.fromkeys(names))

    def weights(self) -> dict[str, float]:
        return {f: getattr(self, f) for f in WEIGHT_FIELDS}

    def with_teacher_extractor(self, task: str = "translation") -> "LossConfig":
        """The same weights on the teacher extractor, VGG layers mapped by :func:`vgg_to_teacher_tap` for the
        teacher's task (duplicates after mapping kept once)."""
        if self.extractor == "teacher":
            return self

        def m(names: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(dict.fromkeys(vgg_to_teacher_tap(n, task) for n in names))

        return replace(self, extractor="teacher", content_layers=m(self.content_layers),
                       style_layers=m(self.style_layers))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["content_layers"] = list(self.content_layers)
        d["style_layers"] = list(self.style_layers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LossConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise AgdError(f"loss config: unknown field(s) {unknown}; known: {', '.join(sorted(known))}")
        return cls(**d)
