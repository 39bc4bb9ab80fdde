"""Graph rewrites applied before a network is exported for TVM (numerically equivalent forms).

Transposed convolutions become sub-pixel convolutions. TVM legalizes ``conv2d_transpose`` by
dilating the input with zeros and running a dense convolution over the result, so at stride 2 three
quarters of its multiply-adds hit inserted zeros, and the tuned kernel stays slow (13 % of the tuned
translation student each, 5-6x oneDNN's time; BENCHMARKS.md). The same transposed convolution is one
ordinary convolution on the undilated input that writes all s x s output phases as channels, then a
depth-to-space reshuffle:

    y[o, s*m + a, s*n + b] = conv2d(pad(x), Wc)[(o*s + a)*s + b, m, n]

where output phase ``a`` uses the taps ``u`` of the original kernel with ``u == (a + P) mod s``, read
at input offset ``floor((a + P) / s) - (u - (a + P) mod s) / s``. At k = 3, s = 2, P = 1 (the
upsampling layers of both spaces) that is a 2 x 2 convolution to 4 * C_out channels: 16 multiply-adds
per input pixel and output channel instead of 36, and nothing for TVM to gather or scatter.

Strided convolutions become space-to-depth convolutions. MetaSchedule's NCHW schedules of a stride-2
convolution read the input with a stride along the vectorized axis and reach a third to a half of the
speed of the stride-1 ones (69-125 GFLOP/s against about 250 on this machine's translation example). The same
convolution is a stride-1 convolution on the input's s x s phases stacked as channels:

    y = conv2d(cat_{a,b}(pad(x)[:, :, a::s, b::s]), Wd),  Wd[o, (a*s + b)*C + c, i, j] = W[o, c, s*i + a, s*j + b]

(zero where ``s*i + a`` or ``s*j + b`` is past the kernel; phases no tap reaches, as at k < s, are left
out rather than stacked as zero channels). At k = 3, s = 2 (the downsampling layers of
the translation space) that is a 2 x 2 convolution over 4 * C_in channels: 16 multiply-adds per output
pixel and input channel instead of 9, run at the stride-1 kernels' speed. The phases are strided slices
concatenated phase-major: the same shuffle as a reshape / transpose / reshape after the pad compiles to
one TVM kernel that MetaSchedule cannot schedule (9.8 ms for 32 x 258 x 258 floats, against 0.9 ms for
the slices; BENCHMARKS.md).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

# What for_tvm changes, recorded in artifact manifests and latency-table provenance (an entry measured
# without a rewrite is not comparable with one measured with it).
REWRITES = ("conv_transpose2d as sub-pixel conv2d + depth-to-space",
            "strided conv2d as space-to-depth + stride-1 conv2d")


def _phase_taps(k: int, s: int, p: int) -> tuple[list[list[tuple[int, int]]], int, int]:
    """Per output phase ``a`` the (input offset d, kernel tap u) pairs, and the offsets' min and max."""
    phases = []
    for a in range(s):
        r = (a + p) % s
        base = (a + p) // s
        phases.append([(base - (u - r) // s, u) for u in range(r, k, s)])
    offsets = [d for taps in phases for d, _ in taps] or [0]
    return phases, min(offsets), max(offsets)


class SubPixelConvTranspose2d(nn.Module):
    """An ``nn.ConvTranspose2d`` (groups 1, dilation 1) as pad → conv2d → depth-to-space → crop."""

    def __init__(self, ct: nn.ConvTranspose2d) -> None:
        super().__init__()
        if ct.groups != 1 or tuple(ct.dilation) != (1, 1) or ct.padding_mode != "zeros":
            raise ValueError("SubPixelConvTranspose2d: groups 1, dilation 1 and zero padding only")
        (kh, kw), (sh, sw) = ct.kernel_size, ct.stride
        (ph, pw), (oph, opw) = ct.padding, ct.output_padding  # type: ignore[misc]
        self.stride, self.kernel, self.pad, self.out_pad = (sh, sw), (kh, kw), (ph, pw), (oph, opw)
        rows, self.dh0, dh1 = _phase_taps(kh, sh, ph)
        cols, self.dw0, dw1 = _phase_taps(kw, sw, pw)
        w = ct.weight.detach()  # (C_in, C_out, kh, kw)
        cin, cout = w.shape[0], w.shape[1]
        wc = w.new_zeros(cout, sh, sw, cin, dh1 - self.dh0 + 1, dw1 - self.dw0 + 1)
        for a, rtaps in enumerate(rows):
            for b, ctaps in enumerate(cols):
                for dh, u in rtaps:
                    for dw, v in ctaps:
                        wc[:, a, b, :, dh - self.dh0, dw - self.dw0] = w[:, :, u, v].t()
        self.weight = nn.Parameter(wc.reshape(cout * sh * sw, cin, *wc.shape[-2:]), requires_grad=False)
        self.span = (dh1 - self.dh0 + 1, dw1 - self.dw0 + 1)
        bias = None if ct.bias is None else ct.bias.detach().repeat_interleave(sh * sw)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.out_channels = cout

    def forward(self, x: torch.Tensor, out: int | None = None) -> torch.Tensor:
        if out is not None and out != self.out_channels:
            raise ValueError(f"SubPixelConvTranspose2d: fixed at {self.out_channels} output channels, asked for {out}")
        n, _, h, w = x.shape
        (sh, sw), (kh, kw), (ph, pw), (oph, opw) = self.stride, self.kernel, self.pad, self.out_pad
        ho, wo = (h - 1) * sh - 2 * ph + kh + oph, (w - 1) * sw - 2 * pw + kw + opw
        mh, mw = -(-ho // sh), -(-wo // sw)  # outputs per phase
        # input rows m + d for d in [dh0, dh0 + span): pad (or crop) so every read is in range
        top, left = -self.dh0, -self.dw0
        bottom = mh - 1 + self.dh0 + self.span[0] - 1 - (h - 1)
        right = mw - 1 + self.dw0 + self.span[1] - 1 - (w - 1)
        x = F.pad(x, (left, right, top, bottom))
        y = F.conv2d(x, self.weight, self.bias)  # (N, C_out * sh * sw, mh, mw)
        y = y.reshape(n, self.out_channels, sh, sw, mh, mw).permute(0, 1, 4, 2, 5, 3)
        y = y.reshape(n, self.out_channels, mh * sh, mw * sw)
        return y[:, :, :ho, :wo] if (mh * sh, mw * sw) != (ho, wo) else y


class SpaceToDepthConv2d(nn.Module):
    """An ``nn.Conv2d`` with stride > 1 (groups 1, dilation 1) as pad → space-to-depth → stride-1 conv2d."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.groups != 1 or tuple(conv.dilation) != (1, 1) or isinstance(conv.padding, str):
            raise ValueError("SpaceToDepthConv2d: groups 1, dilation 1 and numeric padding only")
        (kh, kw), (sh, sw) = conv.kernel_size, conv.stride
        self.stride, self.kernel, self.pad = (sh, sw), (kh, kw), tuple(conv.padding)
        self.mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
        self.span = (-(-kh // sh), -(-kw // sw))
        # phases the kernel reaches: all s x s when k >= s; a 1x1 stride-2 conv reads one (no zero channels)
        self.phases = (min(sh, kh), min(sw, kw))
        w = conv.weight.detach()  # (C_out, C_in, kh, kw)
        cout, cin = w.shape[:2]
        wd = w.new_zeros(cout, *self.phases, cin, *self.span)
        for a in range(self.phases[0]):
            for b in range(self.phases[1]):
                taps = w[:, :, a::sh, b::sw]  # kernel rows s*i + a, columns s*j + b
                wd[:, a, b, :, :taps.shape[2], :taps.shape[3]] = taps
        self.weight = nn.Parameter(wd.reshape(cout, -1, *self.span), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        self.out_channels = cout

    def forward(self, x: torch.Tensor, out: int | None = None) -> torch.Tensor:
        if out is not None and out != self.out_channels:
            raise ValueError(f"SpaceToDepthConv2d: fixed at {self.out_channels} output channels, asked for {out}")
        (sh, sw), (kh, kw), (ph, pw) = self.stride, self.kernel, self.pad
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph), mode=self.mode)
        h, w = x.shape[2:]
        mh, mw = (h - kh) // sh + 1, (w - kw) // sw + 1  # output size
        # phase rows m + i for i < span: the input must hold s * (m_out - 1 + span) rows; the extra ones
        # (zero padding, or leftovers the slices leave out) only meet the zero taps past the kernel
        hh, ww = sh * (mh - 1 + self.span[0]), sw * (mw - 1 + self.span[1])
        if hh > h or ww > w:
            x = F.pad(x, (0, max(0, ww - w), 0, max(0, hh - h)))
        x = torch.cat([x[:, :, a:hh:sh, b:ww:sw] for a in range(self.phases[0]) for b in range(self.phases[1])], 1)
        return F.conv2d(x, self.weight, self.bias)


def space_to_depth_reason(m: nn.Module) -> str | None:
    """Why ``m`` is not rewritten into a space-to-depth convolution (None: it is)."""
    if not isinstance(m, nn.Conv2d):
        return "not a Conv2d"
    if m.groups != 1 or tuple(m.dilation) != (1, 1) or isinstance(m.padding, str):
        return "grouped, dilated or 'same'/'valid' padded"
    if tuple(m.stride) == (1, 1):
        return "stride 1"
    return None


def subpixel_reason(m: nn.Module) -> str | None:
    """Why ``m`` is not rewritten into a sub-pixel convolution (None: it is)."""
    if not isinstance(m, nn.ConvTranspose2d):
        return "not a ConvTranspose2d"
    if m.groups != 1 or tuple(m.dilation) != (1, 1) or m.padding_mode != "zeros":
        return "grouped, dilated or not zero-padded"
    if tuple(m.stride) == (1, 1):
        return "stride 1 (already an ordinary convolution)"
    return None


def for_tvm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every transposed convolution as a sub-pixel convolution and every strided
    convolution as a space-to-depth one (the original is untouched; ``model`` itself when there is nothing
    to rewrite). The numerical check of the compiled artifact still runs against the original."""
    if not any(subpixel_reason(m) is None or space_to_depth_reason(m) is None for m in model.modules()):
        return model
    out = copy.deepcopy(model).eval()

    def swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if subpixel_reason(child) is None:
                setattr(parent, name, SubPixelConvTranspose2d(child))  # type: ignore[arg-type]
            elif space_to_depth_reason(child) is None:
                setattr(parent, name, SpaceToDepthConv2d(child))  # type: ignore[arg-type]
            else:
                swap(child)

    swap(out)
    return out
