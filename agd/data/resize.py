"""MATLAB-compatible ``imresize`` (bicubic with antialiasing), the SR literature's degradation.

Convention (MATLAB's ``imresize``, which produced the LR images of Set5/Set14/DIV2K benchmarks):
- output size ``ceil(in * scale)`` per spatial dimension, or the given size (then each dimension's scale
  is ``out / in``);
- output pixel ``j`` (1-based) samples the input at ``u = j / s + 0.5 * (1 - 1 / s)``;
- the cubic kernel with ``a = -0.5`` (Keys); when downscaling with antialiasing it is stretched to
  ``s * cubic(s * x)`` with support ``4 / s``;
- taps beyond the border are mirrored (symmetric padding), each row of weights is normalised to sum 1,
  and taps whose weight is zero for every output are dropped;
- the dimension with the smaller scale factor is resized first (height first on ties).

The separable passes run through :func:`agd.ops.resample` (the C++ kernel when built, else PyTorch).
Values are not clamped or rounded: do that where an 8-bit image is meant (e.g. :func:`to_8bit`).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from agd.io import AgdError
from agd.ops import resample

_KERNELS = {
    # name: (function on |x|, support width)
    "cubic": (lambda x: np.where(x <= 1, 1.5 * x**3 - 2.5 * x**2 + 1,
                                 np.where(x <= 2, -0.5 * x**3 + 2.5 * x**2 - 4 * x + 2, 0.0)), 4.0),
    "linear": (lambda x: np.clip(1.0 - x, 0.0, None), 2.0),
    "box": (lambda x: ((x >= -0.5) & (x < 0.5)).astype(np.float64), 1.0),
}


@functools.lru_cache(maxsize=256)
def resize_weights(in_len: int, out_len: int, scale: float, kernel: str = "cubic",
                   antialias: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Index and weight tables (out_len, taps) of one 1-D MATLAB resize, 0-based, float64 weights."""
    if kernel not in _KERNELS:
        raise AgdError(f"resize kernel {kernel!r}: unknown (choose from {', '.join(_KERNELS)})")
    fn, width = _KERNELS[kernel]
    # the box is half-open [-0.5, 0.5) as MATLAB's, so it takes the signed distance
    h = fn if kernel == "box" else (lambda x: fn(np.abs(x)))  # noqa: E731
    if scale < 1 and antialias:
        kernel_fn = lambda x: scale * h(scale * x)  # noqa: E731
        width = width / scale
    else:
        kernel_fn = h
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = int(math.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
    w = kernel_fn(u[:, None] - idx)
    w = w / w.sum(axis=1, keepdims=True)
    # mirror out-of-range taps (1-based symmetric padding, as MATLAB)
    aux = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    idx0 = aux[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    keep = np.any(w != 0, axis=0)
    return np.ascontiguousarray(idx0[:, keep]), np.ascontiguousarray(w[:, keep])


def output_size(in_hw: tuple[int, int], scale: float | tuple[float, float] | None,
                size: tuple[int, int] | None) -> tuple[tuple[int, int], tuple[float, float]]:
    """(output size, per-dimension scale) following MATLAB's rules."""
    if (scale is None) == (size is None):
        raise AgdError("imresize: give exactly one of scale and size")
    if size is not None:
        oh, ow = (int(size[0]), int(size[1]))
        if oh <= 0 or ow <= 0:
            raise AgdError(f"imresize: output size {size} must be positive")
        return (oh, ow), (oh / in_hw[0], ow / in_hw[1])
    sh, sw = (scale, scale) if isinstance(scale, (int, float)) else scale
    if sh <= 0 or sw <= 0:
        raise AgdError(f"imresize: scale {scale} must be positive")
    # MATLAB: ceil(in * scale), guarded against float noise such as 0.25 * 256 = 64.00000001
    oh = int(math.ceil(round(in_hw[0] * sh, 9)))
    ow = int(math.ceil(round(in_hw[1] * sw, 9)))
    return (oh, ow), (float(sh), float(sw))


def imresize(img: torch.Tensor, scale: float | tuple[float, float] | None = None, *,
             size: tuple[int, int] | None = None, kernel: str = "cubic", antialias: bool = True,
             uint8_passes: bool = False) -> torch.Tensor:
    """Resize a (C, H, W) or (N, C, H, W) float image like MATLAB's ``imresize``.

    ``scale`` (e.g. 1/4 to downscale x4) or ``size`` (H, W). Computed in the input's dtype (float32 or
    float64; other dtypes are computed in float32 and cast back).

    ``uint8_passes=True`` reproduces MATLAB on a ``uint8`` image bit for bit: the image is taken to the
    integers 0..255 (float64), and after each 1-D pass the result is clamped to [0, 255] and rounded half
    away from zero, as MATLAB's uint8 passes do; the result is returned on the 8-bit grid in [0, 1].
    """

    if img.dim() not in (3, 4):
        raise AgdError(f"imresize: expected a (C, H, W) or (N, C, H, W) image, got shape {tuple(img.shape)}")
    in_hw = (img.shape[-2], img.shape[-1])
    (oh, ow), (sh, sw) = output_size(in_hw, scale, size)
    orig = img.dtype
    x = img if orig in (torch.float32, torch.float64) else img.float()
    if uint8_passes:
        # MATLAB works on the integers 0..255 here: do the same, in float64, so ties round as there
        x = torch.floor(x.to(torch.float64).clamp(0, 1) * 255 + 0.5)
    dims = [(-2, in_hw[0], oh, sh), (-1, in_hw[1], ow, sw)]
    dims.sort(key=lambda d: d[3])  # smaller scale first; stable sort keeps height first on ties
    for dim, n_in, n_out, s in dims:
        if n_in == n_out and s == 1.0:
            continue
        idx, w = resize_weights(n_in, n_out, s, kernel, antialias)
        x = resample(x, dim, torch.from_numpy(idx).to(x.device), torch.from_numpy(w).to(x.device, x.dtype))
        if uint8_passes:
            x = torch.floor(x.clamp(0, 255) + 0.5)
    if uint8_passes:
        x = x / 255
    return x.to(orig)


def to_8bit(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to the 8-bit grid (what saving the image would do); stays float."""
    return (x.clamp(0, 1) * 255).round() / 255


def bicubic_degrade(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """The standard SR degradation: MATLAB ``imresize(hr_uint8, 1/scale)`` (bicubic, antialiased), exactly
    as on a ``uint8`` image (8-bit rounding after each pass); ``hr`` is rounded to 8 bits first."""
    return imresize(to_8bit(hr), 1 / scale, uint8_passes=True)


def fit_image(img: torch.Tensor, max_side: int | None, multiple: int) -> torch.Tensor:
    """Downscale a (C, H, W) image with antialiased bicubic so its longest side is at most ``max_side``
    (None: no limit), then crop it to a multiple of ``multiple`` on each side."""
    _, h, w = img.shape
    if max_side and max(h, w) > max_side:
        s = max_side / max(h, w)
        img = imresize(img, size=(max(multiple, round(h * s)), max(multiple, round(w * s)))).clamp(0, 1)
        _, h, w = img.shape
    h2, w2 = h - h % multiple, w - w % multiple
    if h2 == 0 or w2 == 0:
        raise AgdError(f"image of {h}x{w} pixels is smaller than {multiple} pixels on a side")
    return img[:, :h2, :w2].contiguous()
