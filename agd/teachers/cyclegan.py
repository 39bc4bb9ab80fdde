"""CycleGAN ResNet generator in the pytorch-CycleGAN-and-pix2pix layout.

Conventions:
- input and output images are in [-1, 1] (``Tanh`` at the end); :class:`agd.teachers.Teacher` maps
  [0, 1] images in and out;
- ``model`` is one ``nn.Sequential``: ReflectionPad2d(3), Conv 7x7, IN, ReLU, ``n_down`` x [Conv 3x3
  stride 2 pad 1, IN, ReLU], ``n_blocks`` ResnetBlocks, ``n_down`` x [ConvTranspose 3x3 stride 2 pad 1
  output_padding 1, IN, ReLU], ReflectionPad2d(3), Conv 7x7, Tanh — so its indices match pix2pix and
  vintagify state dicts;
- every conv has a bias (pix2pix sets ``use_bias`` when the norm is InstanceNorm); InstanceNorm keeps no
  running statistics, ``norm_affine`` decides whether it has a weight and bias;
- a ResnetBlock keeps its layers as ``block``: [pad, conv3x3, IN, ReLU, pad, conv3x3, IN] with
  ``padding="reflect"``, [conv3x3 (padding 1), IN, ReLU, conv3x3 (padding 1), IN] with ``"zero"``;
- with ``n_down`` downsamplings, sides that are a multiple of ``2 ** n_down`` come back at the same size.
"""

from __future__ import annotations

import torch
from torch import nn

PADDINGS = ("reflect", "zero")


class ResnetBlock(nn.Module):
    """``x + block(x)`` with two 3x3 convs at constant width."""

    def __init__(self, dim: int, norm_affine: bool = False, padding: str = "reflect") -> None:
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        layers: list[nn.Module] = []
        for second in (False, True):
            if padding == "reflect":
                layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, padding=0, bias=True)]
            else:
                layers += [nn.Conv2d(dim, dim, 3, padding=1, bias=True)]
            layers.append(nn.InstanceNorm2d(dim, affine=norm_affine))
            if not second:
                layers.append(nn.ReLU(True))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ResnetGenerator(nn.Module):
    """CycleGAN generator; ``ResnetGenerator()`` is the paper's ResNet-9-block, ngf 64 model."""

    def __init__(self, in_ch: int = 3, out_ch: int = 3, ngf: int = 64, n_blocks: int = 9,
                 norm_affine: bool = False, padding: str = "reflect", n_down: int = 2) -> None:
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        self.in_ch, self.out_ch, self.ngf, self.n_blocks = in_ch, out_ch, ngf, n_blocks
        self.norm_affine, self.padding, self.n_down = norm_affine, padding, n_down

        def norm(c: int) -> nn.Module:
            return nn.InstanceNorm2d(c, affine=norm_affine)

        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(in_ch, ngf, 7, padding=0, bias=True),
                                   norm(ngf), nn.ReLU(True)]
        c = ngf
        for _ in range(n_down):
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=True), norm(2 * c), nn.ReLU(True)]
            c *= 2
        layers += [ResnetBlock(c, norm_affine, padding) for _ in range(n_blocks)]
        for _ in range(n_down):
            layers += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1, bias=True),
                       norm(c // 2), nn.ReLU(True)]
            c //= 2
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(c, out_ch, 7, padding=0, bias=True), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    @property
    def size_multiple(self) -> int:
        """Input sides must be a multiple of this for the output to have the input's size."""
        return 2 ** self.n_down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
