"""The block ops agd.arch.fast puts derived generators on, differentiable: depthwise 3x3 convolution
(``agd::dwconv3x3``) and the fused residual epilogue (``agd::norm_act_residual``); the inference-only fused
ops are in :mod:`agd.ops.fused`. Kernels: csrc/cpu/{dwconv3x3,residual}.cpp in agd/_C*.so; CUDA in csrc/cuda/,
built into agd/_C_cuda*.so only with a CUDA torch and nvcc. Registration and loading: :mod:`agd.ops.library`.

Conventions shared with the kernels:
- activations by code: :data:`agd.ops.activations.ACT_CODES` (none 0, relu 1, leaky relu 2 with
  ``negative_slope``, tanh 3);
- instance norm = statistics over H x W per (n, c), biased variance, ``eps`` inside the sqrt,
  optional per-channel affine; no running statistics;
- CPU kernels compute float32 and float64 (float16/bfloat16 in float32); the CUDA kernels
  float32/float16/bfloat16 with float32 accumulation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from agd.ops import library
from agd.ops.activations import ACT_CODES, act_code, act_forward, act_grad
from agd.ops.library import LIB as _LIB


def blocks_backend(device: torch.device | str) -> tuple[str, str]:
    """(backend, reason) of the block ops on ``device``: "cpp" (C++ CPU kernels), "cuda" (agd's CUDA
    kernels) or "reference" (the PyTorch references, with the reason the compiled ones do not run)."""
    return library.backend_for(device)


def use_reference(x: torch.Tensor) -> bool:
    """Call the reference directly: the compiled kernel cannot run, or was disabled after it was
    registered (then the registered kernel would still win inside torch.ops)."""
    if torch.compiler.is_compiling():
        return False
    return blocks_backend(x.device)[0] == "reference"


def check_act(act: int) -> None:
    torch._check_value(act in ACT_CODES.values(), lambda: f"agd: activation code {act} is not one of {ACT_CODES}")


# ---- dwconv3x3: out = conv2d(x, w, stride, padding=dilation, dilation, groups=C), no bias

_LIB.define("dwconv3x3(Tensor x, Tensor weight, int stride, int dilation) -> Tensor")
_LIB.define(
    "dwconv3x3_backward(Tensor grad, Tensor x, Tensor weight, int stride, int dilation) -> (Tensor, Tensor)"
)


def _check_dwconv_args(x: torch.Tensor, weight: torch.Tensor, stride: int, dilation: int) -> tuple[int, int]:
    torch._check_value(x.dim() == 4, lambda: f"agd::dwconv3x3: x must be 4-D (N, C, H, W), got {x.dim()}-D")
    c = x.shape[1]
    torch._check_value(
        tuple(weight.shape) == (c, 1, 3, 3),
        lambda: f"agd::dwconv3x3: weight must be ({c}, 1, 3, 3), got {tuple(weight.shape)}",
    )
    torch._check_value(stride in (1, 2), lambda: f"agd::dwconv3x3: stride must be 1 or 2, got {stride}")
    torch._check_value(dilation in (1, 2), lambda: f"agd::dwconv3x3: dilation must be 1 or 2, got {dilation}")
    return (x.shape[2] - 1) // stride + 1, (x.shape[3] - 1) // stride + 1


def dwconv3x3_reference(x: torch.Tensor, weight: torch.Tensor, stride: int = 1, dilation: int = 1) -> torch.Tensor:
    """PyTorch reference: ``F.conv2d`` with ``groups = C`` and zero padding ``dilation``."""
    _check_dwconv_args(x, weight, stride, dilation)
    return F.conv2d(x, weight.to(x.dtype), None, stride, dilation, dilation, x.shape[1])


def dwconv3x3_backward_reference(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, stride: int,
                                 dilation: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_x, grad_weight) of :func:`dwconv3x3_reference` (``torch.nn.grad``)."""
    _check_dwconv_args(x, weight, stride, dilation)
    c = x.shape[1]
    gx = torch.nn.grad.conv2d_input(x.shape, weight.to(grad.dtype), grad, stride, dilation, dilation, c)
    gw = torch.nn.grad.conv2d_weight(x.to(grad.dtype), weight.shape, grad, stride, dilation, dilation, c)
    return gx.to(x.dtype), gw.to(weight.dtype)


_LIB.impl("dwconv3x3", dwconv3x3_reference, "CompositeExplicitAutograd")
_LIB.impl("dwconv3x3_backward", dwconv3x3_backward_reference, "CompositeExplicitAutograd")


@torch.library.register_fake("agd::dwconv3x3", lib=_LIB)
def _dwconv3x3_fake(x, weight, stride, dilation):
    oh, ow = _check_dwconv_args(x, weight, stride, dilation)
    return x.new_empty((x.shape[0], x.shape[1], oh, ow))


@torch.library.register_fake("agd::dwconv3x3_backward", lib=_LIB)
def _dwconv3x3_backward_fake(grad, x, weight, stride, dilation):
    _check_dwconv_args(x, weight, stride, dilation)
    return x.new_empty(x.shape), weight.new_empty(weight.shape)


def _dwconv3x3_setup_context(ctx, inputs, output) -> None:
    x, weight, stride, dilation = inputs
    ctx.stride, ctx.dilation = stride, dilation
    ctx.save_for_backward(x, weight)


def _dwconv3x3_backward(ctx, grad: torch.Tensor):
    x, weight = ctx.saved_tensors
    gx, gw = torch.ops.agd.dwconv3x3_backward(grad, x, weight, ctx.stride, ctx.dilation)
    return (gx if ctx.needs_input_grad[0] else None), (gw if ctx.needs_input_grad[1] else None), None, None


torch.library.register_autograd("agd::dwconv3x3", _dwconv3x3_backward, setup_context=_dwconv3x3_setup_context, lib=_LIB)


def dwconv3x3(x: torch.Tensor, weight: torch.Tensor, stride: int = 1, dilation: int = 1) -> torch.Tensor:
    """Depthwise 3x3 convolution with zero padding ``dilation`` (stride 1/2, dilation 1/2), no bias;
    the compiled kernel when it runs on x's device (keeps x's memory format), the reference otherwise.
    Differentiable in x and weight."""
    if use_reference(x):
        return dwconv3x3_reference(x, weight, stride, dilation)
    return torch.ops.agd.dwconv3x3(x, weight, stride, dilation)


# ---- norm_act_residual: out = act(IN(y) * weight + bias + shortcut), plus (mean, rstd)

_LIB.define(
    "norm_act_residual(Tensor y, Tensor? shortcut, Tensor? weight, Tensor? bias, bool norm, int act, "
    "float negative_slope, float eps) -> (Tensor, Tensor, Tensor)"
)
_LIB.define(
    "norm_act_residual_backward(Tensor grad, Tensor y, Tensor out, Tensor mean, Tensor rstd, Tensor? weight, "
    "bool norm, int act, float negative_slope, bool has_shortcut, bool has_bias) -> (Tensor, Tensor, Tensor, Tensor)"
)


def _check_residual_args(y, shortcut, weight, bias, act) -> None:
    torch._check_value(y.dim() == 4, lambda: f"agd::norm_act_residual: y must be 4-D, got {y.dim()}-D")
    check_act(act)
    if shortcut is not None:
        torch._check_value(
            shortcut.shape == y.shape,
            lambda: f"agd::norm_act_residual: shortcut {tuple(shortcut.shape)} must have y's shape {tuple(y.shape)}",
        )
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            torch._check_value(
                t.numel() == y.shape[1], lambda: f"agd::norm_act_residual: {name} needs {y.shape[1]} values, got {t.numel()}"
            )


def norm_act_residual_reference(y, shortcut, weight, bias, norm: bool, act: int, negative_slope: float = 0.2,
                                eps: float = 1e-5):
    """PyTorch reference: (out, mean, rstd); mean/rstd are (N, C) (empty when ``norm`` is off)."""
    _check_residual_args(y, shortcut, weight, bias, act)
    n, c = y.shape[:2]
    if norm:
        # float16 / bfloat16: statistics in float32, as the kernels keep them (rounded statistics cost the
        # backward most of its accuracy)
        yc = y.float() if y.dtype in (torch.float16, torch.bfloat16) else y
        var, mean = torch.var_mean(yc, dim=(2, 3), unbiased=False, keepdim=True)
        rstd = torch.rsqrt(var + eps)
        z = ((yc - mean) * rstd).to(y.dtype)
        mean, rstd = mean.reshape(n, c), rstd.reshape(n, c)
    else:
        z = y
        mean = rstd = y.new_empty((0, 0), dtype=_stats_dtype(y.dtype))
    if weight is not None:
        z = z * weight.reshape(1, -1, 1, 1)
    if bias is not None:
        z = z + bias.reshape(1, -1, 1, 1)
    if shortcut is not None:
        z = z + shortcut
    out = act_forward(z, act, negative_slope).contiguous(memory_format=_residual_out_format(y))
    return out, mean.contiguous(), rstd.contiguous()


def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of norm_act_residual's (mean, rstd): float32 for float16 / bfloat16 inputs, else theirs."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _residual_out_format(y: torch.Tensor) -> torch.memory_format:
    """The epilogue's output layout: channels-last for a channels-last y (C > 1), else contiguous NCHW."""
    cl = y.shape[1] > 1 and y.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if cl else torch.contiguous_format


def norm_act_residual_backward_reference(grad, y, out, mean, rstd, weight, norm: bool, act: int,
                                         negative_slope: float, has_shortcut: bool, has_bias: bool):
    """(grad_y, grad_shortcut, grad_weight, grad_bias) of :func:`norm_act_residual_reference`'s ``out``;
    empty tensors for absent inputs. The activation's derivative is taken from ``out``."""
    g = grad * act_grad(out, act, negative_slope, of_output=True).to(grad.dtype)
    n, c = y.shape[:2]
    if norm:  # float16 / bfloat16: in float32 with the float32 statistics, cast back at the end
        g = g.to(mean.dtype)
        z = (y.to(mean.dtype) - mean.reshape(n, c, 1, 1)) * rstd.reshape(n, c, 1, 1)
    else:
        z = y
    wc = weight.reshape(1, -1, 1, 1).to(g.dtype) if weight is not None else 1.0
    gz = g * wc
    if norm:
        gy = rstd.reshape(n, c, 1, 1) * (gz - gz.mean((2, 3), keepdim=True) - z * (gz * z).mean((2, 3), keepdim=True))
    else:
        gy = gz
    empty = y.new_empty((0,))
    gw = (g * z).sum((0, 2, 3)).to(y.dtype) if weight is not None else empty
    gb = g.sum((0, 2, 3)).to(y.dtype) if has_bias else empty
    gs = g.to(y.dtype).contiguous() if has_shortcut else empty
    return gy.to(y.dtype).contiguous(), gs, gw, gb


_LIB.impl("norm_act_residual", norm_act_residual_reference, "CompositeExplicitAutograd")
_LIB.impl("norm_act_residual_backward", norm_act_residual_backward_reference, "CompositeExplicitAutograd")


@torch.library.register_fake("agd::norm_act_residual", lib=_LIB)
def _norm_act_residual_fake(y, shortcut, weight, bias, norm, act, negative_slope, eps):
    _check_residual_args(y, shortcut, weight, bias, act)
    stats = (y.shape[0], y.shape[1]) if norm else (0, 0)
    return (torch.empty(y.shape, dtype=y.dtype, device=y.device, memory_format=_residual_out_format(y)),
            y.new_empty(stats, dtype=_stats_dtype(y.dtype)), y.new_empty(stats, dtype=_stats_dtype(y.dtype)))


@torch.library.register_fake("agd::norm_act_residual_backward", lib=_LIB)
def _norm_act_residual_backward_fake(grad, y, out, mean, rstd, weight, norm, act, negative_slope, has_shortcut,
                                     has_bias):
    c = y.shape[1]
    return (y.new_empty(y.shape), y.new_empty(y.shape if has_shortcut else (0,)),
            y.new_empty((c,) if weight is not None else (0,)), y.new_empty((c,) if has_bias else (0,)))


def _norm_act_residual_setup_context(ctx, inputs, output) -> None:
    y, shortcut, weight, bias, norm, act, slope, _eps = inputs
    out, mean, rstd = output
    ctx.mark_non_differentiable(mean, rstd)
    ctx.norm, ctx.act, ctx.slope = norm, act, slope
    ctx.has_shortcut, ctx.has_weight, ctx.has_bias = shortcut is not None, weight is not None, bias is not None
    ctx.save_for_backward(y, out, mean, rstd, weight)


def _norm_act_residual_backward(ctx, grad_out, _grad_mean, _grad_rstd):
    y, out, mean, rstd, weight = ctx.saved_tensors
    gy, gs, gw, gb = torch.ops.agd.norm_act_residual_backward(
        grad_out, y, out, mean, rstd, weight if ctx.has_weight else None, ctx.norm, ctx.act, ctx.slope,
        ctx.has_shortcut, ctx.has_bias,
    )
    return (gy, gs if ctx.has_shortcut else None, gw if ctx.has_weight else None, gb if ctx.has_bias else None,
            None, None, None, None)


torch.library.register_autograd(
    "agd::norm_act_residual", _norm_act_residual_backward, setup_context=_norm_act_residual_setup_context, lib=_LIB
)


def norm_act_residual(y: torch.Tensor, shortcut: torch.Tensor | None = None, weight: torch.Tensor | None = None,
                      bias: torch.Tensor | None = None, *, norm: bool = True, act: str = "relu",
                      negative_slope: float = 0.2, eps: float = 1e-5) -> torch.Tensor:
    """The residual epilogue ``act(IN(y) * weight + bias + shortcut)`` in one op (each part optional;
    ``act`` a name of ACT_CODES). Differentiable in y, shortcut, weight and bias."""
    code = act_code(act, "norm_act_residual")
    if use_reference(y):
        return norm_act_residual_reference(y, shortcut, weight, bias, norm, code, negative_slope, eps)[0]
    return torch.ops.agd.norm_act_residual(y, shortcut, weight, bias, norm, code, negative_slope, eps)[0]

