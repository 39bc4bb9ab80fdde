"""Build agd: pure-Python package plus optional C++ (and CUDA) operator libraries.

Environment switches:
  AGD_SKIP_CPP=1      build no extension at all (everything still imports and runs on the
                      PyTorch reference implementations)
  FORCE_CUDA=1        build the CUDA library even without a visible GPU (needs a CUDA torch and
                      nvcc; set TORCH_CUDA_ARCH_LIST, e.g. "9.0")
  AGD_SKIP_CUDA=1     build the CPU library only
  MAX_JOBS=N          parallel compile jobs for ninja (default: min(cpu count, 4))
  AGD_DEBUG_BUILD=1   -O0 -g instead of -O3

Install with ``pip install --no-build-isolation``: the extension compiles against the torch already
in the environment (an isolated build would fetch another torch).
"""

from __future__ import annotations

import glob
import os
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))

PACKAGES = [
    "agd",
    "agd.teachers",
    "agd.data",
    "agd.metrics",
    "agd.cost",
    "agd.space",
    "agd.arch",
    "agd.search",
    "agd.bench",
    "agd.ops",
    "agd.distill",
    "agd.commands",
    "agd.jobs",
    "agd.kernels",
    "agd.tuning",
]
PACKAGE_DIR = {"agd": "agd", "agd.kernels": "kernels", "agd.tuning": "tuning"}
# nvcc's own flags (torch adds its defines and -gencode); literals: tests/test_csrc_blocks.py compiles the
# kernels with exactly these where no CUDA torch exists. nvcc knows no -g0.
NVCC_FLAGS = ["-O3", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo"]
NVCC_DEBUG_FLAGS = ["-O0", "-g", "-std=c++17", "--expt-relaxed-constexpr", "-lineinfo"]


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _rel_sources(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern), recursive=True))


def _extensions():
    """Return (ext_modules, cmdclass, note). Never raises for a missing toolchain: C++ is optional."""
    if _env_flag("AGD_SKIP_CPP"):
        return [], {}, "AGD_SKIP_CPP=1: no C++ extension built"
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
    if cxx is None:
        return [], {}, "no C++ compiler found: no C++ extension built (agd runs on PyTorch references)"
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        return [], {}, "torch is not importable at build time: install torch first, then pip install --no-build-isolation"

    os.environ.setdefault("MAX_JOBS", str(max(1, min(os.cpu_count() or 1, 4))))
    debug = _env_flag("AGD_DEBUG_BUILD")
    opt = ["-O0", "-g"] if debug else ["-O3", "-g0"]
    cxx_flags = opt + ["-std=c++17", "-fopenmp", "-fvisibility=hidden"]
    build_flags = " ".join(cxx_flags)
    define_macros = [("AGD_BUILD_FLAGS", f'"{build_flags}"'), ("Py_LIMITED_API", "0x03090000")]

    cpu_sources = _rel_sources("csrc/cpu/**/*.cpp") + _rel_sources("csrc/*.cpp")
    exts = []
    if cpu_sources:
        exts.append(
            CppExtension(
                "agd._C",
                cpu_sources,
                include_dirs=[os.path.join(ROOT, "csrc")],
                extra_compile_args={"cxx": cxx_flags},
                extra_link_args=["-fopenmp"],
                define_macros=define_macros,
                py_limited_api=True,
            )
        )

    cuda_sources = _rel_sources("csrc/cuda/**/*.cu") + _rel_sources("csrc/cuda/**/*.cpp")
    want_cuda = (
        not _env_flag("AGD_SKIP_CUDA")
        and bool(cuda_sources)
        and torch.version.cuda is not None
        and CUDA_HOME is not None
        and (torch.cuda.is_available() or _env_flag("FORCE_CUDA"))
    )
    if want_cuda:
        nvcc_flags = NVCC_DEBUG_FLAGS if debug else NVCC_FLAGS
        exts.append(
            CUDAExtension(
                "agd._C_cuda",
                cuda_sources,
                include_dirs=[os.path.join(ROOT, "csrc")],
                extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
                extra_link_args=["-fopenmp"],
                define_macros=define_macros + [("AGD_WITH_CUDA", "1")],
                py_limited_api=True,
            )
        )
    if not exts:
        return [], {}, "no C++ sources"
    cmdclass = {"build_ext": BuildExtension.with_options(no_python_abi_suffix=True, use_ninja=True)}
    return exts, cmdclass, f"building {', '.join(e.name for e in exts)} with {cxx}, MAX_JOBS={os.environ['MAX_JOBS']}"


ext_modules, cmdclass, note = _extensions()
print(f"agd setup: {note}", file=sys.stderr)

setup(
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    options={"bdist_wheel": {"py_limited_api": "cp39"}} if ext_modules else {},
    zip_safe=False,
)
