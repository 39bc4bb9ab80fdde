"""Feature extractor that needs no extra weights: the teacher's own early layers.

:class:`TeacherFeatures` copies the first layers of a teacher (:class:`agd.teachers.Teacher`) into a frozen
module and applies them to any [0, 1] image (the student's output and the teacher's output alike). Taps:

- SR teacher (:class:`agd.teachers.RRDBNet`, input in [0, 1]; scales 1 and 2 pixel-unshuffle first, as
  the network does):
  ``t1`` = LeakyReLU(0.2)(conv_first(x)) (the network itself feeds conv_first un-activated to its body;
  the activation is added here so the tap is a non-negative-leaning feature like VGG's),
  ``t2`` = output of the first residual dense block of the first RRDB (``body.0.rdb1``) on conv_first(x),
  ``t3`` = output of the first RRDB (``body.0``);
- translation teacher (:class:`agd.teachers.ResnetGenerator`, input mapped to [-1, 1]):
  ``t1`` = after the stem (reflection pad, conv 7x7, norm, ReLU; full resolution),
  ``t2`` = after the first downsampling (conv stride 2, norm, ReLU; 1/2 resolution),
  ``t3`` = after the second downsampling (1/4 resolution), ... one tap per downsampling stage;
- any other teacher (a ``module:factory``, a ``.pt2`` program): its structure is unknown, so it cannot
  serve (:func:`has_taps` says so); :class:`~agd.distill.DistillLoss` then drops its feature terms and says
  so, or VGG weights serve.

Cost: the SR taps run at the student's output (HR) resolution; ``t1`` is one conv, ``t2`` / ``t3`` add one /
three 5-conv dense blocks (about 15x / 40x the cost of ``t1`` measured on a 2-core CPU for Real-ESRGAN x4plus).

The copied layers are independent of the teacher (moving or freezing one does not touch the other), in
eval mode with ``requires_grad`` off.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agd.io import AgdError
from agd.teachers.cyclegan import ResnetGenerator
from agd.teachers.registry import Teacher
from agd.teachers.rrdbnet import RESIDUAL_SCALE, RRDBNet, unshuffle_factor

SR_TAPS = {
    "t1": "LeakyReLU(0.2)(conv_first(x))",
    "t2": "body.0.rdb1(conv_first(x)): first residual dense block",
    "t3": "body.0(conv_first(x)): first RRDB block",
}


def _translation_taps(n_down: int) -> dict[str, str]:
    taps = {"t1": "model[0:4]: stem (pad, conv 7x7, norm, ReLU), full resolution"}
    for k in range(n_down):
        a = 4 + 3 * k
        taps[f"t{k + 2}"] = (f"model[{a}:{a + 3}]: downsampling {k + 1} (conv s2, norm, ReLU), "
                             f"1/{2 ** (k + 1)} resolution")
    return taps


def has_taps(teacher: Teacher) -> bool:
    """Whether agd knows this teacher's early layers (an RRDBNet SR or a ResnetGenerator translation teacher)."""
    kinds = {"sr": RRDBNet, "translation": ResnetGenerator}
    return isinstance(teacher.module, kinds[teacher.info.task]) and (
        teacher.info.task != "sr" or teacher.module.nb >= 1)


class TeacherFeatures(nn.Module):
    """Frozen early layers of an SR (RRDBNet) or translation (ResnetGenerator) teacher, as named taps
    ``t1``, ``t2``, ``t3`` (see the module docstring). ``forward(x, layers)`` takes [0, 1] images."""

    def __init__(self, teacher: Teacher) -> None:
        super().__init__()
        module, task = teacher.module, teacher.info.task
        self.teacher_identity = teacher.identity
        if task == "sr" and isinstance(module, RRDBNet):
            if module.nb < 1:
                raise AgdError(f"teacher {teacher.info.name}: an RRDBNet without RRDB blocks has no feature taps")
            self.kind = "rrdbnet"
            self.unshuffle = unshuffle_factor(module.scale)
            self.conv_first = copy.deepcopy(module.conv_first)
            self.rdb1 = copy.deepcopy(module.body[0].rdb1)
            self.rrdb_rest = nn.Sequential(copy.deepcopy(module.body[0].rdb2), copy.deepcopy(module.body[0].rdb3))
            self.taps: dict[str, str] = dict(SR_TAPS)
        elif task == "translation" and isinstance(module, ResnetGenerator):
            self.kind = "resnet_generator"
            self.unshuffle = 1
            n = 4 + 3 * module.n_down
            self.stages = nn.ModuleList(
                [copy.deepcopy(module.model[0:4])]
                + [copy.deepcopy(module.model[a:a + 3]) for a in range(4, n, 3)]
            )
            self.taps = _translation_taps(module.n_down)
        else:
            raise AgdError(
                f"teacher {teacher.info.name}: a {type(module).__name__} ({task}) has no known early layers to "
                "use as a feature extractor; give torchvision VGG weights (vgg16-397923af.pth / "
                "vgg19-dcbb9e9d.pth) for the perceptual and style terms"
            )
        self.task = task
        self.layer_names: tuple[str, ...] = tuple(self.taps)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "TeacherFeatures":
        return super().train(False)  # always a fixed feature extractor (InstanceNorm has no running stats anyway)

    def _prepare(self, x: Tensor) -> Tensor:
        if self.task == "translation":
            return x * 2 - 1
        f = self.unshuffle
        if f > 1:
            h, w = x.shape[-2:]
            ph, pw = (-h) % f, (-w) % f
            if ph or pw:
                x = F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")
            x = F.pixel_unshuffle(x, f)
        return x

    def forward(self, x: Tensor, layers: tuple[str, ...] | list[str]) -> dict[str, Tensor]:
        """Features of [0, 1] images at the named taps; runs only up to the deepest of them."""
        unknown = [n for n in layers if n not in self.taps]
        if unknown:
            raise AgdError(f"teacher feature tap(s) {unknown}: unknown for this {self.task} teacher; "
                           f"taps are {', '.join(self.layer_names)}")
        if not layers:
            return {}
        deepest = max(self.layer_names.index(n) for n in layers)
        want = set(layers)
        h = self._prepare(x)
        out: dict[str, Tensor] = {}
        if self.kind == "rrdbnet":
            feat = self.conv_first(h)
            if "t1" in want:
                out["t1"] = F.leaky_relu(feat, 0.2)
            if deepest >= 1:
                r1 = self.rdb1(feat)
                if "t2" in want:
                    out["t2"] = r1
                if deepest >= 2:
                    out["t3"] = feat + RESIDUAL_SCALE * self.rrdb_rest(r1)  # RRDB: x + 0.2 * rdb3(rdb2(rdb1(x)))
            return out
        for i, stage in enumerate(self.stages[: deepest + 1]):
            h = stage(h)
            name = f"t{i + 1}"
            if name in want:
                out[name] = h
        return out


def teacher_features(teacher: Teacher, device: str | torch.device = "cpu") -> TeacherFeatures:
    """:class:`TeacherFeatures` of ``teacher`` on ``device``."""
    return TeacherFeatures(teacher).to(device)
