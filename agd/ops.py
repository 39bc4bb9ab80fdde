"""Every compiled agd operator, declared in one place.

Each op has: a schema (``torch.library``), a fake/meta implementation beside it (so torch.compile
and torch.export see one op with known output shapes), a plain PyTorch reference, and a Python
entry point that dispatches to the compiled kernel when it can run and to the reference otherwise.

Registration scheme: this module defines the schemas in the ``agd`` namespace (a ``FRAGMENT``
library, so other fragments can coexist), registers the fake implementation, the PyTorch reference
as the ``CompositeExplicitAutograd`` kernel (the op exists on every device without any compiled
code) and the backward formula. The C++ library ``agd/_C*.so`` (built by setup.py from csrc/) adds
kernels for the ``CPU`` dispatch key with ``TORCH_LIBRARY_IMPL``; a kernel registered for a backend
key takes precedence over the composite one. It also defines ``agd::build_info() -> str`` and
``agd::block_gemm_backend() -> str``.

The compiled library is loaded lazily, on the first call that can use it (or ``cpp_status()``),
never at import time. ``AGD_DISABLE_CPP=1`` forces the references; it is read at every call, so it
takes effect even after the library was loaded.
"""

from __future__ import annotations

import functools
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from agd.io import AgdError

_LIB = torch.library.Library("agd", "FRAGMENT")

DISABLE_ENV = "AGD_DISABLE_CPP"
NOT_BUILT_REASON = "agd._C is not built (reinstall without AGD_SKIP_CPP=1; needs a C++ compiler)"
_LIBRARY_SUFFIXES = (".so", ".pyd", ".dylib")


# --------------------------------------------------------------------------------------------
# The compiled CPU library: lazy loading and status
# --------------------------------------------------------------------------------------------


def _disabled_by_env() -> str | None:
    """The value of AGD_DISABLE_CPP when it switches the C++ ops off, else None."""
    value = os.environ.get(DISABLE_ENV, "").strip()
    return value if value.lower() in ("1", "true", "yes", "on") else None


def find_cpu_library(package_dir: Path | None = None) -> Path | None:
    """The built ``agd/_C*.so`` (``_C.so``, ``_C.abi3.so``, ``_C.cpython-*.so``), or None."""
    folder = package_dir if package_dir is not None else Path(__file__).resolve().parent
    found = sorted(p for p in folder.glob("_C.*") if p.suffix in _LIBRARY_SUFFIXES and p.is_file())
    return found[0] if found else None


class NativeLibrary:
    """One compiled operator library, loaded with ``torch.ops.load_library`` on first use.

    ``path`` None means: look for ``agd/_C*.so`` beside this module when first needed. The outcome
    of the first attempt is remembered for the process, so later calls cost no file-system access:
    a missing library stays "not built" (until a new process), a load that failed is not retried,
    and a loaded library stays loaded (its kernels cannot be unregistered). Tests swap in another
    instance (e.g. one pointing at a missing path) to see the not-built behaviour.
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self._path = Path(path) if path is not None else None
        self._loaded_path: Path | None = None
        self._error: str | None = None
        self._lock = threading.Lock()

    def path(self) -> Path | None:
        return self._path if self._path is not None else find_cpu_library()

    @property
    def loaded(self) -> bool:
        return self._loaded_path is not None

    def display_name(self, path: Path) -> str:
        """``agd/_C.so`` for the library inside the package, the full path otherwise."""
        here = Path(__file__).resolve().parent
        return f"agd/{path.name}" if path.resolve().parent == here else str(path)

    def load(self) -> tuple[bool, str]:
        """Load once; return (loaded, "" or the reason it is not)."""
        with self._lock:
            if self._loaded_path is not None:
                return True, ""
            if self._error is not None:
                return False, self._error
            path = self.path()
            if path is None or not path.is_file():
                self._error = NOT_BUILT_REASON
                return False, self._error
            try:
                torch.ops.load_library(str(path))
            except Exception as e:  # an ABI mismatch or a broken file: fall back, say why
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                self._error = f"failed to load {self.display_name(path)}: {first}"
                return False, self._error
            self._loaded_path = path
            return True, ""

    def status(self) -> tuple[bool, str]:
        """(True, "agd/_C.so: <build info>, <n> threads") or (False, reason); loads the library."""
        ok, why = self.load()
        if not ok:
            return False, why
        assert self._loaded_path is not None
        info = torch.ops.agd.build_info()
        return True, f"{self.display_name(self._loaded_path)}: {info}, {torch.get_num_threads()} threads"


_CPU_LIBRARY = NativeLibrary()


def cpp_status() -> tuple[bool, str]:
    """Whether the C++ CPU ops run here and, either way, a one-line reason (loads the library)."""
    value = _disabled_by_env()
    if value is not None:
        return False, f"disabled by {DISABLE_ENV}={value}"
    return _CPU_LIBRARY.status()


def _cpp_usable() -> bool:
    """C++ CPU kernels may be used now: not disabled, and the library is (or gets) loaded."""
    return _disabled_by_env() is None and _CPU_LIBRARY.load()[0]


def _has_cpu_kernel(op: str) -> bool:
    """A kernel for the CPU key (the C++ one) is registered in this process for ``agd::<op>``."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"agd::{op}", "CPU")


# --------------------------------------------------------------------------------------------
# resample: sparse separable resampling along one dimension
#   out[..., j, ...] = sum_t w[j, t] * x[..., idx[j, t], ...]   (along `dim`)
# The building block of MATLAB-compatible imresize (agd.data.resize) and any other separable
# filter with a small support.
#
# Conventions (the C++ kernel in csrc/cpu/resample.cpp follows the same):
# - x: float16, bfloat16, float32 or float64, at least 1-D; dim may be negative;
# - idx: int64 (out, taps), values in [0, x.shape[dim]); w: idx's shape, x's dtype, x's device;
# - float32/float64 accumulate in their own dtype; float16/bfloat16 are computed in float32;
# - the result is a new contiguous tensor shaped like x with shape[dim] = out.
# --------------------------------------------------------------------------------------------

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
    return "cpp" if _cpp_usable() else "reference"


def resample(x: torch.Tensor, dim: int, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Resample ``x`` along ``dim``: ``out[..., j, ...] = sum_t w[j, t] * x[..., idx[j, t], ...]``.

    Calls the op ``torch.ops.agd.resample`` (one node under torch.compile / torch.export), whose CPU
    kernel is the C++ one once loaded; loads the library on first use. The reference is called
    directly only when AGD_DISABLE_CPP=1 is set after the C++ kernel was registered. Differentiable
    in x and w.
    """
    if not torch.compiler.is_compiling() and resample_backend(x) == "reference":
        if x.device.type == "cpu" and _has_cpu_kernel("resample"):
            return resample_reference(x, dim, idx, w)
    return torch.ops.agd.resample(x, dim, idx, w)


# --------------------------------------------------------------------------------------------
# Block kernels: depthwise 3x3 convolution, the fused residual epilogue and the fused inference
# DwsBlock (csrc/cpu/{dwconv3x3,residual,dws_block}.cpp; CUDA in csrc/cuda/, built into
# agd/_C_cuda*.so only with a CUDA torch and nvcc). agd.space.fast puts derived generators on them.
#
# Conventions shared with the kernels:
# - activations by code: ACT_CODES (none 0, relu 1, leaky relu 2 with ``negative_slope``, tanh 3);
# - instance norm = statistics over H x W per (n, c), biased variance, ``eps`` inside the sqrt,
#   optional per-channel affine; no running statistics;
# - CPU kernels compute float32 and float64 (float16/bfloat16 in float32); the CUDA kernels
#   float32/float16/bfloat16 with float32 accumulation.
# --------------------------------------------------------------------------------------------

ACT_CODES = {"none": 0, "relu": 1, "lrelu": 2, "tanh": 3}
CUDA_NOT_BUILT_REASON = "agd._C_cuda is not built (needs a CUDA torch and nvcc at build time; FORCE_CUDA=1 without a GPU)"


class _CudaLibrary(NativeLibrary):
    """``agd/_C_cuda*.so``: the CUDA kernels of the block ops (no ``build_info`` of its own)."""

    def path(self) -> Path | None:
        if self._path is not None:
            return self._path
        folder = Path(__file__).resolve().parent
        found = sorted(p for p in folder.glob("_C_cuda*") if p.suffix in _LIBRARY_SUFFIXES and p.is_file())
        return found[0] if found else None

    def load(self) -> tuple[bool, str]:
        ok, why = super().load()
        return (ok, why) if ok or why != NOT_BUILT_REASON else (False, CUDA_NOT_BUILT_REASON)


_CUDA_LIBRARY = _CudaLibrary()


def blocks_backend(device: torch.device | str) -> tuple[str, str]:
    """(backend, reason) of the block ops on ``device``: "cpp" (C++ CPU kernels), "cuda" (agd's CUDA
    kernels) or "reference" (the PyTorch references, with the reason the compiled ones do not run)."""
    dev = torch.device(device)
    value = _disabled_by_env()
    if value is not None:
        return "reference", f"disabled by {DISABLE_ENV}={value}"
    if dev.type == "cpu":
        ok, why = _CPU_LIBRARY.load()
        return ("cpp", "") if ok else ("reference", why)
    if dev.type == "cuda":
        ok, why = _CUDA_LIBRARY.load()
        return ("cuda", "") if ok else ("reference", why)
    return "reference", f"no agd kernels for device type {dev.type!r}"


def _blocks_use_reference(op: str, x: torch.Tensor) -> bool:
    """Call the reference directly: the compiled kernel cannot run, or was disabled after it was
    registered (then the registered kernel would still win inside torch.ops)."""
    if torch.compiler.is_compiling():
        return False
    return blocks_backend(x.device)[0] == "reference"


def _check_block_act(act: int) -> None:
    torch._check_value(act in ACT_CODES.values(), lambda: f"agd: activation code {act} is not one of {ACT_CODES}")


def _blocks_act_ref(y: torch.Tensor, act: int, slope: float) -> torch.Tensor:
    if act == 1:
        return torch.relu(y)
    if act == 2:
        return F.leaky_relu(y, slope)
    if act == 3:
        return torch.tanh(y)
    return y


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
    if _blocks_use_reference("dwconv3x3", x):
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
    _check_block_act(act)
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
    out = _blocks_act_ref(z, act, negative_slope).contiguous(memory_format=_residual_out_format(y))
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
    if act == 1:
        d = (out > 0).to(grad.dtype)
    elif act == 2:
        d = torch.where(out > 0, 1.0, negative_slope).to(grad.dtype)
    elif act == 3:
        d = 1 - out * out
    else:
        d = torch.ones_like(out)
    g = grad * d
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
    if act not in ACT_CODES:
        raise ValueError(f"norm_act_residual: activation {act!r} is not one of {', '.join(ACT_CODES)}")
    code = ACT_CODES[act]
    if _blocks_use_reference("norm_act_residual", y):
        return norm_act_residual_reference(y, shortcut, weight, bias, norm, code, negative_slope, eps)[0]
    return torch.ops.agd.norm_act_residual(y, shortcut, weight, bias, norm, code, negative_slope, eps)[0]


# ---- dws_block: the fused inference DwsBlock (see csrc/cpu/dws_block.cpp for what is fused)

_LIB.define(
    "dws_block(Tensor x, Tensor w_expand, Tensor w_dw, Tensor w_project, Tensor? w_shortcut, Tensor[] affine, "
    "bool norm, int act, float negative_slope, bool reflect, float eps) -> Tensor"
)


def _check_dws_args(x, w_expand, w_dw, w_project, w_shortcut, affine, act) -> None:
    torch._check_value(x.dim() == 4, lambda: f"agd::dws_block: x must be 4-D, got {x.dim()}-D")
    cin, hid, cout = x.shape[1], w_expand.shape[0], w_project.shape[0]
    torch._check_value(tuple(w_expand.shape) == (hid, cin, 1, 1),
                       lambda: f"agd::dws_block: w_expand must be (hidden, {cin}, 1, 1), got {tuple(w_expand.shape)}")
    torch._check_value(tuple(w_dw.shape) == (hid, 1, 3, 3),
                       lambda: f"agd::dws_block: w_dw must be ({hid}, 1, 3, 3), got {tuple(w_dw.shape)}")
    torch._check_value(tuple(w_project.shape) == (cout, hid, 1, 1),
                       lambda: f"agd::dws_block: w_project must be (C_out, {hid}, 1, 1), got {tuple(w_project.shape)}")
    if w_shortcut is None:
        torch._check_value(cin == cout, lambda: f"agd::dws_block: identity shortcut needs C_in == C_out, got {cin}, {cout}")
    else:
        torch._check_value(tuple(w_shortcut.shape) == (cout, cin, 1, 1),
                           lambda: f"agd::dws_block: w_shortcut must be ({cout}, {cin}, 1, 1), got {tuple(w_shortcut.shape)}")
    torch._check_value(len(affine) in (0, 8), lambda: f"agd::dws_block: affine holds 0 or 8 tensors, got {len(affine)}")
    _check_block_act(act)


def dws_block_reference(x, w_expand, w_dw, w_project, w_shortcut, affine, norm: bool, act: int,
                        negative_slope: float = 0.2, reflect: bool = False, eps: float = 1e-5) -> torch.Tensor:
    """PyTorch reference of the DwsBlock: expand → N → act → dw3x3 → N → act → project → N, plus the
    shortcut (identity, or 1x1 → N), → act. ``affine`` is [] or [g1, b1, g2, b2, g3, b3, gs, bs]
    (empty tensors where a norm has no affine)."""
    _check_dws_args(x, w_expand, w_dw, w_project, w_shortcut, affine, act)
    aff = [a if a is not None and a.numel() else None for a in affine] if affine else [None] * 8

    def nrm(y, k):
        return F.instance_norm(y, weight=aff[2 * k], bias=aff[2 * k + 1], eps=eps) if norm else y

    y = _blocks_act_ref(nrm(F.conv2d(x, w_expand), 0), act, negative_slope)
    if reflect:
        y = F.conv2d(F.pad(y, (1, 1, 1, 1), mode="reflect"), w_dw, groups=y.shape[1])
    else:
        y = F.conv2d(y, w_dw, padding=1, groups=y.shape[1])
    y = nrm(F.conv2d(_blocks_act_ref(nrm(y, 1), act, negative_slope), w_project), 2)
    s = x if w_shortcut is None else nrm(F.conv2d(x, w_shortcut), 3)
    return _blocks_act_ref(y + s, act, negative_slope).contiguous()


_LIB.impl("dws_block", dws_block_reference, "CompositeExplicitAutograd")


@torch.library.register_fake("agd::dws_block", lib=_LIB)
def _dws_block_fake(x, w_expand, w_dw, w_project, w_shortcut, affine, norm, act, negative_slope, reflect, eps):
    _check_dws_args(x, w_expand, w_dw, w_project, w_shortcut, affine, act)
    return x.new_empty((x.shape[0], w_project.shape[0], x.shape[2], x.shape[3]))


def dws_block(x: torch.Tensor, w_expand: torch.Tensor, w_dw: torch.Tensor, w_project: torch.Tensor,
              w_shortcut: torch.Tensor | None = None, affine: list[torch.Tensor] | None = None, *, norm: bool,
              act: str, negative_slope: float = 0.2, reflect: bool = False, eps: float = 1e-5) -> torch.Tensor:
    """The fused DwsBlock for inference. When autograd needs a gradient (grad mode on and any input
    requires grad) the differentiable reference runs instead: the fused op has no backward."""
    if act not in ACT_CODES:
        raise ValueError(f"dws_block: activation {act!r} is not one of {', '.join(ACT_CODES)}")
    affine = list(affine or [])
    tensors = [x, w_expand, w_dw, w_project, *([w_shortcut] if w_shortcut is not None else []), *affine]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    if needs_grad or _blocks_use_reference("dws_block", x):
        return dws_block_reference(x, w_expand, w_dw, w_project, w_shortcut, affine, norm, ACT_CODES[act],
                                   negative_slope, reflect, eps)
    return torch.ops.agd.dws_block(x, w_expand, w_dw, w_project, w_shortcut, affine, norm, ACT_CODES[act],
                                   negative_slope, reflect, eps)


# ---- conv_narrow: K x K "same" convolution to 1-4 output channels + bias + act (inference), the
# generators' last layer (see csrc/cpu/conv_narrow.cpp)

CONV_NARROW_MAX_OUT = 4

_LIB.define(
    "conv_narrow(Tensor x, Tensor weight, Tensor? bias, bool reflect, int act, float negative_slope) -> Tensor"
)


def _check_conv_narrow_args(x, weight, bias, reflect, act) -> None:
    torch._check_value(x.dim() == 4 and weight.dim() == 4,
                       lambda: f"agd::conv_narrow: x and weight must be 4-D, got {x.dim()}-D and {weight.dim()}-D")
    o, c, kh, kw = weight.shape
    torch._check_value(1 <= o <= CONV_NARROW_MAX_OUT,
                       lambda: f"agd::conv_narrow: 1 to {CONV_NARROW_MAX_OUT} output channels, got {o}")
    torch._check_value(c == x.shape[1] and kh == kw and kh % 2 == 1,
                       lambda: f"agd::conv_narrow: weight must be (C_out, {x.shape[1]}, K, K) with K odd, "
                               f"got {tuple(weight.shape)}")
    torch._check_value(bias is None or bias.numel() == o,
                       lambda: f"agd::conv_narrow: bias must have {o} elements")
    if reflect:
        torch._check_value(x.shape[2] > kh // 2 and x.shape[3] > kh // 2,
                           lambda: f"agd::conv_narrow: reflect padding {kh // 2} needs H and W > {kh // 2}, "
                                   f"got {x.shape[2]}x{x.shape[3]}")
    _check_block_act(act)


def conv_narrow_reference(x, weight, bias, reflect: bool, act: int, negative_slope: float = 0.2) -> torch.Tensor:
    """PyTorch reference: act(conv2d(pad(x), weight, bias)), padding K // 2 (zeros or reflect)."""
    _check_conv_narrow_args(x, weight, bias, reflect, act)
    p = weight.shape[-1] // 2
    if reflect and p:
        y = F.conv2d(F.pad(x, (p, p, p, p), mode="reflect"), weight, bias)
    else:
        y = F.conv2d(x, weight, bias, padding=p)
    return _blocks_act_ref(y, act, negative_slope).contiguous()


_LIB.impl("conv_narrow", conv_narrow_reference, "CompositeExplicitAutograd")


@torch.library.register_fake("agd::conv_narrow", lib=_LIB)
def _conv_narrow_fake(x, weight, bias, reflect, act, negative_slope):
    _check_conv_narrow_args(x, weight, bias, reflect, act)
    return x.new_empty((x.shape[0], weight.shape[0], x.shape[2], x.shape[3]))


def conv_narrow(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, reflect: bool = False,
                act: str = "none", negative_slope: float = 0.2) -> torch.Tensor:
    """The few-output-channel convolution for inference; the differentiable reference runs when autograd
    needs a gradient or the compiled kernel cannot run."""
    if act not in ACT_CODES:
        raise ValueError(f"conv_narrow: activation {act!r} is not one of {', '.join(ACT_CODES)}")
    tensors = [x, weight, *([bias] if bias is not None else [])]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    if needs_grad or _blocks_use_reference("conv_narrow", x):
        return conv_narrow_reference(x, weight, bias, reflect, ACT_CODES[act], negative_slope)
    return torch.ops.agd.conv_narrow(x, weight, bias, reflect, ACT_CODES[act], negative_slope)


# ---- block_gemm: out = a @ b, the GEMM inside the CPU block kernels (csrc/cpu/sgemm_avx512.cpp),
# exposed so it is tested and benchmarked on its own. backend: "auto" (what the block kernels use:
# AGD_BLOCK_GEMM if set, else AVX-512 when the CPU has it, else BLAS), "avx512", "blas" or "loop".

BLOCK_GEMM_BACKENDS = ("auto", "avx512", "blas", "loop")

_LIB.define("block_gemm(Tensor a, Tensor b, str backend) -> Tensor")


def block_gemm_name() -> str:
    """The GEMM the C++ block kernels run here ("avx512", "blas" or "loop"), or why none does."""
    ok, why = _CPU_LIBRARY.load()
    if not ok:
        return f"none ({why})"
    try:
        return torch.ops.agd.block_gemm_backend()
    except RuntimeError as e:  # a bad AGD_BLOCK_GEMM value
        return f"none ({str(e).splitlines()[0]})"


def _check_block_gemm_args(a, b, backend) -> None:
    torch._check_value(a.dim() == 2 and b.dim() == 2 and a.shape[1] == b.shape[0],
                       lambda: f"agd::block_gemm: needs (m, k) @ (k, n), got {tuple(a.shape)} @ {tuple(b.shape)}")
    torch._check_value(a.dtype == b.dtype and a.dtype in (torch.float32, torch.float64),
                       lambda: f"agd::block_gemm: a and b must both be float32 or float64, got {a.dtype}, {b.dtype}")
    torch._check_value(backend in BLOCK_GEMM_BACKENDS,
                       lambda: f"agd::block_gemm: backend {backend!r} is not one of {', '.join(BLOCK_GEMM_BACKENDS)}")


def block_gemm_reference(a: torch.Tensor, b: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """PyTorch reference: a @ b."""
    _check_block_gemm_args(a, b, backend)
    return torch.mm(a, b)


_LIB.impl("block_gemm", block_gemm_reference, "CompositeExplicitAutograd")


@torch.library.register_fake("agd::block_gemm", lib=_LIB)
def _block_gemm_fake(a, b, backend):
    _check_block_gemm_args(a, b, backend)
    return a.new_empty((a.shape[0], b.shape[1]))


# --------------------------------------------------------------------------------------------
# mixed_sum: the weighted sum of a mixed layer's candidate outputs, out = sum_k w[k] * outs[k]
# Every supernet layer goes through here; a fused kernel (Triton) replaces the fast path only.
# --------------------------------------------------------------------------------------------


def mixed_sum_reference(weights: torch.Tensor, outs: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """PyTorch reference: ``sum_k weights[k] * outs[k]`` (all outputs of one shape), differentiable in both."""
    if weights.dim() != 1 or weights.shape[0] != len(outs) or not outs:
        raise ValueError(f"mixed_sum: {weights.shape[0] if weights.dim() == 1 else tuple(weights.shape)} weights "
                         f"for {len(outs)} candidate outputs")
    shape = outs[0].shape
    for k, o in enumerate(outs):
        if o.shape != shape:
            raise ValueError(f"mixed_sum: candidate {k} has shape {tuple(o.shape)}, candidate 0 {tuple(shape)}")
    w = weights.to(outs[0].dtype)
    acc = w[0] * outs[0]
    for k in range(1, len(outs)):
        acc = acc + w[k] * outs[k]
    return acc


def mixed_sum(weights: torch.Tensor, outs: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The weighted candidate sum of a mixed layer (see :func:`mixed_sum_reference`)."""
    return mixed_sum_reference(weights, outs)


# --------------------------------------------------------------------------------------------
# mixed_epilogue: a mixed layer's candidate epilogues and weighted sum, fused
#   out = sum_k w[k] * act_k(norm_k(z_k[:, :C]) + s_k[:, :C])
# z_k: candidate k's pre-epilogue output (the last conv's output; identity: the layer input, its
# channels truncated or zero-padded to C); norm_k: none or instance norm over H x W (affine or not);
# s_k: an optional shortcut; act_k: none, relu or lrelu (negative slope ``slope``).
#
# Backends (``mixed_epilogue(..., backend=)``):
# - "triton": the op below with its Triton kernels (agd.kernels.mixed_epilogue); CUDA tensors, or CPU
#   tensors when the kernels were decorated under TRITON_INTERPRET=1 (tests);
# - "reference": the same op with its PyTorch implementation (any device; recompute backward);
# - "eager": plain PyTorch autograd of :func:`mixed_epilogue_reference` (no custom op);
# - "auto": "triton" for CUDA tensors when the Triton backend is usable there (not AGD_DISABLE_TRITON=1),
#   else "eager".
# Op calling convention: ``xs`` are the distinct input tensors (a tensor used by several candidates, e.g.
# the layer input as identity's z and as the blocks' shortcut, appears once and gets one gradient);
# ``params`` the affine norm parameters (gamma at i, beta at i + 1); ``spec`` holds 5 ints per candidate:
# (index of z in xs, index of the shortcut or -1, index of gamma in params or -1, norm 0/1, act code).
# --------------------------------------------------------------------------------------------

EPILOGUE_ACTS = {"none": 0, "relu": 1, "lrelu": 2}
EPILOGUE_BACKENDS = ("auto", "triton", "reference", "eager")
_EPILOGUE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class EpilogueCandidate:
    """One candidate's pre-epilogue output and how to finish it (see the section comment)."""

    z: torch.Tensor
    shortcut: torch.Tensor | None = None
    norm: bool = False
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    act: str = "none"


_LIB.define("mixed_epilogue(Tensor weights, Tensor[] xs, Tensor[] params, int[] spec, SymInt channels, "
            "float eps, float slope, str impl) -> (Tensor, Tensor)")
_LIB.define("mixed_epilogue_backward(Tensor grad, Tensor weights, Tensor[] xs, Tensor[] params, Tensor stats, "
            "int[] spec, SymInt channels, float eps, float slope, str impl) -> (Tensor, Tensor[], Tensor[])")


def _fit_channels(z: torch.Tensor, channels: int) -> torch.Tensor:
    """The first ``channels`` channels of z, zero-padded where z has fewer (identity's convention)."""
    c = z.shape[1]
    if c == channels:
        return z
    if c > channels:
        return z[:, :channels]
    return F.pad(z, (0, 0, 0, 0, 0, channels - c))


def _act_forward(u: torch.Tensor, act: int, slope: float) -> torch.Tensor:
    if act == 1:
        return F.relu(u)
    if act == 2:
        return F.leaky_relu(u, slope)
    return u


def _act_grad(u: torch.Tensor, act: int, slope: float) -> torch.Tensor:
    if act == 1:
        return (u > 0).to(u.dtype)
    if act == 2:
        return torch.where(u > 0, torch.ones_like(u), torch.full_like(u, slope))
    return torch.ones_like(u)


def _check_epilogue_args(weights, xs, params, spec, channels) -> int:
    """Validate shapes, dtypes and the spec (also on fake tensors); return the number of candidates."""
    torch._check_value(len(spec) % 5 == 0 and len(spec) > 0,
                       lambda: f"agd::mixed_epilogue: spec must hold 5 ints per candidate, got {len(spec)}")
    k = len(spec) // 5
    torch._check_value(weights.dim() == 1 and weights.shape[0] == k,
                       lambda: f"agd::mixed_epilogue: {tuple(weights.shape)} weights for {k} candidates")
    torch._check_value(len(xs) > 0, lambda: "agd::mixed_epilogue: no input tensors")
    x0 = xs[0]
    torch._check_type(x0.dtype in _EPILOGUE_DTYPES,
                      lambda: f"agd::mixed_epilogue: inputs must be float16, bfloat16, float32 or float64, got {x0.dtype}")
    for i, x in enumerate(xs):
        torch._check_value(x.dim() == 4 and x.shape[0] == x0.shape[0] and x.shape[2:] == x0.shape[2:],
                           lambda: f"agd::mixed_epilogue: input {i} has shape {tuple(x.shape)}, input 0 {tuple(x0.shape)}")
        torch._check_type(x.dtype == x0.dtype and x.device == x0.device,
                          lambda: f"agd::mixed_epilogue: input {i} is {x.dtype} on {x.device}, input 0 {x0.dtype} on {x0.device}")
    for j in range(k):
        zi, si, ai, norm, act = spec[5 * j: 5 * j + 5]
        torch._check_index(0 <= zi < len(xs), lambda: f"agd::mixed_epilogue: candidate {j}: z index {zi} out of range")
        torch._check_index(-1 <= si < len(xs), lambda: f"agd::mixed_epilogue: candidate {j}: shortcut index {si} out of range")
        torch._check_index(ai == -1 or 0 <= ai < len(params) - 1,
                           lambda: f"agd::mixed_epilogue: candidate {j}: affine index {ai} out of range")
        torch._check_value(norm in (0, 1) and act in (0, 1, 2),
                           lambda: f"agd::mixed_epilogue: candidate {j}: norm {norm} / act {act} unknown")
        torch._check_value(not norm or xs[zi].shape[1] >= channels,
                           lambda: f"agd::mixed_epilogue: candidate {j}: a normalised z needs >= {channels} channels")
        torch._check_value(si < 0 or xs[si].shape[1] >= channels,
                           lambda: f"agd::mixed_epilogue: candidate {j}: the shortcut needs >= {channels} channels")
        torch._check_value(ai < 0 or bool(norm), lambda: f"agd::mixed_epilogue: candidate {j}: affine without a norm")
    return k


def _epilogue_acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _epilogue_terms(weights, xs, params, spec, channels, eps, stats=None):
    """Per candidate (xhat, u, act code, gamma or None, rstd or None), computed in the accumulation dtype."""
    acc = _epilogue_acc(xs[0].dtype)
    out = []
    for j in range(len(spec) // 5):
        zi, si, ai, norm, act = spec[5 * j: 5 * j + 5]
        z = _fit_channels(xs[zi], channels).to(acc)
        gamma = rstd = None
        if norm:
            if stats is None:
                var, mean = torch.var_mean(z, dim=(2, 3), unbiased=False, keepdim=True)
                rstd = torch.rsqrt(var + eps)
            else:
                mean, rstd = stats[j, ..., 0, None, None], stats[j, ..., 1, None, None]
            xhat = (z - mean) * rstd
            u = xhat
            if ai >= 0:
                gamma = params[ai][:channels].to(acc).view(1, -1, 1, 1)
                u = xhat * gamma + params[ai + 1][:channels].to(acc).view(1, -1, 1, 1)
        else:
            xhat = u = z
        if si >= 0:
            u = u + xs[si][:, :channels].to(acc)
        out.append((xhat, u, act, gamma, rstd, mean if norm else None))
    return out


def _mixed_epilogue_torch(weights, xs, params, spec, channels, eps, slope):
    """The op's PyTorch implementation: (out, stats (K, N, C, 2) of (mean, rstd))."""
    k = _check_epilogue_args(weights, xs, params, spec, channels)
    acc = _epilogue_acc(xs[0].dtype)
    n = xs[0].shape[0]
    stats = torch.zeros((k, n, channels, 2), dtype=acc, device=xs[0].device)
    w = weights.to(acc)
    out = None
    for j, (xhat, u, act, _, rstd, mean) in enumerate(_epilogue_terms(weights, xs, params, spec, channels, eps)):
        if rstd is not None:
            stats[j, ..., 0] = mean[..., 0, 0]
            stats[j, ..., 1] = rstd[..., 0, 0]
        term = w[j] * _act_forward(u, act, slope)
        out = term if out is None else out + term
    return out.to(xs[0].dtype).contiguous(), stats


def _mixed_epilogue_backward_torch(grad, weights, xs, params, stats, spec, channels, eps, slope):
    """The PyTorch backward, from the saved statistics (recomputes xhat, u): (grad w, grads xs, grads params)."""
    _check_epilogue_args(weights, xs, params, spec, channels)
    acc = _epilogue_acc(xs[0].dtype)
    g = grad.to(acc)
    w = weights.to(acc)
    grads_x = [torch.zeros(x.shape, dtype=acc, device=x.device) for x in xs]
    grads_p = [torch.zeros(p.shape, dtype=acc, device=p.device) for p in params]
    grad_w = []
    hw = xs[0].shape[2] * xs[0].shape[3]
    for j, (xhat, u, act, gamma, rstd, _) in enumerate(_epilogue_terms(weights, xs, params, spec, channels, eps, stats)):
        zi, si, ai = spec[5 * j: 5 * j + 3]
        grad_w.append((g * _act_forward(u, act, slope)).sum())
        du = g * w[j] * _act_grad(u, act, slope)
        if si >= 0:
            grads_x[si][:, :channels] += du
        if rstd is not None:
            gam = gamma if gamma is not None else torch.ones((), dtype=acc, device=g.device)
            dxhat = du * gam
            dz = rstd * (dxhat - dxhat.sum((2, 3), keepdim=True) / hw
                         - xhat * (dxhat * xhat).sum((2, 3), keepdim=True) / hw)
            if ai >= 0:
                grads_p[ai][:channels] += (du * xhat).sum((0, 2, 3))
                grads_p[ai + 1][:channels] += du.sum((0, 2, 3))
        else:
            dz = du
        c = min(channels, xs[zi].shape[1])
        grads_x[zi][:, :c] += dz[:, :c]
    dt = xs[0].dtype
    return (torch.stack(grad_w).to(weights.dtype), [gx.to(dt) for gx in grads_x],
            [gp.to(p.dtype) for gp, p in zip(grads_p, params)])


def _epilogue_kernels():
    """agd.kernels.mixed_epilogue, imported on first use (imports triton)."""
    from agd.kernels import mixed_epilogue as mod

    return mod


def _triton_runs_on(device: torch.device) -> tuple[bool, str]:
    """Whether the Triton kernels can run on tensors of ``device`` now, and why not."""
    from agd.kernels.status import triton_status

    if device.type == "cuda":
        s = triton_status(device)
        return s.available, s.reason
    if device.type == "cpu":
        if os.environ.get("AGD_DISABLE_TRITON", "") == "1":
            return False, "disabled by AGD_DISABLE_TRITON=1"
        s = triton_status("cpu")
        if not s.available:
            return False, s.reason
        if not _epilogue_kernels().interpreted():
            return False, "the kernels were decorated without TRITON_INTERPRET=1 (set it before agd.kernels.mixed_epilogue is imported)"
        return True, s.reason
    return False, f"no Triton kernels for {device.type} tensors"


def _mixed_epilogue_impl(weights, xs, params, spec, channels, eps, slope, impl):
    if impl == "triton":
        ok, why = _triton_runs_on(xs[0].device)
        if not ok:
            raise AgdError(f"mixed_epilogue: the Triton backend cannot run here: {why}")
        _check_epilogue_args(weights, xs, params, spec, channels)
        acc = _epilogue_acc(xs[0].dtype)
        ps = [p.detach().to(acc).contiguous() for p in params]
        return _epilogue_kernels().epilogue_forward(weights, list(xs), ps, list(spec), channels, eps, slope)
    if impl != "reference":
        raise AgdError(f"mixed_epilogue: implementation {impl!r} is not triton or reference")
    return _mixed_epilogue_torch(weights, xs, params, spec, channels, eps, slope)


def _mixed_epilogue_backward_impl(grad, weights, xs, params, stats, spec, channels, eps, slope, impl):
    if impl == "triton":
        ok, why = _triton_runs_on(xs[0].device)
        if not ok:
            raise AgdError(f"mixed_epilogue: the Triton backend cannot run here: {why}")
        acc = _epilogue_acc(xs[0].dtype)
        ps = [p.detach().to(acc).contiguous() for p in params]
        gw, gx, gp = _epilogue_kernels().epilogue_backward(grad, weights, list(xs), ps, stats, list(spec), channels,
                                                           eps, slope)
        return gw.to(weights.dtype), gx, [g.to(p.dtype) for g, p in zip(gp, params)]
    return _mixed_epilogue_backward_torch(grad, weights, xs, params, stats, spec, channels, eps, slope)


_LIB.impl("mixed_epilogue", _mixed_epilogue_impl, "CompositeExplicitAutograd")
_LIB.impl("mixed_epilogue_backward", _mixed_epilogue_backward_impl, "CompositeExplicitAutograd")


@torch.library.register_fake("agd::mixed_epilogue", lib=_LIB)
def _mixed_epilogue_fake(weights, xs, params, spec, channels, eps, slope, impl):
    k = _check_epilogue_args(weights, xs, params, spec, channels)
    n, _, h, w = xs[0].shape
    acc = _epilogue_acc(xs[0].dtype)
    return xs[0].new_empty((n, channels, h, w)), xs[0].new_empty((k, n, channels, 2), dtype=acc)


@torch.library.register_fake("agd::mixed_epilogue_backward", lib=_LIB)
def _mixed_epilogue_backward_fake(grad, weights, xs, params, stats, spec, channels, eps, slope, impl):
    _check_epilogue_args(weights, xs, params, spec, channels)
    return weights.new_empty(weights.shape), [x.new_empty(x.shape) for x in xs], [p.new_empty(p.shape) for p in params]


def _mixed_epilogue_setup_context(ctx, inputs, output) -> None:
    weights, xs, params, spec, channels, eps, slope, impl = inputs
    ctx.save_for_backward(weights, output[1], *xs, *params)
    ctx.n_xs = len(xs)
    ctx.args = (list(spec), channels, eps, slope, impl)
    ctx.mark_non_differentiable(output[1])


def _mixed_epilogue_backward(ctx, grad, _grad_stats):
    weights, stats, *rest = ctx.saved_tensors
    xs, params = rest[: ctx.n_xs], rest[ctx.n_xs:]
    spec, channels, eps, slope, impl = ctx.args
    gw, gx, gp = torch.ops.agd.mixed_epilogue_backward(grad.contiguous(), weights, xs, params, stats, spec, channels,
                                                       eps, slope, impl)
    return gw, list(gx), list(gp), None, None, None, None, None


torch.library.register_autograd("agd::mixed_epilogue", _mixed_epilogue_backward,
                                setup_context=_mixed_epilogue_setup_context, lib=_LIB)


def mixed_epilogue_reference(weights: torch.Tensor, candidates: list[EpilogueCandidate], channels: int, *,
                             eps: float = 1e-5, slope: float = 0.2) -> torch.Tensor:
    """Plain PyTorch (autograd) reference, in the inputs' dtype, the way the blocks compute it: per
    candidate ``F.instance_norm`` → ``+ shortcut`` → activation, then ``sum_k w[k] * ...``."""
    out = None
    for k, cand in enumerate(candidates):
        y = _fit_channels(cand.z, channels)
        if cand.norm:
            g = cand.weight[:channels] if cand.weight is not None else None
            b = cand.bias[:channels] if cand.bias is not None else None
            y = F.instance_norm(y, None, None, g, b, True, 0.0, eps)
        if cand.shortcut is not None:
            y = y + cand.shortcut[:, :channels]
        y = _act_forward(y, EPILOGUE_ACTS[cand.act], slope)
        term = weights[k].to(y.dtype) * y
        out = term if out is None else out + term
    return out


def _pack_candidates(candidates: list[EpilogueCandidate], channels: int):
    """(xs, params, spec) of the op's calling convention; tensors shared between candidates appear once.
    H x W planes must be contiguous: other layouts are made contiguous (a copy)."""
    xs: list[torch.Tensor] = []
    seen: dict[int, int] = {}

    def index(t: torch.Tensor) -> int:
        if id(t) not in seen:
            ok = t.shape[2] * t.shape[3] <= 1 or (t.stride(3) == 1 and t.stride(2) == t.shape[3])
            seen[id(t)] = len(xs)
            xs.append(t if ok else t.contiguous())
        return seen[id(t)]

    params: list[torch.Tensor] = []
    spec: list[int] = []
    for j, c in enumerate(candidates):
        if c.act not in EPILOGUE_ACTS:
            raise AgdError(f"mixed_epilogue: candidate {j}: activation {c.act!r} is not one of {', '.join(EPILOGUE_ACTS)}")
        if (c.weight is None) != (c.bias is None):
            raise AgdError(f"mixed_epilogue: candidate {j}: an affine norm needs both weight and bias")
        zi = index(c.z)
        si = index(c.shortcut) if c.shortcut is not None else -1
        ai = -1
        if c.weight is not None:
            ai = len(params)
            params += [c.weight, c.bias]
        spec += [zi, si, ai, int(c.norm), EPILOGUE_ACTS[c.act]]
    dtypes = {x.dtype for x in xs}
    if len(dtypes) > 1:  # e.g. autocast: a conv output in bfloat16 next to a float32 layer input
        dt = functools.reduce(torch.promote_types, dtypes)
        xs = [x.to(dt) for x in xs]
    return xs, params, spec


def mixed_epilogue_backend(device: torch.device | str, requested: str = "auto") -> str:
    """The backend :func:`mixed_epilogue` uses for tensors on ``device``: "triton", "reference" or "eager"."""
    if requested not in EPILOGUE_BACKENDS:
        raise AgdError(f"mixed_epilogue: backend {requested!r} is not one of {', '.join(EPILOGUE_BACKENDS)}")
    if requested != "auto":
        return requested
    device = torch.device(device)
    if device.type == "cuda" and _triton_runs_on(device)[0]:
        return "triton"
    return "eager"


def mixed_epilogue_status(device: torch.device | str | None = None):
    """Which backend a mixed layer's epilogue uses on ``device`` (default: CUDA if visible, else CPU), and why."""
    from agd.backends import BackendStatus
    from agd.kernels.status import triton_status

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    backend = mixed_epilogue_backend(device)
    if backend == "triton":
        return BackendStatus("mixed epilogue", True, f"fused Triton kernel on {device.type}: {triton_status(device).reason}")
    why = triton_status(device).reason if device.type == "cuda" else "the fused kernel runs on CUDA tensors only"
    return BackendStatus("mixed epilogue", False, f"eager PyTorch reference on {device.type} ({why})")


def mixed_epilogue(weights: torch.Tensor, candidates: list[EpilogueCandidate], channels: int, *,
                   eps: float = 1e-5, slope: float = 0.2, backend: str = "auto") -> torch.Tensor:
    """A mixed layer's output ``sum_k weights[k] * act_k(norm_k(z_k) + s_k)`` at ``channels`` channels.

    Differentiable in ``weights``, every ``z``, ``shortcut`` and affine ``weight``/``bias``. See the
    section comment for the backends; "triton" and "reference" call the op ``torch.ops.agd.mixed_epilogue``
    (one node under torch.compile / torch.export), "eager" the plain reference."""
    if not candidates or weights.dim() != 1 or weights.shape[0] != len(candidates):
        raise AgdError(f"mixed_epilogue: weights of shape {tuple(weights.shape)} for {len(candidates)} candidates")
    b = mixed_epilogue_backend(candidates[0].z.device, backend)
    if b == "eager":
        return mixed_epilogue_reference(weights, candidates, channels, eps=eps, slope=slope)
    xs, params, spec = _pack_candidates(candidates, channels)
    return torch.ops.agd.mixed_epilogue(weights, xs, params, spec, channels, eps, slope, b)[0]
