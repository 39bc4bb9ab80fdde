"""resample: sparse separable resampling along one dimension (the op ``agd::resample``).

    out[..., j, ...] = sum_t w[j, t] * x[..., idx[j, t], ...]   (along ``dim``)

The building block of MATLAB-compatible imresize (agd.data.resize) and any other separable filter with a
small support. Registration and loading: :mod:`agd.ops.library`.

Conventions (the C++ kernel in csrc/cpu/resample.cpp follows the same):
- x: float16, bfloat16, float32 or float64, at least 1-D; dim may be negative;
- idx: int64 (out, taps), values in [0, x.shape[dim]); w: idx's shape, x's dtype, x's device;
- float32/float64 accumulate in their own dtype; float16/bfloat16 are computed in float32;
- the result is a new contiguous tensor shaped like x with shape[dim] = out.
"""

from __future__ import annotations

import torch

from agd.ops import library
from agd.ops.library import LIB as _LIB

_RESAMPLE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

_LIB.define("resample(Tensor x, int dim, Tensor idx, Tensor w) -> Tensor")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _check_resample_args(x: torch.Tensor, dim: int, idx: torch.Tensor, w: torch.Tensor) -> int:
    """Validate everything but the values of idx (so it also runs on fake tensors); return dim >= 0."""
    torch._check_type(
        x.dtype in _RESAMPLE_DTYPES,
        lambda: f"agd::resample: x must be a floating-point tensor (float16, bfloat16, float32, float64), got {x.dtype}",
    )
    torch._check_value(x.dim() >= 1, lambda: "agd::resample: x must have at least one dimension")
    nd = x.dim()
    torch._check_index(
        -nd <= dim < nd, lambda: f"agd::resample: dim {dim} is out of range for x with {nd} dimensions"
    )
    torch._check_type(idx.dtype == torch.int64, lambda: f"agd::resample: idx must be int64, got {idx.dtype}")
    torch._check_value(
        idx.dim() == 2, lambda: f"agd::resample: idx must be 2-D (out, taps), got shape {list(idx.shape)}"
    )
    torch._check_type(
        w.dtype == x.dtype, lambda: f"agd::resample: w must have x's dtype {x.dtype}, got {w.dtype}"
    )
    torch._check_value(
        w.shape == idx.shape,
        lambda: f"agd::resample: w must have idx's shape {list(idx.shape)}, got {list(w.shape)}",
    )
    torch._check_value(
        idx.device == x.device and w.device == x.device,
        lambda: f"agd::resample: idx and w must be on x's device {x.device}, got idx on {idx.device}, w on {w.device}",
    )
    return dim % nd


def _check_resample_idx_values(idx: torch.Tensor, length: int, dim: int) -> None:
    if idx.numel() == 0:
        return
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= length:
        bad = lo if lo < 0 else hi
        raise IndexError(f"agd::resample: idx values must lie in [0, {length}) (x.shape[{dim}]), found {bad}")


def _weights_along(w_t: torch.Tensor, nd: int, dim: int) -> torch.Tensor:
    """A column of weights (out,) shaped to broadcast along ``dim`` of an ``nd``-D tensor."""
    return w_t.reshape(-1, *([1] * (nd - 1 - dim)))


def resample_reference(x: torch.Tensor, dim: int, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """PyTorch reference: one ``index_select`` along ``dim`` per tap, weighted and summed.

    ``idx`` is an int64 tensor (out, taps) of source positions, ``w`` the (out, taps) weights.
    Memory stays at a few output-sized tensors whatever the number of taps. Runs on any device and
    is differentiable by plain autograd.
    """
    d = _check_resample_args(x, dim, idx, w)
    _check_resample_idx_values(idx, x.shape[d], d)
    cdt = _compute_dtype(x.dtype)
    xc, wc = x.to(cdt), w.to(cdt)
    shape = list(x.shape)
    shape[d] = idx.shape[0]
    if idx.shape[1] == 0:
        return torch.zeros(shape, dtype=x.dtype, device=x.device)
    out = xc.index_select(d, idx[:, 0]) * _weights_along(wc[:, 0], x.dim(), d)
    for t in range(1, idx.shape[1]):
        out = out.addcmul_(xc.index_select(d, idx[:, t]), _weights_along(wc[:, t], x.dim(), d))
    return out.to(x.dtype).contiguous()


_LIB.impl("resample", resample_reference, "CompositeExplicitAutograd")


@torch.library.register_fake("agd::resample", lib=_LIB)
def _resample_fake(x: torch.Tensor, dim: int, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    d = _check_resample_args(x, dim, idx, w)
    shape = list(x.shape)
    shape[d] = idx.shape[0]
    return x.new_empty(shape)


def _resample_setup_context(ctx, inputs, output) -> None:
    x, dim, idx, w = inputs
    ctx.dim = dim % x.dim()
    ctx.save_for_backward(x, idx, w)


def _resample_backward(ctx, grad: torch.Tensor):
    """grad_x: scatter-add of grad * w to the source positions (index_add_);
    grad_w[j, t]: sum over every other dim of grad[..., j, ...] * x[..., idx[j, t], ...]."""
    x, idx, w = ctx.saved_tensors
    d = ctx.dim
    cdt = _compute_dtype(x.dtype)
    g, wc = grad.to(cdt), w.to(cdt)
    grad_x = grad_w = None
    if ctx.needs_input_grad[0]:
        gx = torch.zeros(x.shape, dtype=cdt, device=x.device)
        for t in range(idx.shape[1]):
            gx.index_add_(d, idx[:, t], g * _weights_along(wc[:, t], x.dim(), d))
        grad_x = gx.to(x.dtype)
    if ctx.needs_input_grad[3]:
        xc = x.to(cdt)
        others = [k for k in range(x.dim()) if k != d]
        cols = [(g * xc.index_select(d, idx[:, t])).sum(others) for t in range(idx.shape[1])]
        gw = torch.stack(cols, dim=1) if cols else torch.zeros(idx.shape, dtype=cdt, device=x.device)
        grad_w = gw.to(w.dtype)
    return grad_x, None, None, grad_w


torch.library.register_autograd("agd::resample", _resample_backward, setup_context=_resample_setup_context, lib=_LIB)


def resample_backend(x: torch.Tensor) -> str:
    """Which implementation ``resample(x, ...)`` uses: "cpp" (the C++ CPU kernel) or "reference".

    CPU tensors of every supported dtype go to the C++ kernel when it is loaded and not disabled
    (it computes float16/bfloat16 in float32, like the reference); other devices (CUDA) use the
    reference until a kernel for them is registered.
    """
    if x.device.type != "cpu":
        return "reference"
    return "cpp" if library.backend_for("cpu")[0] == "cpp" else "reference"


def resample(x: torch.Tensor, dim: int, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Resample ``x`` along ``dim``: ``out[..., j, ...] = sum_t w[j, t] * x[..., idx[j, t], ...]``.

    Calls the op ``torch.ops.agd.resample`` (one node under torch.compile / torch.export), whose CPU
    kernel is the C++ one once loaded; loads the library on first use. The reference is called
    directly only when AGD_DISABLE_CPP=1 is set after the C++ kernel was registered. Differentiable
    in x and w.
    """
    if not torch.compiler.is_compiling() and resample_backend(x) == "reference":
        if x.device.type == "cpu" and library.has_kernel("resample"):
            return resample_reference(x, dim, idx, w)
    return torch.ops.agd.resample(x, dim, idx, w)
