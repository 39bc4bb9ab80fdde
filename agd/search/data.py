"""Distillation data: input images, the teacher's outputs on whole images (cached on disk), and seeded
batches of aligned random crops.

The teacher runs once per whole training image (tiled where it can be, no grad, eval mode), and its
output is kept in the :class:`~agd.data.TeacherCache`; training crops are cut from the cached output, so
after the first run the teacher costs nothing. For super-resolution the input is the MATLAB-bicubic
downscale of the image (the standard degradation) and the image itself is the ground truth; for
translation the input is the image.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from agd.data import TeacherCache, bicubic_degrade, image_hash, list_images, read_image, sample_images
from agd.data.resize import fit_image
from agd.data.samples import HELD_OUT, sample_files
from agd.io import AgdError
from agd.teachers import tiled_forward


@dataclass
class DistillImage:
    name: str
    inp: torch.Tensor  # (3, h, w) in [0, 1]
    target: torch.Tensor  # the teacher's output (3, h*s, w*s) in [0, 1]
    gt: torch.Tensor | None  # SR ground truth (3, h*s, w*s), else None


def load_images(source: str | Path | None, *, exclude: tuple[str, ...] | list[str] = (),
                only: tuple[str, ...] | list[str] | None = None) -> list[tuple[str, torch.Tensor]]:
    """(name, image) from a folder, or the built-in samples when ``source`` is None; names in ``exclude``
    are left out (a held-out split), and with ``only`` just those names are kept."""
    if source is None:
        images = sample_images(only, available_only=True) if only is not None else sample_images()
    else:
        files = list_images(source)
        if only is not None:
            files = [p for p in files if p.stem in set(only)]
        images = [(p.stem, read_image(p)) for p in files]
    return [(n, im) for n, im in images if n not in set(exclude)]


def held_out_split(source: str | Path | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(training names, held-out names) of an image source, by name: the built-in samples hold out
    :data:`agd.data.samples.HELD_OUT`; a folder holds out every 4th image in sorted order (from the 4th
    on). Needs 3 training images (the search's three sets) and 1 held out."""
    if source is None:
        names = sorted(s.name for s in sample_files())
        held = tuple(n for n in names if n in HELD_OUT)
    else:
        names = sorted(p.stem for p in list_images(source))
        held = tuple(names[3::4])
    train = tuple(n for n in names if n not in held)
    if len(train) < 3 or not held:
        where = "the built-in samples" if source is None else f"--images {source}"
        raise AgdError(f"{where}: a held-out split needs at least 4 images (3 to train on: weights, architecture, "
                       f"selection; 1 to evaluate on), found {len(names)}; add images or give --eval-images DIR")
    return train, held


VARIANT_SEP = "~v"  # a photometric variant of image NAME is named NAME~vK


def photometric_variant(img: torch.Tensor, name: str, k: int) -> torch.Tensor:
    """Variant ``k`` of image ``name`` (3, H, W) in [0, 1]: a seeded global tone and colour change (gamma
    0.6-1.6, contrast 0.7-1.3 about the mean, saturation 0.5-1.5, gain 0.7-1.3), the same on every run.

    A translation teacher's output depends on the whole image's statistics (InstanceNorm): the vintage
    teacher lightens some photographs and darkens others. A student distilled from a handful of images
    meets only a handful of such statistics; variants labelled by the teacher show it more of them."""
    g = torch.Generator().manual_seed(zlib.crc32(f"{name}/{k}".encode()))
    u = torch.rand(4, generator=g, dtype=torch.float64).tolist()
    gamma, contrast, sat, gain = 0.6 + u[0], 0.7 + 0.6 * u[1], 0.5 + u[2], 0.7 + 0.6 * u[3]
    y = img.clamp(0, 1) ** gamma
    y = y.mean() + (y - y.mean()) * contrast
    lum = (0.299 * y[0] + 0.587 * y[1] + 0.114 * y[2])[None]
    return ((lum + (y - lum) * sat) * gain).clamp(0, 1)


def prepare(images: list[tuple[str, torch.Tensor]], teacher, *, cache_dir: Path, max_side: int | None, device,
            tile: int = 256, on_image: Callable[[str], None] | None = None,
            translation_variants: int = 0) -> list[DistillImage]:
    """Inputs and cached teacher outputs for every image; for a translation teacher, also for
    ``translation_variants`` :func:`photometric_variant` s of each (named ``NAME~vK``)."""
    task, scale = teacher.info.task, teacher.info.scale
    if task == "translation" and translation_variants > 0:
        images = list(images) + [(f"{n}{VARIANT_SEP}{k}", photometric_variant(im, n, k))
                                 for n, im in images for k in range(1, translation_variants + 1)]
    cache = TeacherCache(cache_dir, teacher.identity)
    out = []
    for name, img in images:
        if on_image:
            on_image(name)
        if task == "sr":
            gt = fit_image(img, max_side, scale)
            inp = bicubic_degrade(gt, scale)
            variant = f"sr-x{scale}-matlab-bicubic"
        else:
            gt = None
            inp = fit_image(img, max_side, max(getattr(teacher, "multiple", 1), 4))
            variant = "translation"

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                y = tiled_forward(teacher, x[None].to(device), scale=scale, tile=tile)[0]
            return y.clamp(0, 1).float().cpu()

        target = cache.run(run, inp, img_hash=image_hash(inp), variant=variant).float()
        out.append(DistillImage(name, inp, target, gt))
    return out


def split(items: list[DistillImage]) -> tuple[list[DistillImage], list[DistillImage], list[DistillImage]]:
    """Three disjoint sets by image (sorted by name, dealt in turn): (weights half, architecture half,
    selection set). The weight steps see only the first, the architecture steps only the second; the
    selection set, which neither optimises, scores the derived architectures to pick the best one."""
    if len(items) < 3:
        raise AgdError(f"search: needs at least 3 images (one each for the weight steps, the architecture steps "
                       f"and the selection of the best derived architecture), got {len(items)}")
    items = sorted(items, key=lambda d: d.name)
    return items[0::3], items[1::3], items[2::3]


def check_patch(items: list[DistillImage], patch: int) -> None:
    for d in items:
        h, w = d.inp.shape[1:]
        if h < patch or w < patch:
            raise AgdError(f"image {d.name}: its input is {h}x{w} pixels, smaller than the {patch}x{patch} training crop "
                           f"(use larger images, a larger --max-side, or a smaller patch)")


def batch(items: list[DistillImage], *, size: int, patch: int, scale: int, seed: int, phase: int, step: int,
          flips: bool = True, indices: list[int] | None = None) -> dict[str, torch.Tensor | None]:
    """A batch of aligned random crops, a pure function of (seed, phase, step): the same on every run and
    on every process. ``indices`` selects which of the ``size`` samples to return (data parallelism)."""
    g = torch.Generator().manual_seed(((seed * 1_000_003 + phase) * 1_000_033 + step) & 0x7FFF_FFFF_FFFF)
    inps, targets, gts = [], [], []
    for k in range(size):
        d = items[int(torch.randint(len(items), (), generator=g))]
        h, w = d.inp.shape[1:]
        t = int(torch.randint(h - patch + 1, (), generator=g))
        l = int(torch.randint(w - patch + 1, (), generator=g))
        hf, vf, tr = (bool(b) for b in torch.randint(2, (3,), generator=g)) if flips else (False, False, False)
        if indices is not None and k not in indices:
            continue
        s = scale
        crops = [d.inp[:, t:t + patch, l:l + patch], d.target[:, t * s:(t + patch) * s, l * s:(l + patch) * s]]
        if d.gt is not None:
            crops.append(d.gt[:, t * s:(t + patch) * s, l * s:(l + patch) * s])
        out = []
        for c in crops:
            c = c.flip(-1) if hf else c
            c = c.flip(-2) if vf else c
            out.append(c.transpose(-1, -2) if tr else c)
        inps.append(out[0])
        targets.append(out[1])
        if d.gt is not None:
            gts.append(out[2])
    return {"inp": torch.stack(inps), "target": torch.stack(targets), "gt": torch.stack(gts) if gts else None}


def center_crops(items: list[DistillImage], patch: int, scale: int) -> dict[str, torch.Tensor | None]:
    """One fixed central crop per image (the held-out evaluation batch)."""
    inps, targets, gts = [], [], []
    for d in items:
        h, w = d.inp.shape[1:]
        t, l = (h - patch) // 2, (w - patch) // 2
        inps.append(d.inp[:, t:t + patch, l:l + patch])
        targets.append(d.target[:, t * scale:(t + patch) * scale, l * scale:(l + patch) * scale])
        if d.gt is not None:
            gts.append(d.gt[:, t * scale:(t + patch) * scale, l * scale:(l + patch) * scale])
    return {"inp": torch.stack(inps), "target": torch.stack(targets), "gt": torch.stack(gts) if gts else None}
