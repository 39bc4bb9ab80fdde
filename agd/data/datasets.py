"""Datasets: image folders, super-resolution pairs and unpaired folders for translation.

Randomness (crops, flips, the partner image of an unpaired sample) comes from a generator seeded by
``(seed, epoch, index)``: the same item of the same epoch is the same on every run and in every
DataLoader worker; call ``set_epoch`` between epochs for fresh crops.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from agd.data.images import list_images, read_image
from agd.data.resize import bicubic_degrade
from agd.io import AgdError


def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A CPU generator seeded deterministically from (seed, epoch, index)."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + epoch) * 1_000_033 + index)
    return g


def random_crop_box(h: int, w: int, size: int, g: torch.Generator, *, what: str = "image") -> tuple[int, int]:
    """Top-left corner of a uniformly random ``size`` x ``size`` crop of an ``h`` x ``w`` image."""
    if h < size or w < size:
        raise AgdError(f"{what}: {h}x{w} pixels is smaller than the {size}x{size} crop")
    top = int(torch.randint(0, h - size + 1, (1,), generator=g))
    left = int(torch.randint(0, w - size + 1, (1,), generator=g))
    return top, left


def random_flips(imgs: list[torch.Tensor], g: torch.Generator) -> list[torch.Tensor]:
    """The same random horizontal flip, vertical flip and transpose applied to every image."""
    hflip, vflip, transpose = (bool(b) for b in torch.randint(0, 2, (3,), generator=g))
    out = []
    for x in imgs:
        if hflip:
            x = x.flip(-1)
        if vflip:
            x = x.flip(-2)
        if transpose:
            x = x.transpose(-1, -2)
        out.append(x.contiguous())
    return out


def crop_and_flip(img: torch.Tensor, crop: int | None, flips: bool, g: torch.Generator, what: str) -> torch.Tensor:
    """One training sample's augmentation: a random ``crop`` x ``crop`` window (``what`` names the image in
    the error when it is smaller) and random flips, both drawn from ``g``."""
    if crop is not None:
        t, l = random_crop_box(img.shape[1], img.shape[2], crop, g, what=what)
        img = img[:, t:t + crop, l:l + crop]
    if flips:
        (img,) = random_flips([img], g)
    return img.contiguous()


class _Seeded(Dataset):
    seed: int = 0
    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _gen(self, index: int) -> torch.Generator:
        return item_generator(self.seed, self.epoch, index)


class ImageFolder(_Seeded):
    """Every image of a folder as (3, H, W) float32 [0, 1]; optionally random ``crop`` and ``flips``."""

    def __init__(self, root: str | Path, *, crop: int | None = None, flips: bool = False, seed: int = 0,
                 recursive: bool = False) -> None:
        self.files = list_images(root, recursive=recursive)
        self.crop, self.flips, self.seed = crop, flips, seed

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        img = read_image(self.files[index])
        if self.crop is None and not self.flips:
            return img
        return crop_and_flip(img, self.crop, self.flips, self._gen(index), f"image {self.files[index]}")


@dataclass
class SRItem:
    lr: torch.Tensor
    hr: torch.Tensor
    name: str


def _find_lr(lr_dir: Path, stem: str, scale: int) -> Path:
    for cand in (f"{stem}x{scale}", stem, f"{stem}_x{scale}", f"{stem}_LR"):
        for p in sorted(lr_dir.glob(f"{cand}.*")):
            return p
    raise AgdError(f"LR folder {lr_dir}: no image for HR {stem!r} (looked for {stem}x{scale}.*, {stem}.*)")


class SRPairs(_Seeded):
    """Super-resolution pairs: HR images of a folder, cropped to a multiple of ``scale``, with LR either
    made by the MATLAB bicubic downscale (rounded to 8 bits: the standard benchmark degradation) or read
    from ``lr_dir`` (matched as ``<stem>x<scale>.*`` or ``<stem>.*``; sizes are checked).

    ``patch`` is the LR patch size of random training crops (the HR patch is ``patch * scale``); None
    returns whole images. Items are dicts ``{"lr", "hr", "name"}``. LR images made here are kept in memory
    as 8-bit (1/scale² of the HR size) after first use.
    """

    def __init__(self, hr_dir: str | Path, scale: int, *, lr_dir: str | Path | None = None, patch: int | None = None,
                 flips: bool = False, seed: int = 0) -> None:
        if scale < 1:
            raise AgdError(f"SR pairs: scale {scale} must be >= 1")
        self.hr_files = list_images(hr_dir)
        self.lr_dir = Path(lr_dir) if lr_dir is not None else None
        if self.lr_dir is not None:
            if not self.lr_dir.is_dir():
                raise AgdError(f"LR folder {self.lr_dir}: does not exist")
            self.lr_files = [_find_lr(self.lr_dir, p.stem, scale) for p in self.hr_files]
        self.scale, self.patch, self.flips, self.seed = scale, patch, flips, seed
        self._lr_cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.hr_files)

    def pair(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole (LR, HR) pair of ``index``, HR cropped to a multiple of the scale."""
        s = self.scale
        hr = read_image(self.hr_files[index])
        h, w = hr.shape[1] - hr.shape[1] % s, hr.shape[2] - hr.shape[2] % s
        if h == 0 or w == 0:
            raise AgdError(f"HR image {self.hr_files[index]}: smaller than the scale {s}")
        hr = hr[:, :h, :w].contiguous()
        if self.lr_dir is not None:
            lr = read_image(self.lr_files[index])
            if tuple(lr.shape[1:]) != (h // s, w // s):
                raise AgdError(
                    f"LR image {self.lr_files[index]}: {lr.shape[1]}x{lr.shape[2]} pixels, expected "
                    f"{h // s}x{w // s} for HR {self.hr_files[index].name} at x{s}")
        else:
            cached = self._lr_cache.get(index)
            if cached is None:
                lr = bicubic_degrade(hr, s)
                self._lr_cache[index] = (lr * 255).round().to(torch.uint8)
            else:
                lr = cached.float() / 255
        return lr, hr

    def __getitem__(self, index: int) -> dict:
        lr, hr = self.pair(index)
        if self.patch is not None or self.flips:
            g = self._gen(index)
            if self.patch is not None:
                p, s = self.patch, self.scale
                t, l = random_crop_box(lr.shape[1], lr.shape[2], p, g, what=f"LR of {self.hr_files[index]}")
                lr = lr[:, t:t + p, l:l + p]
                hr = hr[:, t * s:(t + p) * s, l * s:(l + p) * s]
            if self.flips:
                lr, hr = random_flips([lr, hr], g)
        return {"lr": lr.contiguous(), "hr": hr.contiguous(), "name": self.hr_files[index].stem}


class UnpairedFolders(_Seeded):
    """Two unpaired image folders (domain A and B) for translation, as CycleGAN trains: item ``i`` pairs
    A's image ``i % len(A)`` with a B image drawn by the seeded generator; length ``max(len(A), len(B))``.
    Both get an independent random ``crop`` and flips when asked."""

    def __init__(self, a_dir: str | Path, b_dir: str | Path, *, crop: int | None = None, flips: bool = False,
                 seed: int = 0) -> None:
        self.a_files, self.b_files = list_images(a_dir), list_images(b_dir)
        self.crop, self.flips, self.seed = crop, flips, seed

    def __len__(self) -> int:
        return max(len(self.a_files), len(self.b_files))

    def _load(self, path: Path, g: torch.Generator) -> torch.Tensor:
        return crop_and_flip(read_image(path), self.crop, self.flips, g, f"image {path}")

    def __getitem__(self, index: int) -> dict:
        g = self._gen(index)
        a_path = self.a_files[index % len(self.a_files)]
        b_path = self.b_files[int(torch.randint(0, len(self.b_files), (1,), generator=g))]
        return {"a": self._load(a_path, g), "b": self._load(b_path, g), "a_name": a_path.stem, "b_name": b_path.stem}
