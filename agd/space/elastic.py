"""Elastic ("slimmable") layers: an ordinary conv / norm whose weights are stored at the largest width and
which runs at any smaller width by using the leading channels.

Called without a width (``layer(x)``) with an input of the full width, each of them is exactly its torch
base class (``nn.Conv2d``, ``nn.ConvTranspose2d``, ``nn.InstanceNorm2d``): a derived generator built at
its chosen widths is a plain network of standard ops. Inside the supernet the same classes run narrower:
the input width is read from the input tensor, the output width is passed as ``out``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _pad(x: torch.Tensor, padding: tuple[int, int], mode: str) -> tuple[torch.Tensor, tuple[int, int]]:
    """Explicit padding for the non-zero padding modes (as ``nn.Conv2d`` does); returns the conv padding."""
    if mode == "zeros" or padding == (0, 0):
        return x, padding
    ph, pw = padding
    return F.pad(x, (pw, pw, ph, ph), mode=mode), (0, 0)


class ElasticConv2d(nn.Conv2d):
    """``nn.Conv2d`` that also runs on the leading ``x.shape[1]`` input and ``out`` output channels.

    Depthwise convolutions (``groups == in_channels == out_channels``) run at the input's width."""

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.groups == self.in_channels == self.out_channels

    def forward(self, x: torch.Tensor, out: int | None = None) -> torch.Tensor:  # type: ignore[override]
        cin = x.shape[1]
        if cin == self.in_channels and (out is None or out == self.out_channels):
            return super().forward(x)
        if self.depthwise:
            w, groups, cout = self.weight[:cin], cin, cin
        else:
            if self.groups != 1:
                raise ValueError(f"ElasticConv2d: grouped convolutions (groups={self.groups}) cannot be sliced")
            cout = self.out_channels if out is None else out
            w, groups = self.weight[:cout, :cin], 1
        b = self.bias[:cout] if self.bias is not None else None
        x, padding = _pad(x, self.padding, self.padding_mode)  # type: ignore[arg-type]
        return F.conv2d(x, w, b, self.stride, padding, self.dilation, groups)


class ElasticConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` (groups 1) on the leading input channels and ``out`` output channels."""

    def forward(self, x: torch.Tensor, out: int | None = None) -> torch.Tensor:  # type: ignore[override]
        cin = x.shape[1]
        if cin == self.in_channels and (out is None or out == self.out_channels):
            return super().forward(x)
        cout = self.out_channels if out is None else out
        w = self.weight[:cin, :cout]  # (C_in, C_out, kH, kW)
        b = self.bias[:cout] if self.bias is not None else None
        return F.conv_transpose2d(x, w, b, self.stride, self.padding, self.output_padding, 1, self.dilation)


class ElasticInstanceNorm2d(nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` (no running statistics) on the leading ``x.shape[1]`` channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        c = x.shape[1]
        if c == self.num_features:
            return super().forward(x)
        w = self.weight[:c] if self.affine else None
        b = self.bias[:c] if self.affine else None
        return F.instance_norm(x, None, None, w, b, True, 0.0, self.eps)


def slice_into(dst: nn.Module, src: nn.Module) -> None:
    """Copy the leading slices of ``src``'s parameters into ``dst`` (same structure, widths <= src's)."""
    src_params = dict(src.named_parameters())
    with torch.no_grad():
        for name, p in dst.named_parameters():
            s = src_params.get(name)
            if s is None:
                raise KeyError(f"inherit weights: the supernet has no parameter {name!r}")
            if p.dim() != s.dim() or any(a > b for a, b in zip(p.shape, s.shape)):
                raise ValueError(f"inherit weights: {name} {tuple(p.shape)} does not fit in {tuple(s.shape)}")
            p.copy_(s[tuple(slice(0, n) for n in p.shape)])
