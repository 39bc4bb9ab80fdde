"""Run an image model tile by tile and blend the tiles with feathered weights.

Conventions:
- tiles are ``tile`` x ``tile`` input pixels (smaller only where the image is), spread evenly so that
  neighbours overlap by at least ``overlap`` input pixels;
- in each overlap the two tiles are blended with linear ramps that cross at the overlap's middle and
  span half of the nominal overlap (``overlap / 2`` input pixels, times ``scale`` in the output); the
  quarter of the overlap next to each tile's inner edge gets weight 0, so the result equals an
  untiled pass exactly when the model's receptive-field radius is at most ``overlap / 4`` input pixels;
  for larger receptive fields the ramps hide the seams;
- image borders are never faded (weight 1 up to the border); the weights of every pixel sum to one
  (the sums are still divided out, separably per axis);
- memory: one tile's input and output at a time plus the output image;
- a ``fn`` with an attribute ``tileable`` set to False (a :class:`~agd.teachers.Teacher` whose network
  normalises over the whole image, e.g. CycleGAN's InstanceNorm) runs in one pass: per-tile
  statistics would visibly change its output.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from agd.io import AgdError


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of evenly spread tiles covering ``size`` pixels with at least ``overlap`` shared."""
    if size <= tile:
        return [0]
    n = math.ceil((size - overlap) / (tile - overlap))
    return [(i * (size - tile)) // (n - 1) for i in range(n)]


def _axis_weights(starts: list[int], length: int, size: int, scale: int, overlap: int,
                  device: torch.device) -> list[torch.Tensor]:
    """Per-tile 1-D output-space weights along one axis."""
    half_ramp = max(overlap * scale / 4.0, 0.5)
    out = []
    for i, s in enumerate(starts):
        n = min(length, size - s) * scale
        d = torch.arange(n, dtype=torch.float64, device=device) + 0.5  # distance from the tile's start
        w = torch.ones(n, dtype=torch.float64, device=device)
        if i > 0:  # shared with the previous tile
            ov = (starts[i - 1] + length - s) * scale
            w = w * ((d - ov / 2 + half_ramp) / (2 * half_ramp)).clamp(0, 1)
        if i + 1 < len(starts):  # shared with the next tile
            ov = (s + length - starts[i + 1]) * scale
            w = w * ((n - d - ov / 2 + half_ramp) / (2 * half_ramp)).clamp(0, 1)
        out.append(w)
    return out


def tiled_forward(
    fn: Callable[[torch.Tensor], torch.Tensor],
    img: torch.Tensor,
    *,
    scale: int,
    tile: int = 256,
    overlap: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """``fn`` applied to ``img`` (N, C, H, W) tile by tile; returns (N, C', H * scale, W * scale).

    ``tile <= 0``, an image no larger than one tile, or ``fn.tileable == False`` runs one pass.
    ``progress(done, total)`` is called after each tile. ``overlap`` must be less than half the tile.
    """
    if img.ndim != 4:
        raise AgdError(f"tiled_forward: expected an (N, C, H, W) image, got shape {tuple(img.shape)}")
    if scale < 1 or int(scale) != scale:
        raise AgdError(f"tiled_forward: scale must be a positive integer, got {scale}")
    n, _, h, w = img.shape
    if tile <= 0 or (h <= tile and w <= tile) or not getattr(fn, "tileable", True):
        out = fn(img)
        _check_shape(out, n, h, w, h, w, scale)
        if progress is not None:
            progress(1, 1)
        return out
    if overlap < 0 or 2 * overlap >= tile:
        raise AgdError(f"tiled_forward: overlap {overlap} must be >= 0 and less than half the tile {tile}")
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    total = len(ys) * len(xs)
    out = wy_all = wx_all = None
    wys = wxs = None
    done = 0
    for iy, y0 in enumerate(ys):
        for ix, x0 in enumerate(xs):
            th, tw = min(tile, h - y0), min(tile, w - x0)
            piece = fn(img[:, :, y0:y0 + th, x0:x0 + tw])
            _check_shape(piece, n, th, tw, h, w, scale)
            if out is None:
                dev = piece.device
                out = torch.zeros(n, piece.shape[1], h * scale, w * scale, dtype=piece.dtype, device=dev)
                wys = _axis_weights(ys, tile, h, scale, overlap, dev)
                wxs = _axis_weights(xs, tile, w, scale, overlap, dev)
                wy_all = torch.zeros(h * scale, dtype=torch.float64, device=dev)
                wx_all = torch.zeros(w * scale, dtype=torch.float64, device=dev)
                for y, wt in zip(ys, wys):
                    wy_all[y * scale:y * scale + wt.numel()] += wt
                for x, wt in zip(xs, wxs):
                    wx_all[x * scale:x * scale + wt.numel()] += wt
            wgt = (wys[iy][:, None] * wxs[ix][None, :]).to(piece.dtype)
            out[:, :, y0 * scale:(y0 + th) * scale, x0 * scale:(x0 + tw) * scale] += piece * wgt
            done += 1
            if progress is not None:
                progress(done, total)
    norm = (wy_all[:, None] * wx_all[None, :]).to(out.dtype)
    return out.div_(norm)


def _check_shape(y: torch.Tensor, n: int, th: int, tw: int, h: int, w: int, scale: int) -> None:
    if not torch.is_tensor(y) or y.ndim != 4 or y.shape[0] != n or tuple(y.shape[-2:]) != (th * scale, tw * scale):
        got = tuple(y.shape) if torch.is_tensor(y) else type(y).__name__
        raise AgdError(f"tiled_forward: the model maps a {th}x{tw} input to {got}, expected "
                       f"(N={n}, C, {th * scale}, {tw * scale}) for scale {scale} (image {h}x{w})")
