"""ESRGAN / Real-ESRGAN RRDBNet as a plain module of standard ops.

Conventions:
- input and output are RGB in [0, 1] (N, C, H, W); the output is *not* clamped in ``forward``;
- attribute names follow the BasicSR layout (``conv_first``, ``body.N.rdb1..rdb3.conv1..conv5``,
  ``conv_body``, ``conv_up1``, ``conv_up2`` [``conv_up3``], ``conv_hr``, ``conv_last``), so BasicSR /
  Real-ESRGAN state dicts load as they are (see :mod:`agd.teachers.loaders` for the official ESRGAN names);
- scale 4 and 8 upsample with 2 / 3 nearest x2 steps, each followed by a 3x3 conv and LeakyReLU(0.2);
  scale 2 and 1 first pixel-unshuffle the input by 2 / 4 (``in_ch * 4`` / ``in_ch * 16`` channels into
  ``conv_first``) and then run the x4 body; inputs whose sides are not a multiple of the unshuffle factor
  are reflect-padded up to one and the output is cropped back (as Real-ESRGAN's inference does);
- residual scaling: 0.2 inside each dense block and 0.2 around each RRDB.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SUPPORTED_SCALES = (1, 2, 4, 8)
RESIDUAL_SCALE = 0.2


def unshuffle_factor(scale: int) -> int:
    """Pixel-unshuffle factor applied to the input for ``scale`` (1 for scale 4 and 8)."""
    return {1: 4, 2: 2}.get(scale, 1)


def num_upsamplings(scale: int) -> int:
    """Number of nearest x2 + conv steps: 2 for scales 1, 2 and 4 (x4 body), 3 for scale 8."""
    return 3 if scale == 8 else 2


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convs with dense connections; ``x + 0.2 * conv5(...)``."""

    def __init__(self, nf: int = 64, gc: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(nf, gc, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf + gc, gc, 3, 1, 1)
        self.conv3 = nn.Conv2d(nf + 2 * gc, gc, 3, 1, 1)
        self.conv4 = nn.Conv2d(nf + 3 * gc, gc, 3, 1, 1)
        self.conv5 = nn.Conv2d(nf + 4 * gc, nf, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x + RESIDUAL_SCALE * x5


class RRDB(nn.Module):
    """Three dense blocks in a row; ``x + 0.2 * rdb3(rdb2(rdb1(x)))``."""

    def __init__(self, nf: int = 64, gc: int = 32) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(nf, gc)
        self.rdb2 = ResidualDenseBlock(nf, gc)
        self.rdb3 = ResidualDenseBlock(nf, gc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + RESIDUAL_SCALE * self.rdb3(self.rdb2(self.rdb1(x)))


class RRDBNet(nn.Module):
    """ESRGAN generator. ``nb`` RRDB blocks of ``nf`` features with growth ``gc``; ``scale`` in 1, 2, 4, 8.

    Conv modules are registered in forward order (``conv_first``, body, ``conv_body``, ``conv_up*``,
    ``conv_hr``, ``conv_last``), which the ncnn loader relies on.
    """

    def __init__(self, in_ch: int = 3, out_ch: int = 3, nf: int = 64, nb: int = 23, gc: int = 32,
                 scale: int = 4) -> None:
        super().__init__()
        if scale not in SUPPORTED_SCALES:
            raise ValueError(f"RRDBNet scale must be one of {SUPPORTED_SCALES}, got {scale}")
        self.in_ch, self.out_ch, self.nf, self.nb, self.gc, self.scale = in_ch, out_ch, nf, nb, gc, scale
        f = unshuffle_factor(scale)
        self.conv_first = nn.Conv2d(in_ch * f * f, nf, 3, 1, 1)
        self.body = nn.Sequential(*(RRDB(nf, gc) for _ in range(nb)))
        self.conv_body = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(nf, nf, 3, 1, 1)
        if num_upsamplings(scale) == 3:
            self.conv_up3 = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_hr = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, out_ch, 3, 1, 1)
        self.lrelu = nn.LeakyReLU(0.2)

    def up_convs(self) -> list[nn.Conv2d]:
        return [self.conv_up1, self.conv_up2] + ([self.conv_up3] if hasattr(self, "conv_up3") else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = unshuffle_factor(self.scale)
        h, w = x.shape[-2:]
        if f > 1:
            ph, pw = (-h) % f, (-w) % f
            if ph or pw:
                mode = "reflect" if ph < h and pw < w else "replicate"
                x = F.pad(x, (0, pw, 0, ph), mode=mode)
            x = F.pixel_unshuffle(x, f)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for conv in self.up_convs():
            feat = self.lrelu(conv(F.interpolate(feat, scale_factor=2.0, mode="nearest")))
        out = self.conv_last(self.lrelu(self.conv_hr(feat)))
        if f > 1 and (out.shape[-2] != h * self.scale or out.shape[-1] != w * self.scale):
            out = out[..., : h * self.scale, : w * self.scale]
        return out
