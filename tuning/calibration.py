"""Network inputs for low-precision builds: calibration crops and held-out crops for the quality check.

A derived translation network maps [-1, 1] images to [-1, 1]; a derived SR network maps [0, 1]
low-resolution images to [0, 1] (``agd.arch.student.image_forward``): :func:`input_range` says which.
Calibration crops come from the training side (a folder of the user's images, or agd's built-in samples
less :data:`agd.data.samples.HELD_OUT`, the images ``agd compress`` trains on), the quality check's from
the held-out side (the built-in held-out samples, or a folder given for it), so a build is never judged
on what calibrated it. SR crops are high-resolution crops of ``scale`` times the input size, degraded
with MATLAB bicubic as agd's SR training pairs are.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from agd.data.images import list_images, read_image
from agd.data.resize import bicubic_degrade
from agd.data.samples import HELD_OUT, sample_images
from agd.io import AgdError

BUILTIN = "builtin"


def source_images(source: str | Path, held_out: bool) -> list[tuple[str, torch.Tensor]]:
    """(name, (3, H, W) [0, 1]) images: a folder's, or the built-in training (``held_out`` False) or
    held-out samples for ``builtin``."""
    if str(source) == BUILTIN:
        imgs = sample_images()
        return [(n, im) for n, im in imgs if (n in HELD_OUT) == held_out]
    folder = Path(source)
    if not folder.is_dir():
        raise AgdError(f"calibration images {folder}: no such folder (or 'builtin')")
    files = list_images(folder)
    if not files:
        raise AgdError(f"calibration images {folder}: no images in it")
    return [(p.stem, read_image(p)) for p in files]


def input_range(scale: int) -> tuple[float, float]:
    """The value range of a derived network's input: [-1, 1] for translation (scale 1), [0, 1] for SR."""
    return (-1.0, 1.0) if scale == 1 else (0.0, 1.0)


def random_input(shape: tuple[int, ...], scale: int, seed: int = 0) -> torch.Tensor:
    """A seeded uniform random input in the network's range (:func:`input_range`), for latency work."""
    lo, hi = input_range(scale)
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * (hi - lo) + lo


def network_inputs(source: str | Path, size: tuple[int, int], scale: int = 1, *, n: int = 8, held_out: bool = False,
                   seed: int = 0) -> tuple[torch.Tensor, ...]:
    """``n`` inputs of shape (1, 3, H, W) in the network's range (:func:`input_range`), random crops spread
    over the source's images (``scale`` > 1: LR crops of SR pairs). An image smaller than the crop is
    upscaled to fit first."""
    imgs = source_images(source, held_out)
    if not imgs:
        raise AgdError(f"calibration images {source}: none on the {'held-out' if held_out else 'training'} side")
    g = torch.Generator().manual_seed(seed)
    h, w = size[0] * scale, size[1] * scale
    out = []
    for i in range(n):
        _, im = imgs[i % len(imgs)]
        if im.shape[0] == 1:
            im = im.expand(3, -1, -1)
        im = im[:3]
        if im.shape[1] < h or im.shape[2] < w:
            f = max(h / im.shape[1], w / im.shape[2])
            im = F.interpolate(im[None], size=(max(h, round(im.shape[1] * f)), max(w, round(im.shape[2] * f))),
                               mode="bilinear", align_corners=False)[0].clamp(0, 1)
        top = int(torch.randint(0, im.shape[1] - h + 1, (1,), generator=g))
        left = int(torch.randint(0, im.shape[2] - w + 1, (1,), generator=g))
        crop = im[:, top:top + h, left:left + w]
        if scale > 1:
            crop = bicubic_degrade(crop, scale)
        lo, hi = input_range(scale)
        out.append((crop[None] * (hi - lo) + lo).contiguous())
    return tuple(out)
