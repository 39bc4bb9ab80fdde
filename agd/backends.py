"""What each compute backend of agd can do on this machine, and why not when it cannot.

Every backend reports a :class:`BackendStatus`; ``agd info`` prints them all. Probes are cheap and
lazy: nothing here is evaluated at import time.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import platform
import sys
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class BackendStatus:
    """One backend: whether it is usable here and, either way, a one-line reason."""

    name: str
    available: bool
    reason: str
    details: dict[str, str] = field(default_factory=dict)


@functools.lru_cache(maxsize=None)
def package_version(dist: str) -> str | None:
    """Installed version of a distribution, without importing it (None when not installed); looked up once
    per process (the kernels' dispatch asks on every call, and a lookup scans site-packages)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@contextlib.contextmanager
def exact_float32():
    """Plain float32 convolutions and matmuls on CUDA inside the block (TF32 off, restored after): cuDNN's
    default TF32 rounds inputs to 10 mantissa bits and errs ~1e-3, too coarse for a reference output."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def versions() -> dict[str, str]:
    import agd
    from agd.machine import cpu_summary

    cuda = torch.version.cuda
    return {
        "agd": agd.__version__,
        "python": f"{sys.version.split()[0]} ({platform.machine()})",
        "torch": f"{torch.__version__}" + (f" (CUDA {cuda})" if cuda else " (no CUDA)"),
        "triton": package_version("triton") or "not installed",
        "tvm": package_version("apache-tvm") or "not installed",
        "tvm-ffi": package_version("apache-tvm-ffi") or "not installed",
        "numpy": package_version("numpy") or "not installed",
        "cpu": cpu_summary(),
    }


def cuda_device_status() -> BackendStatus:
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return BackendStatus("cuda device", False, f"torch {torch.__version__} is a CPU-only build")
    if not torch.cuda.is_available():
        return BackendStatus("cuda device", False, "torch has CUDA but no device is visible")
    name = torch.cuda.get_device_name(0)
    cap = ".".join(map(str, torch.cuda.get_device_capability(0)))
    return BackendStatus("cuda device", True, f"{name} (sm {cap})", {"count": str(torch.cuda.device_count())})


def cuda_ops_status() -> BackendStatus:
    """The CUDA operator library (agd/_C_cuda*.so, built by setup.py only with a CUDA torch and nvcc)."""
    from pathlib import Path

    import agd

    dev = cuda_device_status()
    if torch.version.cuda is None:
        return BackendStatus("CUDA ops", False, dev.reason)
    built = sorted(Path(agd.__file__).parent.glob("_C_cuda*.so"))
    if not built:
        return BackendStatus(
            "CUDA ops", False, "agd._C_cuda is not built (reinstall with a CUDA torch and nvcc; FORCE_CUDA=1 without a GPU)"
        )
    if not dev.available:
        return BackendStatus("CUDA ops", False, f"built ({built[0].name}) but {dev.reason}")
    return BackendStatus("CUDA ops", True, f"{built[0].name} on {dev.reason}")


def onednn_conv_status() -> BackendStatus:
    """oneDNN's fused convolution + activation (+ add), which ``agd.space.fast.convert(net, "cpp")`` uses for
    norm-free dense convolutions, channels-last."""
    from agd.space.fast import onednn_reason

    why = onednn_reason()
    if why:
        return BackendStatus("oneDNN fused conv", False, why + "; the cpp student backend keeps those convolutions eager")
    return BackendStatus("oneDNN fused conv", True, "mkldnn::_convolution_pointwise (conv + act [+ add], channels-last)")


def precision_status(precision: str) -> BackendStatus:
    """Whether this CPU has instructions for ``precision`` (:mod:`agd.machine`): bf16 needs AVX512-BF16 or
    AMX-BF16, int8 VNNI or AMX-INT8; the same check refuses ``--precision`` where they are missing."""
    from agd.machine import precision_instructions, precision_reason

    why = precision_reason(precision)
    if why:
        return BackendStatus(f"{precision} on this CPU", False, why)
    return BackendStatus(f"{precision} on this CPU", True, precision_instructions(precision))


def all_backends() -> list[BackendStatus]:
    """Every backend in the order ``agd info`` prints them."""
    from agd import kernels, ops, tuning
    from agd.machine import PRECISIONS

    out = [cuda_device_status(), kernels.triton_status()]
    ok, why = ops.cpp_status()
    out.append(BackendStatus("C++ CPU ops", ok, why))
    out.append(onednn_conv_status())
    out.append(ops.mixed_epilogue_status())
    out.append(cuda_ops_status())
    out.extend(tuning.target_status(name) for name in tuning.TARGETS)
    out.extend(precision_status(p) for p in PRECISIONS)
    return out
