"""The candidate operators of agd's search spaces, written once.

Each block is built at some (input, output) width and is then an ordinary module of standard torch ops.
In the supernet the same block is built at the layer's largest widths and run narrower: the input width
is the input tensor's, the output width is passed as ``forward(x, out)``; narrower runs use the leading
channels of every weight (slimmable weight sharing). A derived generator builds the block at its chosen
widths, and ``slice_into`` copies the supernet's leading slices into it. Because both are one class, the
supernet and the derived network cannot disagree (AGD's public code had separate twins that did).

Conventions:
- searchable convolutions are bias-free (a norm, if any, follows);
- ``resblock``: conv3x3 → norm → act → conv3x3 → norm, plus shortcut, then act;
- ``dwsblock``: 1x1 expand to ``expansion x C_in`` → norm → act → depthwise 3x3 → norm → act → 1x1 project
  → norm, plus shortcut, then act; the hidden width follows the *active* input width;
- shortcut: identity when the active input and output widths are equal, otherwise 1x1 conv → norm;
- ``identity``: only where input and output widths are equal (a removed layer); in the supernet, where a
  sampled width differs, it truncates or zero-pads channels.
MACs (``block.macs(c_in, c_out, h, w)``, ``h, w`` the input size) follow :mod:`agd.cost`'s convention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from agd.space.elastic import ElasticConv2d, ElasticConvTranspose2d, ElasticInstanceNorm2d

NORMS = ("instance", "none")
ACTS = ("relu", "lrelu", "tanh", "none")
PADDINGS = ("zeros", "reflect")


@dataclass(frozen=True)
class Style:
    """How a layer's convolutions are finished: norm, activation, padding, bias."""

    norm: str = "instance"
    norm_affine: bool = False
    act: str = "relu"
    padding: str = "zeros"
    bias: bool = False

    def __post_init__(self) -> None:
        for v, allowed, what in ((self.norm, NORMS, "norm"), (self.act, ACTS, "act"), (self.padding, PADDINGS, "padding")):
            if v not in allowed:
                raise ValueError(f"{what} {v!r} is not one of {allowed}")

    def inner(self) -> "Style":
        """A residual block's inner convolutions: this norm and activation, no bias."""
        return Style(self.norm, self.norm_affine, self.act, self.padding, False)

    def last(self) -> "Style":
        """A residual block's last convolution: this norm, no activation (it follows the sum), no bias."""
        return Style(self.norm, self.norm_affine, "none", self.padding, False)


def make_norm(style: Style, c: int) -> nn.Module:
    if style.norm == "instance":
        return ElasticInstanceNorm2d(c, affine=style.norm_affine)
    return nn.Identity()


def make_act(style: Style) -> nn.Module:
    return {"relu": lambda: nn.ReLU(inplace=False), "lrelu": lambda: nn.LeakyReLU(0.2, inplace=False),
            "tanh": nn.Tanh, "none": nn.Identity}[style.act]()


@dataclass
class EpilogueParts:
    """A block's output before its epilogue: ``act(norm(z) + shortcut)`` equals its ``forward``.

    ``norm`` is the block's last norm module (ElasticInstanceNorm2d) or None; ``act`` its last activation
    module. ``z`` may have more or fewer channels than the output only for Identity (truncate / zero-pad).
    The supernet hands these to a fused epilogue (agd.ops.mixed_epilogue) instead of running ``forward``."""

    z: torch.Tensor
    shortcut: torch.Tensor | None
    norm: nn.Module | None
    act: nn.Module


def conv_out(n: int, k: int, stride: int, padding: int, dilation: int = 1) -> int:
    return (n + 2 * padding - dilation * (k - 1) - 1) // stride + 1


class ConvNormAct(nn.Module):
    """conv (k x k, stride, dilation; or a transposed 3x3 stride-2 upsampling) → norm → act."""

    def __init__(self, c_in: int, c_out: int, k: int, style: Style, *, stride: int = 1, dilation: int = 1,
                 transposed: bool = False, depthwise: bool = False) -> None:
        super().__init__()
        self.k, self.stride, self.dilation, self.transposed, self.depthwise = k, stride, dilation, transposed, depthwise
        if depthwise:
            if c_in != c_out or transposed:
                raise ValueError("a depthwise ConvNormAct keeps its width and is not transposed")
            self.conv = ElasticConv2d(c_in, c_in, k, stride=stride, padding=dilation * (k // 2), dilation=dilation,
                                      groups=c_in, bias=style.bias, padding_mode=style.padding if stride == 1 else "zeros")
        elif transposed:
            self.conv = ElasticConvTranspose2d(c_in, c_out, k, stride=stride, padding=k // 2,
                                               output_padding=stride - 1, bias=style.bias)
        else:
            pad = dilation * (k // 2)
            mode = style.padding if stride == 1 else "zeros"
            self.conv = ElasticConv2d(c_in, c_out, k, stride=stride, padding=pad, dilation=dilation,
                                      bias=style.bias, padding_mode=mode)
        self.norm = make_norm(style, c_out)
        self.act = make_act(style)

    def forward(self, x: torch.Tensor, out: int | None = None) -> torch.Tensor:
        return self.act(self.norm(self.conv(x, out)))

    def epilogue_parts(self, x: torch.Tensor, out: int | None = None) -> EpilogueParts:
        norm = self.norm if isinstance(self.norm, ElasticInstanceNorm2d) else None
        return EpilogueParts(self.conv(x, out), None, norm, self.act)

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        if self.transposed:
            return h * self.stride, w * self.stride
        p = self.dilation * (self.k // 2)
        return conv_out(h, self.k, self.stride, p, self.dilation), conv_out(w, self.k, self.stride, p, self.dilation)

    def macs(self, c_in: int, c_out: int, h: int, w: int) -> int:
        if self.transposed:
            return h * w * c_in * c_out * self.k * self.k
        oh, ow = self.out_hw(h, w)
        return oh * ow * c_out * (1 if self.depthwise else c_in) * self.k * self.k


class Shortcut(nn.Module):
    """Identity when the active widths match, else 1x1 conv → norm (stored at the largest widths)."""

    def __init__(self, c_in: int, c_out: int, style: Style, projection: bool) -> None:
        super().__init__()
        self.proj = ConvNormAct(c_in, c_out, 1, Style(style.norm, style.norm_affine, "none", "zeros", False)) \
            if projection else None

    def forward(self, x: torch.Tensor, out: int) -> torch.Tensor:
        if x.shape[1] == out:
            return x
        if self.proj is None:
            raise ValueError(f"shortcut: widths {x.shape[1]} -> {out} need a projection this block was built without")
        return self.proj(x, out)

    @staticmethod
    def macs(c_in: int, c_out: int, h: int, w: int) -> int:
        return 0 if c_in == c_out else h * w * c_in * c_out


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, style: Style, *, projection: bool | None = None) -> None:
        super().__init__()
        inner, last = style.inner(), style.last()
        self.conv1 = ConvNormAct(c_in, c_out, 3, inner)
        self.conv2 = ConvNormAct(c_out, c_out, 3, last)
        self.shortcut = Shortcut(c_in, c_out, style, c_in != c_out if projection is None else projection)
        self.act = make_act(style)
        self.c_out = c_out

    def forward(self, x: torch.Tensor, out: int | None = None) -> torch.Tensor:
        out = self.c_out if out is None else out
        return self.act(self.conv2(self.conv1(x, out), out) + self.shortcut(x, out))

    def epilogue_parts(self, x: torch.Tensor, out: int | None = None) -> EpilogueParts:
        out = self.c_out if out is None else out
        last = self.conv2.epilogue_parts(self.conv1(x, out), out)  # conv2's activation is the identity
        return EpilogueParts(last.z, self.shortcut(x, out), last.norm, self.act)

    @staticmethod
    def macs(c_in: int, c_out: int, h: int, w: int) -> int:
        return h * w * 9 * (c_in * c_out + c_out * c_out) + Shortcut.macs(c_in, c_out, h, w)


class DwsBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, style: Style, *, expansion: int = 3, projection: bool | None = None) -> None:
        super().__init__()
        self.expansion = expansion
        hidden = expansion * c_in
        inner, last = style.inner(), style.last()
        self.expand = ConvNormAct(c_in, hidden, 1, inner)
        self.depthwise = ConvNormAct(hidden, hidden, 3, inner, depthwise=True)
        self.project = ConvNormAct(hidden, c_out, 1, last)
        self.shortcut = Shortcut(c_in, c_out, style, c_in != c_out if projection is None else projection)
        self.act = make_act(style)
        self.c_out = c_out

    def forward(self, x: torch.Tensor, out: int | None = None) -> torch.Tensor:
        out = self.c_out if out is None else out
        y = self.expand(x, self.expansion * x.shape[1])
        y = self.project(self.depthwise(y), out)
        return self.act(y + self.shortcut(x, out))

    def epilogue_parts(self, x: torch.Tensor, out: int | None = None) -> EpilogueParts:
        out = self.c_out if out is None else out
        y = self.expand(x, self.expansion * x.shape[1])
        last = self.project.epilogue_parts(self.depthwise(y), out)  # project's activation is the identity
        return EpilogueParts(last.z, self.shortcut(x, out), last.norm, self.act)

    def macs(self, c_in: int, c_out: int, h: int, w: int) -> int:
        hidden = self.expansion * c_in
        return h * w * (c_in * hidden + 9 * hidden + hidden * c_out) + Shortcut.macs(c_in, c_out, h, w)


class Identity(nn.Module):
    """A removed layer. Where the supernet samples different widths it truncates or zero-pads channels."""

    def forward(self, x: torch.Tensor, out: int | None = None) -> torch.Tensor:
        c = x.shape[1]
        if out is None or out == c:
            return x
        if out < c:
            return x[:, :out]
        return F.pad(x, (0, 0, 0, 0, 0, out - c))

    def epilogue_parts(self, x: torch.Tensor, out: int | None = None) -> EpilogueParts:
        """z is the input itself: the epilogue truncates or zero-pads it to ``out`` channels."""
        return EpilogueParts(x, None, None, nn.Identity())

    @staticmethod
    def macs(c_in: int, c_out: int, h: int, w: int) -> int:
        return 0


def block_out_hw(block: nn.Module, h: int, w: int) -> tuple[int, int]:
    """Output spatial size of a block (only ConvNormAct changes it)."""
    return block.out_hw(h, w) if isinstance(block, ConvNormAct) else (h, w)
