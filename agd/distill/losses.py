""":class:`DistillLoss`: the weighted distillation loss of a student's output against the teacher's.

Images are RGB in [0, 1], (N, 3, H, W). The teacher side (its output and its features) never receives
gradients: ``teacher_out`` is detached and its features are computed under ``torch.no_grad``; the
extractor is frozen; gradients flow only into ``student``.

Extractor choice: ``cfg.extractor`` ``vgg16`` / ``vgg19`` needs ``vgg_weights`` (torchvision's file, never
downloaded). Without it, and with a teacher given, the feature terms fall back to the teacher's early
layers (:class:`agd.distill.features.TeacherFeatures`), VGG layers mapped to taps by depth
(:func:`agd.distill.config.vgg_to_teacher_tap`: SR teachers' cheap first layer only) and the weights kept; ``describe()`` records the fallback
and why. With neither, an AgdError names the expected file. ``allow_fallback=False`` makes the missing
file an error even with a teacher.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from agd.distill.config import LossConfig
from agd.distill.features import TeacherFeatures, has_taps
from agd.distill.presets import get_preset
from agd.distill.terms import content_distance, pixel_l1, style_distance, total_variation
from agd.distill.vgg import VGG_FILES, VGGWeights, load_vgg, vgg_layer_index
from agd.io import AgdError
from agd.teachers.registry import Teacher

CONVENTIONS = {
    "images": "RGB in [0, 1], (N, 3, H, W); VGG inputs normalised with ImageNet mean/std, teacher taps see "
              "the teacher's own input range",
    "pixel": "mean |student - teacher|",
    "gt_pixel": "mean |student - ground truth|",
    "content": "sum over content layers of mean |dF| (l1) or mean dF^2 (mse)",
    "style": "sum over style layers of mean over (N, C, C) of (G_s - G_t)^2, G = F F^T / (C * H * W)",
    "tv": "mean |dx| + mean |dy| of the student output",
}


class DistillLoss(nn.Module):
    """``forward(student, teacher_out, gt=None) -> (total, terms)``; ``terms`` maps each active term
    (``pixel``, ``gt_pixel``, ``content``, ``style``, ``tv``) to its unweighted value and ``total`` is
    the weighted sum. ``cfg`` is a :class:`LossConfig` or a preset name (:data:`LOSS_PRESETS`)."""

    def __init__(self, cfg: LossConfig | str, *, teacher: Teacher | None = None,
                 vgg_weights: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                 allow_fallback: bool = True) -> None:
        super().__init__()
        cfg = get_preset(cfg) if isinstance(cfg, str) else cfg
        self.requested = cfg
        self.fallback: str | None = None
        self.vgg_record: VGGWeights | None = None
        self.teacher_identity = teacher.identity if teacher is not None else None
        self.extractor: nn.Module | None = None
        if cfg.uses_features and cfg.extractor != "teacher":
            arch, expected = cfg.extractor, VGG_FILES[cfg.extractor]
            if vgg_weights is not None:
                layers = cfg.feature_layers()
                deepest = max(layers, key=lambda n: vgg_layer_index(arch, n))
                self.extractor, self.vgg_record = load_vgg(vgg_weights, arch, last_layer=deepest, device=device)
            elif teacher is not None and allow_fallback:
                self.fallback = (f"no {arch} weights given ({expected.name}): the content/style terms use the "
                                 "teacher's early layers instead, VGG layers mapped to teacher taps by depth")
                cfg = cfg.with_teacher_extractor(teacher.info.task)
            else:
                raise AgdError(
                    f"loss {cfg.name}: needs {arch.upper()} weights: pass the path of torchvision's {expected.name} "
                    f"(sha256 {expected.sha256}); agd never downloads it"
                    + ("" if teacher is not None else ", or give the teacher to use its early layers instead")
                )
        if cfg.uses_features and cfg.extractor == "teacher" and teacher is not None and allow_fallback \
                and not has_taps(teacher):
            self.fallback = ((self.fallback + "; ") if self.fallback else "") + (
                f"the layers of teacher {teacher.info.name} ({type(teacher.module).__name__}) are unknown to agd, so "
                "the content/style terms are off and the pixel terms alone distil (give VGG weights for them)")
            cfg = replace(cfg, content=0.0, style=0.0)
        if cfg.uses_features and cfg.extractor == "teacher":
            if teacher is None:
                raise AgdError(f"loss {cfg.name}: the 'teacher' feature extractor needs the teacher")
            ext = TeacherFeatures(teacher)
            cfg = self._fit_taps(cfg, ext)
            self.extractor = ext.to(device)
        self.cfg = cfg

    def _fit_taps(self, cfg: LossConfig, ext: TeacherFeatures) -> LossConfig:
        """Check the taps exist on this teacher; after a fallback, clamp to its deepest tap instead."""
        missing = [n for n in cfg.feature_layers() if n not in ext.taps]
        if not missing:
            return cfg
        if self.fallback is None:
            raise AgdError(f"loss {cfg.name}: teacher tap(s) {missing} do not exist on this {ext.task} teacher; "
                           f"its taps are {', '.join(ext.layer_names)}")
        last = ext.layer_names[-1]

        def clamp(names: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(dict.fromkeys(n if n in ext.taps else last for n in names))

        return replace(cfg, content_layers=clamp(cfg.content_layers), style_layers=clamp(cfg.style_layers))

    def forward(self, student: Tensor, teacher_out: Tensor,
                gt: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.cfg
        if student.shape != teacher_out.shape:
            raise ValueError(f"DistillLoss: student output {tuple(student.shape)} and teacher output "
                             f"{tuple(teacher_out.shape)} differ in shape")
        teacher_out = teacher_out.detach()
        terms: dict[str, Tensor] = {}
        if cfg.pixel > 0:
            terms["pixel"] = pixel_l1(student, teacher_out)
        if cfg.gt_pixel > 0:
            if gt is None:
                raise AgdError(f"loss {cfg.name}: gt_pixel weight {cfg.gt_pixel} needs ground-truth images (gt)")
            terms["gt_pixel"] = pixel_l1(student, gt.detach())
        if cfg.uses_features:
            assert self.extractor is not None
            layers = cfg.feature_layers()
            fs = self.extractor(student, layers)
            with torch.no_grad():
                ft = self.extractor(teacher_out, layers)
            if cfg.content > 0:
                terms["content"] = sum(  # type: ignore[assignment]
                    content_distance(fs[n], ft[n], cfg.content_criterion) for n in cfg.content_layers)
            if cfg.style > 0:
                terms["style"] = sum(style_distance(fs[n], ft[n]) for n in cfg.style_layers)  # type: ignore[assignment]
        if cfg.tv > 0:
            terms["tv"] = total_variation(student)
        weights = cfg.weights()
        total = student.new_zeros(())
        for name, value in terms.items():
            total = total + weights[name] * value
        return total, terms

    def term_times(self, student: Tensor, teacher_out: Tensor, gt: Tensor | None = None,
                   repeats: int = 2) -> dict[str, float]:
        """Milliseconds of each active term alone, forward and backward to the student's output (the
        network's own backward excluded), best of ``repeats``; the content and style terms each include
        the feature extraction they need, so their sum can exceed the whole loss's time."""

        cfg = self.cfg
        out: dict[str, float] = {}
        weights = cfg.weights()
        for name in [n for n, w in weights.items() if w > 0]:
            if name == "gt_pixel" and gt is None:
                continue
            best = float("inf")
            for _ in range(repeats):
                x = student.detach().clone().requires_grad_(True)
                t0 = time.perf_counter()
                if name == "pixel":
                    v = pixel_l1(x, teacher_out)
                elif name == "gt_pixel":
                    v = pixel_l1(x, gt)
                elif name == "tv":
                    v = total_variation(x)
                else:
                    layers = cfg.content_layers if name == "content" else cfg.style_layers
                    fs = self.extractor(x, layers)
                    with torch.no_grad():
                        ft = self.extractor(teacher_out.detach(), layers)
                    dist = (lambda a, b: content_distance(a, b, cfg.content_criterion)) if name == "content" else style_distance
                    v = sum(dist(fs[n], ft[n]) for n in layers)
                v.backward()
                best = min(best, (time.perf_counter() - t0) * 1e3)
            out[name] = best
        return out

    def extractor_name(self) -> str | None:
        """``vgg16`` / ``vgg19`` / ``teacher`` as used, or None when no feature term is active."""
        return self.cfg.extractor if self.extractor is not None else None

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable record of what this loss computes, for the run's config."""
        ext = self.extractor
        taps = {n: ext.taps[n] for n in self.cfg.feature_layers()} if isinstance(ext, TeacherFeatures) else None
        return {
            "preset": self.requested.name,
            "extractor": self.extractor_name(),
            "requested_extractor": self.requested.extractor if self.requested.uses_features else None,
            "fallback": self.fallback,
            "vgg_weights": self.vgg_record.to_dict() if self.vgg_record is not None else None,
            "teacher": self.teacher_identity if isinstance(ext, TeacherFeatures) else None,
            "teacher_taps": taps,
            "weights": self.cfg.weights(),
            "content_layers": list(self.cfg.content_layers) if self.cfg.content > 0 else [],
            "style_layers": list(self.cfg.style_layers) if self.cfg.style > 0 else [],
            "content_criterion": self.cfg.content_criterion if self.cfg.content > 0 else None,
            "config": self.cfg.to_dict(),
            "conventions": dict(CONVENTIONS),
        }
