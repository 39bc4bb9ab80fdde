"""What each compute backend of agd can do on this machine, and why not when it cannot: ``agd info``.

The aggregator only: each backend reports its own :class:`~agd.status.BackendStatus` from the module that
dispatches to it (agd.ops for the compiled libraries, oneDNN and the mixed epilogue, agd.kernels for Triton,
agd.tuning for the TVM targets, agd.machine for the CPU's precisions), so ``agd info`` prints what dispatch
decides. Nothing imports this module but the CLI and tests. Probes are cheap and lazy: nothing here is
evaluated at import time.
"""

from __future__ import annotations

import platform
import sys

import torch

import agd
from agd import kernels, ops, tuning
from agd.machine import PRECISIONS, cpu_summary, precision_instructions, precision_reason
from agd.status import BackendStatus, cuda_device_status, package_version


def versions() -> dict[str, str]:
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


def precision_status(precision: str) -> BackendStatus:
    """Whether this CPU has instructions for ``precision`` (:mod:`agd.machine`): bf16 needs AVX512-BF16 or
    AMX-BF16, int8 VNNI or AMX-INT8; the same check refuses ``--precision`` where they are missing."""
    why = precision_reason(precision)
    if why:
        return BackendStatus(f"{precision} on this CPU", False, why)
    return BackendStatus(f"{precision} on this CPU", True, precision_instructions(precision))


def all_backends() -> list[BackendStatus]:
    """Every backend in the order ``agd info`` prints them."""
    out = [cuda_device_status(), kernels.triton_status(), ops.cpp_ops_status(), ops.onednn_status(),
           ops.mixed_epilogue_status(), ops.cuda_ops_status()]
    out.extend(tuning.target_status(name) for name in tuning.TARGETS)
    out.extend(precision_status(p) for p in PRECISIONS)
    return out
