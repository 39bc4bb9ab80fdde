"""Can Triton kernels run here, and if not, why."""

from __future__ import annotations

import os

import torch

from agd.status import BackendStatus, package_version

# Triton's interpreter crashes on loops over runtime integers with numpy 2.x before 3.7.1.
MIN_INTERPRETER_VERSION = (3, 7, 1)


def _parse(v: str) -> tuple[int, ...]:
    parts = []
    for p in v.split("+")[0].split("."):
        if not p.isdigit():
            break
        parts.append(int(p))
    return tuple(parts)


def triton_status(device: torch.device | str | None = None) -> BackendStatus:
    """Status of the Triton backend for tensors on ``device`` (default: CUDA if present, else CPU)."""
    if os.environ.get("AGD_DISABLE_TRITON", "") == "1":
        return BackendStatus("triton kernels", False, "disabled by AGD_DISABLE_TRITON=1")
    version = package_version("triton")
    if version is None:
        return BackendStatus("triton kernels", False, "triton is not installed (pip install 'triton>=3.7.1')")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    details = {"triton": version}
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return BackendStatus("triton kernels", False, "no CUDA device visible to torch", details)
        return BackendStatus("triton kernels", True, f"triton {version} on {torch.cuda.get_device_name(device)}", details)
    if os.environ.get("TRITON_INTERPRET", "") == "1":
        if _parse(version) < MIN_INTERPRETER_VERSION:
            need = ".".join(map(str, MIN_INTERPRETER_VERSION))
            return BackendStatus("triton kernels", False, f"triton {version} interpreter is unreliable on CPU; need >= {need}", details)
        return BackendStatus("triton kernels", True, f"triton {version} interpreter on CPU (TRITON_INTERPRET=1; for tests, slow)", details)
    return BackendStatus(
        "triton kernels", False,
        f"no GPU for triton {version}; set TRITON_INTERPRET=1 to run kernels in the interpreter on CPU (tests only)",
        details,
    )
