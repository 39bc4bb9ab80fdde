"""Reading, writing and listing images.

Convention everywhere in agd: an image is a float32 tensor (3, H, W) with values in [0, 1], RGB.
Greyscale and palette images are expanded to RGB; an alpha channel is dropped (composited on black is
*not* done: the colour channels are kept as stored). 16-bit PNGs keep their precision.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from agd.io import AgdError, atomic_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_images(folder: str | Path, *, recursive: bool = False) -> list[Path]:
    """Image files of ``folder`` (by suffix, case-insensitive), sorted by path.

    Raises AgdError when the folder does not exist or holds no image."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AgdError(f"image folder {folder}: does not exist or is not a folder")
    it = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted(p for p in it if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise AgdError(f"image folder {folder}: holds no image ({', '.join(IMAGE_SUFFIXES)})")
    return files


def pil_to_tensor(img) -> torch.Tensor:
    """A PIL image as a float32 (3, H, W) tensor in [0, 1]."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(img, dtype=np.float32) / (65535.0 if img.mode.startswith("I;16") else max(1.0, float(np.asarray(img).max())))
        a = np.repeat(a[..., None], 3, axis=2)
    else:
        if img.mode != "RGB":
            img = img.convert("RGB")
        a = np.asarray(img, dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))


def read_image(path: str | Path) -> torch.Tensor:
    """Read an image file as float32 (3, H, W) in [0, 1]; AgdError naming the file if unreadable."""

    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            return pil_to_tensor(img)
    except FileNotFoundError:
        raise AgdError(f"image {path}: no such file") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise AgdError(f"image {path}: cannot be decoded ({e})") from None


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """(3, H, W) or (H, W) float in [0, 1] to an (H, W, 3) / (H, W) uint8 array (clamped, rounded)."""
    if img.dim() == 4 and img.shape[0] == 1:
        img = img[0]
    a = (img.detach().to("cpu", torch.float32).clamp(0, 1) * 255.0).round().to(torch.uint8)
    if a.dim() == 3:
        if a.shape[0] == 1:
            a = a.expand(3, -1, -1)
        a = a.permute(1, 2, 0)
    return np.ascontiguousarray(a.numpy())


def write_image(path: str | Path, img: torch.Tensor) -> Path:
    """Write a [0, 1] image (3, H, W) as 8-bit, atomically (the format follows the suffix; PNG is
    lossless). Parent folders are created."""

    path = Path(path)
    if img.dim() not in (2, 3) and not (img.dim() == 4 and img.shape[0] == 1):
        raise AgdError(f"image for {path}: expected (3, H, W), got shape {tuple(img.shape)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG"}.get(path.suffix.lower())
    with atomic_path(path) as tmp:
        Image.fromarray(to_uint8(img)).save(tmp, format=fmt or Image.registered_extensions().get(path.suffix.lower(), "PNG"))
    return path
