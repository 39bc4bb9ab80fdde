"""Loss settings: what a search or training preset's ``loss`` field (``tiny``, ``cpu``, ``paper``, ``pixel``)
means for a teacher's task in each phase, as a :data:`agd.distill.presets.LOSS_PRESETS` name."""

from __future__ import annotations

from pathlib import Path

from agd.distill.losses import DistillLoss
from agd.io import AgdError

PHASES = ("pretrain", "search", "train")

LOSS_FOR: dict[tuple[str, str, str], str] = {
    # (search/train loss setting, task, phase) -> agd.distill preset; SR pretraining is pixel L1 alone
    # (AGD's [1, 0, 0, 0]), translation pretraining uses its search loss
    ("tiny", "sr", "pretrain"): "pixel", ("paper", "sr", "pretrain"): "pixel",
    ("tiny", "translation", "pretrain"): "tiny-translation",
    ("paper", "translation", "pretrain"): "paper-translation-search",
    ("tiny", "sr", "search"): "tiny-sr", ("tiny", "sr", "train"): "tiny-sr",
    ("tiny", "translation", "search"): "tiny-translation", ("tiny", "translation", "train"): "tiny-translation",
    ("paper", "sr", "search"): "paper-sr", ("paper", "sr", "train"): "paper-sr",
    ("paper", "translation", "search"): "paper-translation-search",
    ("paper", "translation", "train"): "paper-translation-train",
    **{("pixel", task, phase): "pixel" for task in ("sr", "translation") for phase in PHASES},
    # the main job's default: tiny for SR; pixel L1 alone for translation, where it measured 1-2 dB closer to
    # the teacher on held-out images than the perceptual tiny loss (BENCHMARKS.md, issue 17)
    ("cpu", "sr", "pretrain"): "pixel", ("cpu", "sr", "search"): "tiny-sr", ("cpu", "sr", "train"): "tiny-sr",
    **{("cpu", "translation", phase): "pixel" for phase in PHASES},
}


def make_loss(setting: str, teacher, vgg_weights: Path | None, device, phase: str = "search") -> DistillLoss:
    """The distillation loss of a preset's loss setting (``tiny``, ``cpu``, ``paper``, ``pixel``) for the teacher's task.
    Without VGG weights the paper presets fall back to the teacher's own early layers (recorded)."""
    key = (setting, teacher.info.task, phase)
    if key not in LOSS_FOR:
        raise AgdError(f"loss setting {setting!r}: unknown (tiny, cpu, paper or pixel)")
    return DistillLoss(LOSS_FOR[key], teacher=teacher, vgg_weights=vgg_weights, device=device)
