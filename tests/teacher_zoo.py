"""Pretrained generator architectures that agd has no built-in loader for.

The tests use these as a user's own teachers, named the way a user would name them on the command
line (``teacher_zoo:imdn_x4`` and so on, with ``tests/`` importable). Each factory takes no argument,
builds the network, loads the real published weights from ``../shared/data/weights`` (relative to the
project root) strictly, and returns the module in eval mode. The weight files are never part of the
project; a missing one raises FileNotFoundError naming it.

- ``imdn_x4``: IMDN x4 (Hui et al. 2019, information multi-distillation network), RGB in [0, 1].
- ``srvgg_x4``: Real-ESRGAN's compact VGG-style x4 network (realesr-animevideov3), RGB in [0, 1].
- ``horse2zebra_mobile``: GAN Compression's compressed horse2zebra ResNet generator, RGB in [-1, 1].
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

try:  # the tests' own notion of where the shared data lives
    from conftest import SHARED_DATA
except ImportError:  # imported outside the test suite
    SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

WEIGHTS = SHARED_DATA / "weights"


def _state_dict(name: str) -> dict[str, torch.Tensor]:
    """The tensors of ``WEIGHTS/name``, without a ``{'params': ...}`` wrapper or a ``module.`` prefix."""
    path = WEIGHTS / name
    if not path.is_file():
        raise FileNotFoundError(f"teacher weights {path} are missing (see ../shared/data/README.md)")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("params_ema", "params", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def _loaded(model: nn.Module, name: str) -> nn.Module:
    model.load_state_dict(_state_dict(name), strict=True)
    return model.eval()


# ------------------------------------------------------------------------------------------ IMDN

def _conv(cin: int, cout: int, k: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2)


class ContrastChannelAttention(nn.Module):
    """Channel attention driven by each channel's mean plus standard deviation (its "contrast")."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, channels // reduction, 1), nn.ReLU(inplace=True),
            nn.Conv2d(channels // reduction, channels, 1), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = (x - mean).pow(2).mean(dim=(2, 3), keepdim=True).sqrt()
        return x * self.conv_du(std + mean)


class IMDBlock(nn.Module):
    """Information multi-distillation block: three 3x3 convs each keep a quarter of their channels
    (the distilled part) and pass the rest on; a fourth conv makes the last quarter; the four parts
    are concatenated, reweighted by contrast attention, fused by a 1x1 conv and added to the input."""

    def __init__(self, channels: int = 64, distilled: float = 0.25, slope: float = 0.05):
        super().__init__()
        self.d = int(channels * distilled)
        self.r = channels - self.d
        self.c1 = _conv(channels, channels, 3)
        self.c2 = _conv(self.r, channels, 3)
        self.c3 = _conv(self.r, channels, 3)
        self.c4 = _conv(self.r, self.d, 3)
        self.act = nn.LeakyReLU(slope, inplace=True)
        self.cca = ContrastChannelAttention(self.d * 4)
        self.c5 = nn.Conv2d(self.d * 4, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = []
        h = x
        for conv in (self.c1, self.c2, self.c3):
            keep, h = torch.split(self.act(conv(h)), (self.d, self.r), dim=1)
            parts.append(keep)
        parts.append(self.c4(h))
        return self.c5(self.cca(torch.cat(parts, dim=1))) + x


class IMDN(nn.Module):
    """Shallow 3x3 feature conv, six IMD blocks whose outputs are concatenated and fused (1x1 conv +
    LeakyReLU), a 3x3 conv with a long skip from the shallow features, then conv + pixel shuffle."""

    def __init__(self, scale: int = 4, channels: int = 64, n_blocks: int = 6, slope: float = 0.05):
        super().__init__()
        self.scale = scale
        self.n_blocks = n_blocks
        self.fea_conv = _conv(3, channels, 3)
        for i in range(n_blocks):
            setattr(self, f"IMDB{i + 1}", IMDBlock(channels, slope=slope))
        self.c = nn.Sequential(nn.Conv2d(channels * n_blocks, channels, 1), nn.LeakyReLU(slope, inplace=True))
        self.LR_conv = _conv(channels, channels, 3)
        self.upsampler = nn.Sequential(_conv(channels, 3 * scale * scale, 3), nn.PixelShuffle(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fea = self.fea_conv(x)
        outs = []
        h = fea
        for i in range(self.n_blocks):
            h = getattr(self, f"IMDB{i + 1}")(h)
            outs.append(h)
        return self.upsampler(self.LR_conv(self.c(torch.cat(outs, dim=1))) + fea)


def imdn_x4() -> nn.Module:
    """IMDN x4 with its published DIV2K bicubic weights (IMDN_x4.pth, 715,176 parameters)."""
    return _loaded(IMDN(scale=4), "IMDN_x4.pth")


# ------------------------------------------------------------------------------- SRVGGNetCompact

class SRVGGCompact(nn.Module):
    """A plain stack of 3x3 convs with per-channel PReLU at low resolution, a last conv to
    3 * scale^2 channels and a pixel shuffle; the nearest-upsampled input is added (residual)."""

    def __init__(self, scale: int = 4, channels: int = 64, n_convs: int = 16):
        super().__init__()
        self.scale = scale
        layers: list[nn.Module] = [_conv(3, channels, 3), nn.PReLU(channels)]
        for _ in range(n_convs):
            layers += [_conv(channels, channels, 3), nn.PReLU(channels)]
        layers.append(_conv(channels, 3 * scale * scale, 3))
        self.body = nn.Sequential(*layers)
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.body(x)) + F.interpolate(x, scale_factor=self.scale, mode="nearest")


def srvgg_x4() -> nn.Module:
    """Real-ESRGAN realesr-animevideov3 (SRVGGNetCompact x4, 64 features, 16 convs; 621,424 parameters)."""
    return _loaded(SRVGGCompact(scale=4, channels=64, n_convs=16), "realesr-animevideov3.pth")


# ----------------------------------------------------------------------- GAN Compression mobile

def _inorm(c: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(c, affine=False, track_running_stats=False)


class SeparableConv(nn.Module):
    """Depthwise 3x3 conv, instance norm, pointwise 1x1 conv (no padding: the caller reflects)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(cin, cin, 3, groups=cin), _inorm(cin), nn.Conv2d(cin, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class MobileResBlock(nn.Module):
    """x + [reflect-pad, separable conv to ``hidden``, norm, ReLU, (dropout slot), reflect-pad,
    separable conv back, norm](x)."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), SeparableConv(channels, hidden), _inorm(hidden), nn.ReLU(True),
            nn.Identity(),  # dropout, 0 at inference
            nn.ReflectionPad2d(1), SeparableConv(hidden, channels), _inorm(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class SubMobileResnetGenerator(nn.Module):
    """GAN Compression's pruned mobile ResNet generator (9 blocks, two stride-2 downsamplings).

    ``config`` is the searched channel configuration c0..c7: the 7x7 stem has c0 channels, the two
    downsamplings have 2*c0 and 4*c2, the residual trunk has 4*c2 channels with hidden widths 4*c3,
    4*c4, 4*c5 for blocks 1-3, 4-6, 7-9, and the two transposed convs give 2*c6 and c7 channels."""

    def __init__(self, config=(16, 16, 32, 16, 32, 32, 16, 16), n_blocks: int = 9):
        super().__init__()
        c = list(config)
        down = [c[0], c[1] * 2, c[2] * 4]
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), nn.Conv2d(3, c[0], 7), _inorm(c[0]), nn.ReLU(True)]
        cin = c[0]
        for i, cout in enumerate(down[1:]):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), _inorm(cout), nn.ReLU(True)]
            cin = cout
        for i in range(n_blocks):
            layers.append(MobileResBlock(cin, c[3 + i // 3] * 4))
        for cout in (c[6] * 2, c[7]):
            layers += [nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1),
                       _inorm(cout), nn.ReLU(True)]
            cin = cout
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(cin, 3, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def horse2zebra_mobile() -> nn.Module:
    """GAN Compression's compressed horse2zebra generator (config 16_16_32_16_32_32_16_16, 356,867
    parameters). Images in [-1, 1]; height and width must be multiples of 4 for a same-size output."""
    model = _loaded(SubMobileResnetGenerator((16, 16, 32, 16, 32, 32, 16, 16)),
                    "gancompression_horse2zebra_compressed.pth")
    model.value_range = (-1.0, 1.0)
    model.size_multiple = 4
    return model
