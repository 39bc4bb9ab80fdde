"""Run a derived generator's blocks on agd's fused kernels (inference).

``convert(net, backend)`` returns a copy of a derived generator (from :func:`agd.arch.derive`) in
which
- every :class:`~agd.space.blocks.DwsBlock` is one ``agd::dws_block`` op (the whole block fused, see
  ``csrc/cpu/dws_block.cpp`` for what is fused under instance norm);
- every :class:`~agd.space.blocks.ResBlock` and every non-depthwise
  :class:`~agd.space.blocks.ConvNormAct` with an instance norm (stem, downsampling, conv3x3 / conv1x1
  layers, upsampling of the translation space) runs its convolutions as before and each norm /
  activation / shortcut add as one ``agd::norm_act_residual`` op;
- a norm-free "same" convolution to 1-4 channels (a generator's last layer: the translation head, 7x7
  to RGB at full resolution, and the SR conv_last, 3x3 to RGB) is one ``agd::conv_narrow`` op (NCHW
  inside; 4 and 12 % faster on the whole student than oneDNN's channels-last convolution here);
- on the CPU ("cpp"), every other dense convolution *without* a norm (the SR space's convolutions, residual
  blocks and its whole upsampling tail, the translation space's last layer) runs as one oneDNN
  primitive with its activation, and for residual blocks its shortcut add, fused in
  (``torch.ops.mkldnn._convolution_pointwise``, the op torch.compile's CPU backend emits).
On the CPU, a network whose last layer oneDNN runs (both spaces' generators) runs in channels-last
memory format throughout: oneDNN's convolutions need no reorder (its transposed convolutions run 2.6-4x
slower on NCHW input here), ``agd::norm_act_residual`` has an NHWC path, and only ``agd::dws_block``
and ``agd::conv_narrow`` (NCHW inside) convert on the way in. ``convert(..., channels_last=False)``
keeps NCHW.
Weights are shared with nothing: the copy holds its own parameters (frozen into the converted layers:
convert again after changing weights). The original network is untouched, so it keeps standard ops
for torch.export, ONNX and TVM. The output is an ordinary contiguous NCHW tensor.

Backends: "cpp" (the C++ CPU kernels), "cuda" (agd's CUDA kernels), "reference" (the same op
structure on the PyTorch references; for tests). ``available_backends()`` says which run here, and
``onednn_reason()`` whether the fused oneDNN convolutions do.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from agd import ops
from agd.io import AgdError
from agd.ops.activations import ACT_CODES, ONEDNN_ACTS, act_forward, act_of
from agd.ops.onednn import onednn_reason
from agd.space.blocks import ConvNormAct, DwsBlock, ResBlock
from agd.space.elastic import ElasticConv2d, ElasticInstanceNorm2d

BACKENDS = ("cpp", "cuda", "reference")


def available_backends() -> dict[str, str]:
    """Backend name → "" when it runs here, else the reason it does not."""
    out = {}
    for name, dev in (("cpp", "cpu"), ("cuda", "cuda")):
        backend, why = ops.blocks_backend(dev)
        out[name] = "" if backend == name else why
    out["reference"] = ""
    return out


class _Norm:
    """What an epilogue needs from a block's norm module: on/off, affine parameters, eps."""

    def __init__(self, m: nn.Module) -> None:
        self.on = isinstance(m, ElasticInstanceNorm2d)
        self.weight = m.weight if self.on and m.affine else None
        self.bias = m.bias if self.on and m.affine else None
        self.eps = float(m.eps) if self.on else 1e-5

    def pair(self, like: torch.Tensor) -> list[torch.Tensor]:
        empty = like.new_empty(0)
        return [self.weight if self.weight is not None else empty, self.bias if self.bias is not None else empty]


def _epilogue(backend: str, y, shortcut, norm: _Norm, act: str, slope: float) -> torch.Tensor:
    if backend == "reference":
        return ops.norm_act_residual_reference(y, shortcut, norm.weight, norm.bias, norm.on, ACT_CODES[act],
                                               slope, norm.eps)[0]
    return ops.norm_act_residual(y, shortcut, norm.weight, norm.bias, norm=norm.on, act=act, negative_slope=slope,
                                 eps=norm.eps)


class FastConvNormAct(nn.Module):
    """conv (the original module) → fused instance norm + activation. ``channels_last``: the input is
    made channels-last first, so the convolution (oneDNN) and the epilogue run in NHWC."""

    def __init__(self, m: ConvNormAct, backend: str, channels_last: bool = False) -> None:
        super().__init__()
        self.conv, self.backend = m.conv, backend
        self._norm_module = m.norm
        self.act, self.slope = act_of(m.act)  # type: ignore[misc]
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor, out: int | None = None) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return _epilogue(self.backend, self.conv(x), None, _Norm(self._norm_module), self.act, self.slope)


def _fusable_conv(conv: nn.Module) -> bool:
    return (isinstance(conv, ElasticConv2d) and conv.groups == 1 and conv.padding_mode in ("zeros", "reflect")
            and isinstance(conv.padding, tuple))


class OneDnnConv(nn.Module):
    """A dense convolution, its activation and optionally a residual add before the activation, as one
    oneDNN primitive (inference). ``channels_last``: the input is made channels-last first (a no-op when
    it already is) and so is the output; ``nchw_output`` returns a contiguous NCHW tensor (a network's
    last layer)."""

    def __init__(self, conv: ElasticConv2d, act: str, slope: float, *, channels_last: bool,
                 nchw_output: bool = False) -> None:
        super().__init__()
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.register_buffer("weight", conv.weight.detach().contiguous(memory_format=fmt), persistent=False)
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone(), persistent=False)
        self.reflect = conv.padding_mode == "reflect"
        pad = list(conv.padding)  # type: ignore[arg-type]
        self.pad_reflect = (pad[1], pad[1], pad[0], pad[0]) if self.reflect else None
        self.padding = [0, 0] if self.reflect else pad
        self.stride, self.dilation = list(conv.stride), list(conv.dilation)
        self.act, self.slope = act, slope
        self.fmt, self.nchw_output = fmt, nchw_output

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=self.fmt)
        return F.pad(x, self.pad_reflect, mode="reflect") if self.pad_reflect is not None else x

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        x = self._prep(x)
        pw = torch.ops.mkldnn._convolution_pointwise
        if residual is None:
            scalars = [self.slope] if self.act == "lrelu" else []
            y = pw(x, self.weight, self.bias, self.padding, self.stride, self.dilation, 1, ONEDNN_ACTS[self.act],
                   scalars, "")
        else:
            # oneDNN fuses add + relu / none after a convolution; other activations run in place after it
            fused = self.act if self.act in ("relu", "none") else None
            y = pw.binary(x, residual.contiguous(memory_format=self.fmt), self.weight, self.bias, self.padding,
                          self.stride, self.dilation, 1, "add", None, fused, [], "")
            if fused is None:
                y = act_forward(y, ACT_CODES[self.act], self.slope, inplace=True)
        return y.contiguous() if self.nchw_output else y


class OneDnnConvNormAct(nn.Module):
    """A norm-free :class:`ConvNormAct` as one :class:`OneDnnConv`."""

    def __init__(self, m: ConvNormAct, channels_last: bool) -> None:
        super().__init__()
        act, slope = act_of(m.act)  # type: ignore[misc]
        self.fused = OneDnnConv(m.conv, act, slope, channels_last=channels_last)

    def forward(self, x: torch.Tensor, out: int | None = None) -> torch.Tensor:
        return self.fused(x)


class OneDnnResBlock(nn.Module):
    """A norm-free :class:`ResBlock`: conv1 + act, then conv2 + shortcut + act, each one oneDNN call."""

    def __init__(self, m: ResBlock, channels_last: bool) -> None:
        super().__init__()
        act, slope = act_of(m.act)  # type: ignore[misc]
        self.conv1 = OneDnnConv(m.conv1.conv, act, slope, channels_last=channels_last)
        self.conv2 = OneDnnConv(m.conv2.conv, act, slope, channels_last=channels_last)
        self.proj = None if m.shortcut.proj is None else OneDnnConv(m.shortcut.proj.conv, "none", slope,
                                                                    channels_last=channels_last)
        self.fmt = torch.channels_last if channels_last else torch.contiguous_format

    def forward(self, x: torch.Tensor, out: int | None = None) -> torch.Tensor:
        x = x.contiguous(memory_format=self.fmt)
        s = x if self.proj is None else self.proj(x)
        return self.conv2(self.conv1(x), residual=s)


class FastResBlock(nn.Module):
    """conv3x3 → [IN + act] → conv3x3 → [IN + shortcut + act], shortcut 1x1 → [IN]; [..] one op each.
    ``channels_last`` as for :class:`FastConvNormAct`."""

    def __init__(self, m: ResBlock, backend: str, channels_last: bool = False) -> None:
        super().__init__()
        self.channels_last = channels_last
        self.conv1, self.conv2 = m.conv1.conv, m.conv2.conv
        self.n1, self.n2 = m.conv1.norm, m.conv2.norm
        self.proj = m.shortcut.proj.conv if m.shortcut.proj is not None else None
        self.ns = m.shortcut.proj.norm if m.shortcut.proj is not None else None
        self.act, self.slope = act_of(m.act)  # type: ignore[misc]
        self.backend = backend

    def forward(self, x: torch.Tensor, out: int | None = None) -> torch.Tensor:
        b = self.backend
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = _epilogue(b, self.conv1(x), None, _Norm(self.n1), self.act, self.slope)
        s = x if self.proj is None else _epilogue(b, self.proj(x), None, _Norm(self.ns), "none", self.slope)
        return _epilogue(b, self.conv2(y), s, _Norm(self.n2), self.act, self.slope)


class FastDwsBlock(nn.Module):
    """The whole DwsBlock as one fused op."""

    def __init__(self, m: DwsBlock, backend: str) -> None:
        super().__init__()
        self.w_expand = m.expand.conv.weight
        self.w_dw = m.depthwise.conv.weight
        self.w_project = m.project.conv.weight
        self.w_shortcut = m.shortcut.proj.conv.weight if m.shortcut.proj is not None else None
        self._norms = [m.expand.norm, m.depthwise.norm, m.project.norm,
                       m.shortcut.proj.norm if m.shortcut.proj is not None else nn.Identity()]
        for i, n in enumerate(self._norms):
            self.add_module(f"norm{i}", n)
        self.norm = isinstance(m.expand.norm, ElasticInstanceNorm2d)
        self.act, self.slope = act_of(m.act)  # type: ignore[misc]
        self.reflect = m.depthwise.conv.padding_mode == "reflect"
        self.eps = float(m.expand.norm.eps) if self.norm else 1e-5
        self.affine = self.norm and any(getattr(n, "affine", False) for n in self._norms)
        self.backend = backend

    def forward(self, x: torch.Tensor, out: int | None = None) -> torch.Tensor:
        aff: list[torch.Tensor] = []
        if self.affine:
            for n in self._norms:
                aff += _Norm(n).pair(x)
        channels_last = x.dim() == 4 and x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last)
        args = (x.contiguous(), self.w_expand, self.w_dw, self.w_project, self.w_shortcut, aff)
        if self.backend == "reference":
            y = ops.dws_block_reference(*args, self.norm, ACT_CODES[self.act], self.slope, self.reflect, self.eps)
        else:
            y = ops.dws_block(*args, norm=self.norm, act=self.act, negative_slope=self.slope, reflect=self.reflect,
                              eps=self.eps)
        return y.contiguous(memory_format=torch.channels_last) if channels_last else y


def unsupported_reason(m: nn.Module) -> str | None:
    """Why block ``m`` cannot be converted (None: it can)."""
    if isinstance(m, DwsBlock):
        if m.depthwise.conv.stride != (1, 1) or m.depthwise.conv.dilation != (1, 1):
            return "depthwise stride/dilation other than 1"
        inner, last = act_of(m.expand.act), act_of(m.act)
        if inner is None or last is None or inner != last or act_of(m.depthwise.act) != inner:
            return "its activations differ or are not relu/lrelu/tanh/none"
        norms = [m.expand.norm, m.depthwise.norm, m.project.norm]
        if len({isinstance(n, ElasticInstanceNorm2d) for n in norms}) != 1:
            return "mixed norms"
        if m.depthwise.conv.padding_mode not in ("zeros", "reflect") or m.expand.conv.bias is not None:
            return "padding mode or conv bias not supported"
        return None
    if isinstance(m, ResBlock):
        if act_of(m.act) is None or act_of(m.conv1.act) != act_of(m.act):
            return "its activations differ"
        return None
    if isinstance(m, ConvNormAct):
        if m.depthwise:
            return "a lone depthwise ConvNormAct (only inside DwsBlock)"
        if not isinstance(m.norm, ElasticInstanceNorm2d):
            return "no norm: nothing to fuse"
        if act_of(m.act) is None:
            return "activation not supported"
        return None
    return "not a block"


def onednn_reason_for(m: nn.Module) -> str | None:
    """Why a norm-free dense ConvNormAct / ResBlock cannot run as oneDNN fused convolutions (None: it can)."""
    if isinstance(m, ConvNormAct):
        if m.depthwise or m.transposed or isinstance(m.norm, ElasticInstanceNorm2d):
            return "depthwise, transposed or normalised"
        if not _fusable_conv(m.conv) or act_of(m.act) is None:
            return "grouped conv, padding mode or activation not supported"
        return None
    if isinstance(m, ResBlock):
        convs = [m.conv1, m.conv2] + ([m.shortcut.proj] if m.shortcut.proj is not None else [])
        if any(isinstance(c.norm, ElasticInstanceNorm2d) or not _fusable_conv(c.conv) for c in convs):
            return "normalised, or a convolution oneDNN fusion does not take"
        if act_of(m.act) is None or act_of(m.conv1.act) != act_of(m.act):
            return "its activations differ"
        return None
    return "not a block"


def narrow_reason(m: nn.Module) -> str | None:
    """Why a ConvNormAct cannot run as ``agd::conv_narrow`` (None: it can)."""
    if not isinstance(m, ConvNormAct) or m.depthwise or m.transposed or isinstance(m.norm, ElasticInstanceNorm2d):
        return "not a norm-free dense ConvNormAct"
    c = m.conv
    if not _fusable_conv(c) or c.out_channels > ops.CONV_NARROW_MAX_OUT:
        return f"more than {ops.CONV_NARROW_MAX_OUT} output channels, or grouped"
    k = c.kernel_size
    if k[0] != k[1] or k[0] % 2 == 0 or c.stride != (1, 1) or c.dilation != (1, 1) or c.padding != (k[0] // 2,) * 2:
        return "not a stride-1 'same' convolution with an odd square kernel"
    if act_of(m.act) is None:
        return "activation not supported"
    return None


class FastNarrowConv(nn.Module):
    """A norm-free convolution to 1-4 channels (a generator's last layer) as one ``agd::conv_narrow``."""

    def __init__(self, m: ConvNormAct, backend: str) -> None:
        super().__init__()
        self.conv, self.backend = m.conv, backend
        self.act, self.slope = act_of(m.act)  # type: ignore[misc]
        self.reflect = m.conv.padding_mode == "reflect"

    def forward(self, x: torch.Tensor, out: int | None = None) -> torch.Tensor:
        if self.backend == "reference":
            return ops.conv_narrow_reference(x, self.conv.weight, self.conv.bias, self.reflect, ACT_CODES[self.act],
                                             self.slope)
        return ops.conv_narrow(x, self.conv.weight, self.conv.bias, reflect=self.reflect, act=self.act,
                               negative_slope=self.slope)


def _replacement(child: nn.Module, backend: str, onednn: bool, channels_last: bool) -> nn.Module | None:
    """The fast module for one block, None when it stays as it is (or is not a block)."""
    if backend in ("cpp", "reference") and narrow_reason(child) is None:
        return FastNarrowConv(child, backend)  # type: ignore[arg-type]
    if onednn and isinstance(child, (ConvNormAct, ResBlock)) and onednn_reason_for(child) is None:
        cls = OneDnnResBlock if isinstance(child, ResBlock) else OneDnnConvNormAct
        return cls(child, channels_last)  # type: ignore[arg-type]
    if isinstance(child, DwsBlock) and unsupported_reason(child) is None:
        return FastDwsBlock(child, backend)
    if isinstance(child, (ResBlock, ConvNormAct)) and unsupported_reason(child) is None:
        cls = FastResBlock if isinstance(child, ResBlock) else FastConvNormAct
        return cls(child, backend, channels_last)  # type: ignore[arg-type]
    return None


def _swap(module: nn.Module, backend: str, onednn: bool, channels_last: bool) -> None:
    for name, child in module.named_children():
        new = _replacement(child, backend, onednn, channels_last)
        if new is not None:
            setattr(module, name, new)
        elif not isinstance(child, (DwsBlock, ResBlock, ConvNormAct)):
            _swap(child, backend, onednn, channels_last)


def _last_layer(net: nn.Module) -> nn.Module | None:
    layers = getattr(net, "layers", None)
    return layers[-1] if isinstance(layers, (nn.ModuleList, nn.Sequential)) and len(layers) else None


def convert(net: nn.Module, backend: str = "cpp", channels_last: bool | None = None) -> nn.Module:
    """A copy of ``net`` (eval mode) whose DwsBlock / ResBlock / ConvNormAct layers run on agd's fused
    ops, and on the CPU its norm-free dense convolutions on oneDNN fused convolutions (see the module
    docstring); raises AgdError when ``backend`` does not run here. ``channels_last``: run the network
    in channels-last memory format (None: whenever it can, see the module docstring; True where it
    cannot is an error)."""
    if backend not in BACKENDS:
        raise AgdError(f"backend {backend!r}: not one of {', '.join(BACKENDS)}")
    why = available_backends()[backend]
    if why:
        raise AgdError(f"backend {backend!r} is unavailable: {why}")
    fast = copy.deepcopy(net).eval()
    onednn = backend == "cpp" and onednn_reason() == ""
    last = _last_layer(fast)
    # channels-last only where the last layer is one oneDNN runs (and turns back into NCHW)
    can_cl = onednn and last is not None and onednn_reason_for(last) is None and isinstance(last, ConvNormAct)
    if channels_last and not can_cl:
        raise AgdError("convert: channels_last needs the cpp backend with oneDNN and a norm-free dense last layer")
    channels_last = can_cl if channels_last is None else channels_last
    _swap(fast, backend, onednn, channels_last)
    last = _last_layer(fast)
    if isinstance(last, OneDnnConvNormAct):
        last.fused.nchw_output = True
    return fast


def converted_blocks(net: nn.Module) -> dict[str, int]:
    """How many modules of each fast class ``net`` holds (to report what convert changed)."""
    counts: dict[str, int] = {}
    for m in net.modules():
        if isinstance(m, (FastDwsBlock, FastResBlock, FastConvNormAct, FastNarrowConv, OneDnnConvNormAct,
                          OneDnnResBlock)):
            counts[type(m).__name__] = counts.get(type(m).__name__, 0) + 1
    return counts
