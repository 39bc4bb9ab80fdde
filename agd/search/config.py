"""Search configurations with named presets.

``tiny`` is for CI and a first look (a couple of minutes on 2 CPU cores); ``cpu`` is the main job's default,
sized to finish search and training within 15 minutes on 2 CPU cores; ``small`` is a real but short
search (the baseline comparisons); ``paper`` follows AutoGAN-Distiller's recipe in spirit (long weight
pretraining with the sandwich rule, then alternating first-order architecture/weight steps, both with the
sandwich rule's largest and smallest widths beside the sampled one, Adam on the architecture with
β = (0.5, 0.999) and no weight decay (AGD's code has the 1e-3 decay commented out), Gumbel temperature
annealed from 5 to 0.5); its step counts are sized for a GPU.

Operators: ``paper`` mixes them as AGD does (``op_sampling="mixture"``: every candidate runs, weighted by
softmax(α)); for SR, ``small`` samples one per layer and step (``"sample"``, single-path,
straight-through to α). Trained as a mixture, the shared weights rank SR architectures almost in reverse of
how they train alone (Kendall τ −0.71 over 8 networks) and the search drifts to plain convolutions; trained
single-path, the ranking turns positive and the searched SR students gain 0.26 dB on held-out images.
Translation (``translation_op_sampling``) keeps the mixture: single-path measured 0.04 dB lower in the
honest experiment and 0.28 dB lower on the main job (BENCHMARKS.md).

Crops: ``patch`` is the crop side in input pixels for SR (the LR side; the HR crop is ``scale`` times it);
translation uses ``translation_patch``, larger, because the teacher's targets come from whole-image
InstanceNorm statistics and a student normalising over a 16-pixel crop (4x4 at its bottleneck) sees other
statistics than the teacher did.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from agd.io import AgdError

OP_SAMPLINGS = ("mixture", "sample")


@dataclass(frozen=True)
class SearchConfig:
    space: str | None = None  # a space preset; None: by the teacher's task and scale (translation, sr-x2/x3/x4)
    loss: str = "tiny"  # a loss setting (agd.distill.settings.LOSS_FOR: tiny, cpu, paper, pixel)
    patch: int = 16  # SR training crop, in input (LR) pixels
    translation_patch: int = 64  # translation training crop, in pixels
    batch: int = 2
    pretrain_steps: int = 6  # weights only, uniform α, sandwich widths (max, min, random)
    search_steps: int = 12  # alternating architecture / weight steps
    weight_lr: float = 2e-4
    arch_lr: float = 3e-3
    arch_weight_decay: float = 0.0  # AGD's code comments its 1e-3 out
    tau_start: float = 5.0
    tau_end: float = 0.5
    dual_step: float = 0.05
    sandwich: bool = True  # search steps add the largest and smallest widths' forwards (AGD's sandwich rule)
    # how every training forward of an SR supernet chooses operators: "mixture" (AGD: the softmax-weighted
    # sum of all candidates) or "sample" (one operator per layer drawn from softmax(α), straight-through to
    # α, as the widths are; the shared weights then learn to work alone, as in the derived network)
    op_sampling: str = "mixture"
    translation_op_sampling: str = "mixture"  # the same for translation supernets (measured apart: BENCHMARKS.md)
    channels_last: bool = True  # NHWC supernet on CPU devices: 1.5x faster steps here (BENCHMARKS.md); GPUs keep NCHW
    eval_every: int = 6  # derive + held-out loss every so many search steps (and at the end)
    checkpoint_every: int = 3
    tolerance: float = 0.05  # derived cost within ±tolerance of the budget
    max_side: int | None = 96  # images are downscaled so their longest side (HR for SR) is at most this
    grad_clip: float = 5.0
    seed: int = 0

    def __post_init__(self) -> None:
        for f in ("patch", "translation_patch", "batch", "eval_every", "checkpoint_every"):
            if getattr(self, f) < 1:
                raise AgdError(f"search config: {f} must be >= 1")
        for f in ("op_sampling", "translation_op_sampling"):
            if getattr(self, f) not in OP_SAMPLINGS:
                raise AgdError(f"search config: {f} {getattr(self, f)!r} is not one of {', '.join(OP_SAMPLINGS)}")
        if self.pretrain_steps < 0 or self.search_steps < 1:
            raise AgdError("search config: pretrain_steps must be >= 0 and search_steps >= 1")

    @property
    def total_steps(self) -> int:
        return self.pretrain_steps + self.search_steps

    def crop(self, task: str) -> int:
        """The training crop side in input pixels for the task."""
        return self.translation_patch if task == "translation" else self.patch

    def ops_for(self, task: str) -> str:
        """How the task's supernet chooses operators in training (``op_sampling`` or ``translation_op_sampling``)."""
        return self.translation_op_sampling if task == "translation" else self.op_sampling

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SearchConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise AgdError(f"search config: unknown field(s) {', '.join(sorted(unknown))}")
        return cls(**d)


SEARCH_PRESETS: dict[str, SearchConfig] = {
    "tiny": SearchConfig(),
    # the main job's default on a 2-core CPU (with the "cpu" training preset about 9-15 minutes in all)
    # the main job keeps AGD's mixture: single-path at 300 + 150 steps measured no better on its translation
    # job in the same time, and per-task step counts are not built yet (BENCHMARKS.md, "single-path")
    "cpu": SearchConfig(loss="cpu", pretrain_steps=40, search_steps=80, eval_every=20, checkpoint_every=20,
                        max_side=192, arch_lr=1e-2),
    # small samples one SR operator per layer: measured better than the mixture on held-out SR images
    "small": SearchConfig(loss="paper", patch=32, batch=8, pretrain_steps=300, search_steps=600, eval_every=100,
                          checkpoint_every=50, max_side=256, arch_lr=1e-3, op_sampling="sample"),
    "paper": SearchConfig(loss="paper", patch=64, batch=16, pretrain_steps=20000, search_steps=40000,
                          eval_every=2000, checkpoint_every=500, max_side=None, arch_lr=3e-4),
}


def get_search_config(name: str, **overrides: Any) -> SearchConfig:
    if name not in SEARCH_PRESETS:
        raise AgdError(f"search preset {name!r}: unknown (presets: {', '.join(SEARCH_PRESETS)})")
    return replace(SEARCH_PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
