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

3 x 3 stride-1 convolutions become Winograd F(4 x 4, 3 x 3) convolutions (Lavin and Gray, 2016). On this
machine's 2 cores MetaSchedule's best direct schedule of the translation body convolution (128 -> 128 at
64 x 64) reaches about 230-250 GFLOP/s, under half the 537 GFLOP/s FMA peak, while oneDNN under
torch.compile reaches about 400. Winograd spends 4x fewer multiplications: each 6 x 6 input tile d becomes
``V = B^T d B``, each filter ``U = G g G^T`` (once, here), the 36 tile positions are 36 independent
(C_out x C_in) @ (C_in x tiles) matrix products ``M = U V``, and ``Y = A^T M A`` gives a 4 x 4 output tile.
The tile extraction is strided slices (rows, then columns) and the transforms are small matrix products
with the constant B^T and A^T, so every step is an ordinary Relax op MetaSchedule tunes. Rounding grows
with the transforms' magnitudes: in float32 about 1e-5 of the output's scale against 3e-7 direct (a
128-channel layer), well inside the artifact's numerical check; :class:`WinogradConv2d` also has
F(2 x 2, 3 x 3), 2.25x fewer multiplications at 5e-7. Narrow convolutions stay direct
(:data:`WINOGRAD_MIN_WIDTH`): the transforms are memory-bound, about 1 ms of the 3.2 ms Winograd form of
the 128-channel body convolution is its two tile-gathering strided-slice stacks.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

# What for_tvm changes, recorded in artifact manifests and latency-table provenance (an entry measured
# without a rewrite is not comparable with one measured with it).
REWRITES = ("conv_transpose2d as sub-pixel conv2d + depth-to-space",
            "strided conv2d as space-to-depth + stride-1 conv2d",
            "3x3 stride-1 conv2d as Winograd F(4x4, 3x3)")

# 3 x 3 convolutions whose channel counts' harmonic mean 2 C_in C_out / (C_in + C_out) is under this stay
# direct: the product saves in proportion to C_in C_out, the transforms cost in proportion to C_in + C_out.
# Tuned on this CPU (384 / 256 trials each, BENCHMARKS.md), Winograd was 1.48x direct at 128 -> 128,
# even at 64 -> 64 and 2.2x slower at 16 -> 16.
WINOGRAD_MIN_WIDTH = 96

# Winograd F(m x m, 3 x 3) transforms (Lavin and Gray 2016; F(4, 3) with interpolation points 0, +-1, +-2)
_WINOGRAD = {
    2: {"BT": [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        "G": [[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]],
        "AT": [[1, 1, 1, 0], [0, 1, -1, -1]]},
    4: {"BT": [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
               [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        "G": [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
              [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
        "AT": [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]},
}


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


class WinogradConv2d(nn.Module):
    """A 3 x 3 stride-1 ``nn.Conv2d`` (groups 1, dilation 1) as pad → Winograd F(tile x tile, 3 x 3)."""

    def __init__(self, conv: nn.Conv2d, tile: int = 4) -> None:
        super().__init__()
        why = winograd_reason(conv, min_width=1)
        if why is not None:
            raise ValueError(f"WinogradConv2d: 3x3, stride 1, groups 1, dilation 1 and numeric padding only ({why})")
        if tile not in _WINOGRAD:
            raise ValueError(f"WinogradConv2d: tile {tile} unsupported (one of {sorted(_WINOGRAD)})")
        mats = _WINOGRAD[tile]
        self.tile, self.pad = tile, tuple(conv.padding)
        self.mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
        g = torch.tensor(mats["G"], dtype=torch.float64)
        w = conv.weight.detach()
        # U[l, k] = (G w G^T)[k, l], batch-major as (column frequency l, row frequency k): the order the
        # column transform leaves the tiles in
        u = torch.einsum("ki,ocij,lj->lkoc", g, w.double(), g)
        self.weight = nn.Parameter(u.reshape(-1, *u.shape[2:]).to(w.dtype), requires_grad=False)
        self.bt = nn.Parameter(torch.tensor(mats["BT"], dtype=w.dtype), requires_grad=False)
        self.at = nn.Parameter(torch.tensor(mats["AT"], dtype=w.dtype), requires_grad=False)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone().reshape(-1, 1, 1),
                                                                requires_grad=False)
        self.out_channels = conv.out_channels

    def forward(self, x: torch.Tensor, out: int | None = None) -> torch.Tensor:
        if out is not None and out != self.out_channels:
            raise ValueError(f"WinogradConv2d: fixed at {self.out_channels} output channels, asked for {out}")
        m, (ph, pw) = self.tile, self.pad
        a = m + 2  # input tile
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph), mode=self.mode)
        n, c, h, w = x.shape
        ho, wo = h - 2, w - 2
        th, tw = -(-ho // m), -(-wo // m)  # tiles per column and row
        hh, ww = th * m + 2, tw * m + 2
        if hh > h or ww > w:  # the last tiles' extra rows and columns only reach the cropped outputs
            x = F.pad(x, (0, ww - w, 0, hh - h))
        rows = torch.stack([x[:, :, i:i + th * m:m, :] for i in range(a)], 0)  # (i, n, c, th, ww)
        u = torch.matmul(self.bt, rows.reshape(a, -1)).reshape(a, n, c, th, ww)  # (k, ...): B^T d
        cols = torch.stack([u[..., j:j + tw * m:m] for j in range(a)], 0)  # (j, k, n, c, th, tw)
        v = torch.matmul(self.bt, cols.reshape(a, -1)).reshape(a * a, n, c, th * tw)  # (l k, ...): (B^T d) B
        if n > 1:
            v = v.transpose(1, 2)
        prod = torch.matmul(self.weight, v.reshape(a * a, c, n * th * tw))  # (l k, C_out, n tiles)
        z = torch.matmul(self.at, prod.reshape(a, -1)).reshape(m, a, -1)  # (q, k, ...): M A over l
        y = torch.matmul(self.at, z)  # (q, p, ...): A^T (M A) over k
        y = y.reshape(m, m, self.out_channels, n, th, tw).permute(3, 2, 4, 1, 5, 0)
        y = y.reshape(n, self.out_channels, th * m, tw * m)
        if (th * m, tw * m) != (ho, wo):
            y = y[:, :, :ho, :wo]
        return y if self.bias is None else y + self.bias


def winograd_reason(m: nn.Module, min_width: int = WINOGRAD_MIN_WIDTH) -> str | None:
    """Why ``m`` is not rewritten into a Winograd convolution (None: it is)."""
    if not isinstance(m, nn.Conv2d):
        return "not a Conv2d"
    if tuple(m.kernel_size) != (3, 3):
        return f"kernel {tuple(m.kernel_size)}, not 3x3"
    if tuple(m.stride) != (1, 1):
        return "strided"
    if m.groups != 1 or tuple(m.dilation) != (1, 1) or isinstance(m.padding, str):
        return "grouped, dilated or 'same'/'valid' padded"
    if 2 * m.in_channels * m.out_channels < min_width * (m.in_channels + m.out_channels):
        return (f"narrow ({m.in_channels} -> {m.out_channels} channels, harmonic mean under {min_width}): "
                "the transforms cost as much as the product saves")
    return None


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


# (why-not test, rewrite class) in the order they are tried; ``for_int8`` (agd.tuning.int8) uses the first two
SUBPIXEL = (subpixel_reason, SubPixelConvTranspose2d)
SPACE_TO_DEPTH = (space_to_depth_reason, SpaceToDepthConv2d)
WINOGRAD = (winograd_reason, WinogradConv2d)
Rewrite = tuple[Callable[[nn.Module], "str | None"], type[nn.Module]]


def replace_modules(model: nn.Module, rewrites: tuple[Rewrite, ...]) -> nn.Module:
    """A copy of ``model`` with every module that one of ``rewrites`` accepts (its test returns None)
    replaced by that rewrite's class built from it, the first accepting one winning (the original is
    untouched; ``model`` itself when there is nothing to rewrite)."""

    def replacement(m: nn.Module) -> type[nn.Module] | None:
        return next((cls for reason, cls in rewrites if reason(m) is None), None)

    if not any(replacement(m) is not None for m in model.modules()):
        return model
    root = replacement(model)  # the model may be one convolution
    if root is not None:
        return root(model).eval()

    def swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            cls = replacement(child)
            if cls is not None:
                setattr(parent, name, cls(child))
            else:
                swap(child)

    out = copy.deepcopy(model).eval()
    swap(out)
    return out


def for_tvm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every transposed convolution as a sub-pixel convolution, every strided
    convolution as a space-to-depth one and every wide 3 x 3 stride-1 one as a Winograd one (the original
    is untouched; ``model`` itself when there is nothing to rewrite). The numerical check of the compiled
    artifact still runs against the original."""
    return replace_modules(model, (SUBPIXEL, SPACE_TO_DEPTH, WINOGRAD))
