"""Run a derived generator's blocks on agd's fused kernels (inference).

``convert(net, backend)`` returns a copy of a derived generator (from :func:`agd.space.derive`) in
which
- every :class:`~agd.space.blocks.DwsBlock` is one ``agd::dws_block`` op (the whole block fused, see
  ``csrc/cpu/dws_block.cpp`` for what is fused under instance norm);
- every :class:`~agd.space.blocks.ResBlock` runs its two convolutions (and projection) as before and
  each norm / activation / shortcut add as one ``agd::norm_act_residual`` op;
- every non-depthwise :class:`~agd.space.blocks.ConvNormAct` with an instance norm (stem, downsampling,
  conv3x3 / conv1x1 layers, upsampling of the translation space) runs its convolution as before and
  norm + activation as one ``agd::norm_act_residual`` op. ConvNormAct layers without a norm (the SR
  space) are left as they are: an epilogue op would make the same single pass as eager's activation.
Weights are shared with nothing: the copy holds its own parameters. The original network is untouched,
so it keeps standard ops for torch.export, ONNX and TVM.

Backends: "cpp" (the C++ CPU kernels), "cuda" (agd's CUDA kernels), "reference" (the same op
structure on the PyTorch references; for tests). ``available_backends()`` says which run here.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from agd import ops
from agd.io import AgdError
from agd.space.blocks import ConvNormAct, DwsBlock, ResBlock
from agd.space.elastic import ElasticInstanceNorm2d

BACKENDS = ("cpp", "cuda", "reference")


def available_backends() -> dict[str, str]:
    """Backend name → "" when it runs here, else the reason it does not."""
    out = {}
    for name, dev in (("cpp", "cpu"), ("cuda", "cuda")):
        backend, why = ops.blocks_backend(dev)
        if name == "cuda" and not torch.cuda.is_available():
            why = why or "no CUDA device is visible"
            backend = "reference"
        out[name] = "" if backend == name else why
    out["reference"] = ""
    return out


def _act_of(m: nn.Module) -> tuple[str, float] | None:
    """(activation name, negative slope) of an activation module, None when it is not one of ours."""
    if isinstance(m, nn.Identity):
        return "none", 0.2
    if isinstance(m, nn.ReLU):
        return "relu", 0.2
    if isinstance(m, nn.LeakyReLU):
        return "lrelu", float(m.negative_slope)
    if isinstance(m, nn.Tanh):
        return "tanh", 0.2
    return None


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
        return ops.norm_act_residual_reference(y, shortcut, norm.weight, norm.bias, norm.on, ops.ACT_CODES[act],
                                               slope, norm.eps)[0]
    return ops.norm_act_residual(y, shortcut, norm.weight, norm.bias, norm=norm.on, act=act, negative_slope=slope,
                                 eps=norm.eps)


class FastConvNormAct(nn.Module):
    """conv (the original module) → fused instance norm + activation."""

    def __init__(self, m: ConvNormAct, backend: str) -> None:
        super().__init__()
        self.conv, self.backend = m.conv, backend
        self._norm_module = m.norm
        self.act, self.slope = _act_of(m.act)  # type: ignore[misc]

    def forward(self, x: torch.Tensor, out: int | None = None) -> torch.Tensor:
        return _epilogue(self.backend, self.conv(x), None, _Norm(self._norm_module), self.act, self.slope)


class FastResBlock(nn.Module):
    """conv3x3 → [IN + act] → conv3x3 → [IN + shortcut + act], shortcut 1x1 → [IN]; [..] one op each."""

    def __init__(self, m: ResBlock, backend: str) -> None:
        super().__init__()
        self.conv1, self.conv2 = m.conv1.conv, m.conv2.conv
        self.n1, self.n2 = m.conv1.norm, m.conv2.norm
        self.proj = m.shortcut.proj.conv if m.shortcut.proj is not None else None
        self.ns = m.shortcut.proj.norm if m.shortcut.proj is not None else None
        self.act, self.slope = _act_of(m.act)  # type: ignore[misc]
        self.backend = backend

    def forward(self, x: torch.Tensor, out: int | None = None) -> torch.Tensor:
        b = self.backend
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
        self.act, self.slope = _act_of(m.act)  # type: ignore[misc]
        self.reflect = m.depthwise.conv.padding_mode == "reflect"
        self.eps = float(m.expand.norm.eps) if self.norm else 1e-5
        self.affine = self.norm and any(getattr(n, "affine", False) for n in self._norms)
        self.backend = backend

    def forward(self, x: torch.Tensor, out: int | None = None) -> torch.Tensor:
        aff: list[torch.Tensor] = []
        if self.affine:
            for n in self._norms:
                aff += _Norm(n).pair(x)
        args = (x, self.w_expand, self.w_dw, self.w_project, self.w_shortcut, aff)
        if self.backend == "reference":
            return ops.dws_block_reference(*args, self.norm, ops.ACT_CODES[self.act], self.slope, self.reflect, self.eps)
        return ops.dws_block(*args, norm=self.norm, act=self.act, negative_slope=self.slope, reflect=self.reflect,
                             eps=self.eps)


def unsupported_reason(m: nn.Module) -> str | None:
    """Why block ``m`` cannot be converted (None: it can)."""
    if isinstance(m, DwsBlock):
        if m.depthwise.conv.stride != (1, 1) or m.depthwise.conv.dilation != (1, 1):
            return "depthwise stride/dilation other than 1"
        inner, last = _act_of(m.expand.act), _act_of(m.act)
        if inner is None or last is None or inner != last or _act_of(m.depthwise.act) != inner:
            return "its activations differ or are not relu/lrelu/tanh/none"
        norms = [m.expand.norm, m.depthwise.norm, m.project.norm]
        if len({isinstance(n, ElasticInstanceNorm2d) for n in norms}) != 1:
            return "mixed norms"
        if m.depthwise.conv.padding_mode not in ("zeros", "reflect") or m.expand.conv.bias is not None:
            return "padding mode or conv bias not supported"
        return None
    if isinstance(m, ResBlock):
        if _act_of(m.act) is None or _act_of(m.conv1.act) != _act_of(m.act):
            return "its activations differ"
        return None
    if isinstance(m, ConvNormAct):
        if m.depthwise:
            return "a lone depthwise ConvNormAct (only inside DwsBlock)"
        if not isinstance(m.norm, ElasticInstanceNorm2d):
            return "no norm: nothing to fuse"
        if _act_of(m.act) is None:
            return "activation not supported"
        return None
    return "not a block"


def _swap(module: nn.Module, backend: str) -> None:
    for name, child in module.named_children():
        if isinstance(child, (DwsBlock, ResBlock, ConvNormAct)) and unsupported_reason(child) is None:
            cls = {DwsBlock: FastDwsBlock, ResBlock: FastResBlock, ConvNormAct: FastConvNormAct}[type(child)]
            setattr(module, name, cls(child, backend))
        elif not isinstance(child, (DwsBlock, ResBlock, ConvNormAct)):
            _swap(child, backend)


def convert(net: nn.Module, backend: str = "cpp") -> nn.Module:
    """A copy of ``net`` (eval mode) whose DwsBlock / ResBlock / ConvNormAct-with-norm layers run on
    agd's fused ops; raises AgdError when ``backend`` does not run here."""
    if backend not in BACKENDS:
        raise AgdError(f"backend {backend!r}: not one of {', '.join(BACKENDS)}")
    why = available_backends()[backend]
    if why:
        raise AgdError(f"backend {backend!r} is unavailable: {why}")
    fast = copy.deepcopy(net).eval()
    _swap(fast, backend)
    return fast


def converted_blocks(net: nn.Module) -> dict[str, int]:
    """How many modules of each fast class ``net`` holds (to report what convert changed)."""
    counts: dict[str, int] = {}
    for m in net.modules():
        if isinstance(m, (FastDwsBlock, FastResBlock, FastConvNormAct)):
            counts[type(m).__name__] = counts.get(type(m).__name__, 0) + 1
    return counts
