"""The backend-status protocol that dispatch and ``agd info`` share.

Every compute backend of agd (the compiled op libraries, oneDNN's fused convolution, the Triton kernels,
the TVM targets, the CPU's precisions) answers with a :class:`BackendStatus`: whether it runs here and,
either way, one line saying why. A backend that can fail for several reasons collects them
(xformers' ``not_supported_reasons``): :meth:`BackendStatus.of` makes the status from that list, so the
dispatch that asks "which reasons stop it?" and ``agd info`` that prints the status read the same probe.

A leaf module (standard library and torch only): agd.ops, agd.kernels and agd.tuning import it, and
agd.backends gathers their statuses for ``agd info``.
"""

from __future__ import annotations

import functools
import importlib.metadata
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class BackendStatus:
    """One backend: whether it is usable here and, either way, a one-line reason."""

    name: str
    available: bool
    reason: str
    details: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, name: str, not_supported: list[str], supported: str,
           details: dict[str, str] | None = None) -> BackendStatus:
        """Available with reason ``supported`` when ``not_supported`` is empty, else unavailable with the
        reasons joined by "; "."""
        if not_supported:
            return cls(name, False, "; ".join(not_supported), dict(details or {}))
        return cls(name, True, supported, dict(details or {}))


@functools.lru_cache(maxsize=None)
def package_version(dist: str) -> str | None:
    """Installed version of a distribution, without importing it (None when not installed); looked up once
    per process (the kernels' dispatch asks on every call, and a lookup scans site-packages)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def cuda_device_status() -> BackendStatus:
    """The first CUDA (or ROCm) device torch sees, or why there is none."""
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return BackendStatus("cuda device", False, f"torch {torch.__version__} is a CPU-only build")
    if not torch.cuda.is_available():
        return BackendStatus("cuda device", False, "torch has CUDA but no device is visible")
    name = torch.cuda.get_device_name(0)
    cap = ".".join(map(str, torch.cuda.get_device_capability(0)))
    return BackendStatus("cuda device", True, f"{name} (sm {cap})", {"count": str(torch.cuda.device_count())})
