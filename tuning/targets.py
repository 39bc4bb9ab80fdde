"""Deployment targets: what TVM builds for, what is needed to build and to run there.

A target is named (``x86``, ``arm64``, ``cuda``) or given as ``rpc://HOST:PORT/KEY`` for a device behind
a TVM RPC tracker. Each resolves to a TVM target as a JSON dict (TVM's own representation).
"""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from agd.io import AgdError
from agd.status import BackendStatus, package_version
from agd.tuning.emulate import DEFAULT_DIR, find_qemu, unavailable_reason

TARGETS = ("x86", "arm64", "cuda")
ARM64_CROSS_CXX = "aarch64-linux-gnu-g++"
ARM64_CORES = 4  # MetaSchedule needs a core count; typical of phone big clusters and boards


@dataclass(frozen=True)
class TargetSpec:
    """A resolved target: the TVM target dict, its host, and how artifacts are built and run."""

    name: str
    tvm_target: dict[str, Any]
    host: dict[str, Any] | None = None
    cross_compiler: str | None = None  # export_library compiler for a foreign architecture
    rpc: tuple[str, int, str] | None = None  # (host, port, key) of a TVM RPC tracker
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def runs_on_this_cpu(self) -> bool:
        """The build runs on this machine's x86 CPU, so a precision needs this CPU's instructions (an
        rpc:// device, a cross-compiled aarch64 build and a GPU bring their own)."""
        return self.name == "x86"


def _tvm_env() -> ModuleType:
    """:mod:`agd.tuning.tvm_env` (AgdError when TVM is unusable), imported on first use: this module is the
    status path (``agd info``, :mod:`agd.backends`, the command line's start), which must work, and stay
    quick, without TVM."""
    from agd.tuning import tvm_env

    return tvm_env


def host_cpu() -> str:
    """LLVM's name for this machine's CPU (e.g. ``znver3``, ``skylake-avx512``)."""
    return _tvm_env().tvm.target.codegen.llvm_get_system_cpu()


def resolve_target(name: str, cuda_arch: str | None = None) -> TargetSpec:
    """Turn a target name into a :class:`TargetSpec`; AgdError for an unknown name."""
    if name == "x86":
        if platform.machine() not in ("x86_64", "AMD64"):
            raise AgdError(f"target x86: this machine is {platform.machine()}; use arm64 or an rpc:// target")
        cpu = host_cpu()
        cores = _physical_cores()
        return TargetSpec("x86", {"kind": "llvm", "mcpu": cpu, "num-cores": cores}, notes={"cpu": cpu})
    if name == "arm64":
        tgt = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"], "num-cores": ARM64_CORES}
        native = platform.machine() in ("aarch64", "arm64")
        return TargetSpec("arm64", tgt, cross_compiler=None if native else ARM64_CROSS_CXX)
    if name == "cuda":
        local = _local_cuda_limits()
        arch = cuda_arch or (local or {}).get("arch") or "sm_90"
        limits = local if local is not None and local["arch"] == arch else CUDA_DEFAULT_LIMITS
        tgt = {"kind": "cuda", **{k: v for k, v in limits.items() if k != "arch"}, "arch": arch}
        where = "read off the local GPU" if limits is local else "Hopper defaults (no local GPU of that arch)"
        return TargetSpec("cuda", tgt, host={"kind": "llvm"}, notes={"arch": arch, "limits": where})
    if name.startswith("rpc://"):
        rest = name[len("rpc://"):]
        try:
            hostport, key = rest.split("/", 1)
            host, port = hostport.rsplit(":", 1)
            rpc = (host, int(port), key)
        except ValueError:
            raise AgdError(f"target {name!r}: expected rpc://HOST:PORT/KEY") from None
        if not key:
            raise AgdError(f"target {name!r}: the device key after the port is empty")
        return TargetSpec(name, {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"],
                                 "num-cores": ARM64_CORES},
                          cross_compiler=ARM64_CROSS_CXX, rpc=rpc,
                          notes={"num-cores": f"{ARM64_CORES} assumed (MetaSchedule's thread count on the device)"})
    raise AgdError(f"unknown target {name!r}: expected one of {', '.join(TARGETS)} or rpc://HOST:PORT/KEY")


def _physical_cores() -> int:
    try:  # psutil is optional (agd[tvm] installs it): without it the logical count stands in
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


# What MetaSchedule's GPU rules and dlight read off a CUDA target besides its arch (TVM's own cuda target
# carries only the thread counts, and its schedule checks then assume nothing about shared memory or L2).
# Defaults: an H100's (TVM's nvidia/nvidia-h100 tag); a local GPU's own figures replace them.
CUDA_DEFAULT_LIMITS = {"max_num_threads": 1024, "max_threads_per_block": 1024, "thread_warp_size": 32,
                       "max_shared_memory_per_block": 49152, "registers_per_block": 65536,
                       "l2_cache_size_bytes": 52428800}


def _local_cuda_limits() -> dict[str, Any] | None:
    """The first visible GPU's arch and the CUDA target limits above, read through torch; None without one."""
    if not torch.cuda.is_available():
        return None
    p = torch.cuda.get_device_properties(0)
    out = dict(CUDA_DEFAULT_LIMITS, arch=f"sm_{p.major}{p.minor}")
    for key, attr in (("max_threads_per_block", "max_threads_per_block"), ("thread_warp_size", "warp_size"),
                      ("registers_per_block", "regs_per_block"),  # absent in some torch builds: defaults stay
                      ("l2_cache_size_bytes", "L2_cache_size"), ("max_shared_memory_per_block", "shared_memory_per_block")):
        v = getattr(p, attr, None)
        if isinstance(v, int) and v > 0:
            out[key] = v
    out["max_num_threads"] = out["max_threads_per_block"]
    return out


def target_status(name: str) -> BackendStatus:
    """Whether agd can build for and run on the named target here, with the reason."""
    label = f"TVM {name}"
    version = package_version("apache-tvm")
    if version is None:
        return BackendStatus(label, False, "apache-tvm is not installed (pip install 'agd[tvm]')")
    try:
        env = _tvm_env()
    except AgdError as e:
        return BackendStatus(label, False, str(e))
    tvm = env.tvm
    codegen = tvm.target.codegen
    llvm_targets = set(codegen.llvm_get_targets()) if tvm.runtime.enabled("llvm") else set()
    if name == "x86":
        if platform.machine() not in ("x86_64", "AMD64"):
            return BackendStatus(label, False, f"host is {platform.machine()}")
        if "x86_64" not in llvm_targets:
            return BackendStatus(label, False, "this TVM build has no LLVM x86 backend")
        cpu = codegen.llvm_get_system_cpu()
        feats = codegen.llvm_get_cpu_features(tvm.target.Target({"kind": "llvm", "mcpu": cpu}))
        simd = [f for f in ("avx512f", "avx2", "avx", "fma") if f in feats]
        return BackendStatus(label, True, f"llvm {codegen.llvm_version_major()}, cpu {cpu} ({' '.join(simd) or 'no AVX'})")
    if name == "arm64":
        if "aarch64" not in llvm_targets:
            return BackendStatus(label, False, "this TVM build has no LLVM aarch64 backend")
        if platform.machine() in ("aarch64", "arm64"):
            return BackendStatus(label, True, "native aarch64 host")
        if shutil.which(ARM64_CROSS_CXX) is None:
            return BackendStatus(label, False, f"cross compiler {ARM64_CROSS_CXX} not found (apt-get install g++-aarch64-linux-gnu)")
        qemu = find_qemu()
        emu = unavailable_reason(DEFAULT_DIR)
        run = "runs via TVM RPC" + (f"; emulated device: {Path(qemu).name} + {DEFAULT_DIR}" if qemu and emu is None
                                    else f"; no emulated device ({emu})")
        return BackendStatus(label, True, f"cross-compiles with {ARM64_CROSS_CXX}; {run}")
    if name == "cuda":
        if env.tvm_ffi.get_global_func("target.build.cuda", allow_missing=True) is None:
            return BackendStatus(label, False, "this TVM build has no CUDA code generator")
        if tvm.cuda(0).exist:
            return BackendStatus(label, True, "builds and runs (CUDA device present)")
        return BackendStatus(label, True, "builds here; running and tuning need a CUDA device (none visible)")
    return BackendStatus(label, False, f"unknown target {name!r}")
