"""PSNR and SSIM as the super-resolution literature reports them.

Convention (MATLAB, as used for the published Set5/Set14/BSD100 tables):
- both images are clamped to [0, 1] and rounded to the 8-bit grid first (``quantize=True``), as if
  they had been saved as PNGs;
- ``crop`` pixels are removed from every border (``crop = scale`` for SR);
- on the Y channel of BT.601 YCbCr (MATLAB ``rgb2ycbcr``): ``Y = 16 + 65.481 R + 128.553 G + 24.966 B``
  on [0, 1] RGB, a value in [16, 235] that is *not* rounded; peak 255;
- or on RGB (``y_channel=False``): PSNR over all channels, SSIM averaged over channels;
- SSIM: Wang et al. 2004 with an 11x11 Gaussian window (sigma 1.5), ``K1 = 0.01``, ``K2 = 0.03``,
  ``L = 255``, over the valid region (no padding), computed in float64.

Inputs are (C, H, W) tensors, or (N, C, H, W) batches for which the per-image values are averaged.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from agd.io import AgdError

_Y_WEIGHTS = (65.481, 128.553, 24.966)


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of [0, 1] RGB (..., 3, H, W) -> (..., 1, H, W) in [16, 235] (MATLAB ``rgb2ycbcr``)."""
    w = torch.tensor(_Y_WEIGHTS, dtype=img.dtype, device=img.device).view(3, 1, 1)
    return 16.0 + (img * w).sum(dim=-3, keepdim=True)


def _prepare(a: torch.Tensor, b: torch.Tensor, crop: int, y_channel: bool, quantize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if a.shape != b.shape:
        raise AgdError(f"image quality: the two images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.dim() not in (3, 4):
        raise AgdError(f"image quality: expected (C, H, W) or (N, C, H, W), got {tuple(a.shape)}")
    a = a.detach().to("cpu", torch.float64)
    b = b.detach().to("cpu", torch.float64)
    if a.dim() == 3:
        a, b = a[None], b[None]
    if crop < 0 or 2 * crop >= min(a.shape[-2:]):
        raise AgdError(f"image quality: border crop {crop} leaves nothing of a {a.shape[-2]}x{a.shape[-1]} image")
    if quantize:
        a = (a.clamp(0, 1) * 255).round() / 255
        b = (b.clamp(0, 1) * 255).round() / 255
    if crop:
        a = a[..., crop:-crop, crop:-crop]
        b = b[..., crop:-crop, crop:-crop]
    if y_channel:
        if a.shape[1] != 3:
            raise AgdError(f"image quality: the Y channel needs RGB images, got {a.shape[1]} channels")
        return rgb_to_y(a), rgb_to_y(b)
    return a * 255, b * 255


def psnr_per_image(a: torch.Tensor, b: torch.Tensor, *, crop: int = 0, y_channel: bool = True,
                   quantize: bool = True) -> list[float]:
    """PSNR in dB of each image of a batch (``inf`` for identical images)."""
    a, b = _prepare(a, b, crop, y_channel, quantize)
    mse = ((a - b) ** 2).flatten(1).mean(1)
    return [math.inf if m == 0 else 10 * math.log10(255.0**2 / m) for m in mse.tolist()]


def psnr(a: torch.Tensor, b: torch.Tensor, *, crop: int = 0, y_channel: bool = True, quantize: bool = True) -> float:
    """PSNR in dB (mean over a batch); see the module docstring for the convention."""
    vals = psnr_per_image(a, b, crop=crop, y_channel=y_channel, quantize=quantize)
    return sum(vals) / len(vals)


def output_psnr(out, ref, data_range: float = 2.0) -> float:
    """PSNR (dB) of one network output to another, on all channels, unrounded: how far a deployment (a
    low-precision build, another runtime) moves a network's [-1, 1] output (``data_range`` 2) from its
    fp32 reference; inf when they are equal. Arrays or tensors."""

    a = np.asarray(out, dtype=np.float64)
    b = np.asarray(ref, dtype=np.float64)
    if a.shape != b.shape:
        raise AgdError(f"output PSNR: shapes {a.shape} and {b.shape} differ")
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(data_range ** 2 / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim_per_image(a: torch.Tensor, b: torch.Tensor, *, crop: int = 0, y_channel: bool = True,
                   quantize: bool = True) -> list[float]:
    """SSIM of each image of a batch (mean over channels for RGB)."""
    a, b = _prepare(a, b, crop, y_channel, quantize)
    if min(a.shape[-2:]) < 11:
        raise AgdError(f"SSIM: images must be at least 11x11 after cropping, got {a.shape[-2]}x{a.shape[-1]}")
    c = a.shape[1]
    win = _gaussian_window().expand(c, 1, 11, 11).contiguous()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def filt(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, win, groups=c)

    mu_a, mu_b = filt(a), filt(b)
    s_aa = filt(a * a) - mu_a**2
    s_bb = filt(b * b) - mu_b**2
    s_ab = filt(a * b) - mu_a * mu_b
    m = ((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (s_aa + s_bb + c2))
    return m.flatten(1).mean(1).tolist()


def ssim(a: torch.Tensor, b: torch.Tensor, *, crop: int = 0, y_channel: bool = True, quantize: bool = True) -> float:
    """SSIM (mean over a batch); see the module docstring for the convention."""
    vals = ssim_per_image(a, b, crop=crop, y_channel=y_channel, quantize=quantize)
    return sum(vals) / len(vals)
