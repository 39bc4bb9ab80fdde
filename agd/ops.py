"""Every compiled agd operator, declared in one place.

Each op has: a schema (``torch.library``), a fake/meta implementation beside it (so torch.compile
and torch.export see one op with known output shapes), a plain PyTorch reference, and a Python
entry point that dispatches to the compiled kernel when it can run and to the reference otherwise.

Registration scheme: this module defines the schemas in the ``agd`` namespace (a ``FRAGMENT``
library, so other fragments can coexist), registers the fake implementation, the PyTorch reference
as the ``CompositeExplicitAutograd`` kernel (the op exists on every device without any compiled
code) and the backward formula. The C++ library ``agd/_C*.so`` (built by setup.py from csrc/) adds
kernels for the ``CPU`` dispatch key with ``TORCH_LIBRARY_IMPL``; a kernel registered for a backend
key takes precedence over the composite one. It also defines ``agd::build_info() -> str``.

The compiled library is loaded lazily, on the first call that can use it (or ``cpp_status()``),
never at import time. ``AGD_DISABLE_CPP=1`` forces the references; it is read at every call, so it
takes effect even after the library was loaded.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import torch

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
