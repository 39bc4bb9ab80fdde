"""The ``agd`` operator namespace, and the one loader for the compiled libraries that add kernels to it.

Registration scheme: the op modules of this package define their schemas in the ``agd`` namespace
(:data:`LIB`, a ``FRAGMENT`` library, so other fragments can coexist) and register beside each a fake
implementation, the PyTorch reference as the ``CompositeExplicitAutograd`` kernel (the op exists on every
device without any compiled code) and the backward formula. The compiled libraries (built by setup.py from
csrc/, next to ``agd/__init__.py``) add kernels for a backend dispatch key with ``TORCH_LIBRARY_IMPL``; a
kernel registered for a backend key takes precedence over the composite one:
- ``agd/_C*.so``: the ``CPU`` kernels, plus ``agd::build_info() -> str`` and
  ``agd::block_gemm_backend() -> str``;
- ``agd/_C_cuda*.so``: the ``CUDA`` kernels of the block ops (only with a CUDA torch and nvcc at build time).

Both are :class:`NativeLibrary` instances, loaded lazily on the first call that can use them (or their
status), never at import time. ``AGD_DISABLE_CPP=1`` forces the references for both; it is read at every
call, so it takes effect even after a library was loaded. Dispatch (:func:`backend_for`) and ``agd info``
(:meth:`NativeLibrary.status`) read the same :meth:`NativeLibrary.not_supported_reasons`.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import torch

from agd.status import BackendStatus

LIB = torch.library.Library("agd", "FRAGMENT")

DISABLE_ENV = "AGD_DISABLE_CPP"
NOT_BUILT_REASON = "agd._C is not built (reinstall without AGD_SKIP_CPP=1; needs a C++ compiler)"
CUDA_NOT_BUILT_REASON = "agd._C_cuda is not built (needs a CUDA torch and nvcc at build time; FORCE_CUDA=1 without a GPU)"
PACKAGE_DIR = Path(__file__).resolve().parent.parent  # agd/: where setup.py puts agd._C and agd._C_cuda
_LIBRARY_SUFFIXES = (".so", ".pyd", ".dylib")


def disabled_by_env() -> str | None:
    """The value of AGD_DISABLE_CPP when it switches the compiled ops off, else None."""
    value = os.environ.get(DISABLE_ENV, "").strip()
    return value if value.lower() in ("1", "true", "yes", "on") else None


def find_library(stem: str, package_dir: Path | None = None) -> Path | None:
    """The built ``<stem>*.so`` in ``package_dir`` (default agd/): ``_C.so``, ``_C.abi3.so``,
    ``_C.cpython-*.so`` for stem ``_C``; ``_C_cuda.so`` ... for ``_C_cuda``; None when there is none."""
    folder = package_dir if package_dir is not None else PACKAGE_DIR
    found = sorted(p for p in folder.glob(f"{stem}.*")
                   if p.suffix in _LIBRARY_SUFFIXES and p.name.split(".")[0] == stem and p.is_file())
    return found[0] if found else None


def find_cpu_library(package_dir: Path | None = None) -> Path | None:
    """The built ``agd/_C*.so`` (``_C.so``, ``_C.abi3.so``, ``_C.cpython-*.so``), or None."""
    return find_library("_C", package_dir)


def has_kernel(op: str, key: str = "CPU") -> bool:
    """A kernel for dispatch key ``key`` (a compiled one) is registered in this process for ``agd::<op>``."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(f"agd::{op}", key)


class NativeLibrary:
    """One compiled operator library, loaded with ``torch.ops.load_library`` on first use.

    ``path`` None means: look for ``agd/<stem>*.so`` when first needed. The outcome of the first attempt is
    remembered for the process, so later calls cost no file-system access: a missing library stays "not
    built" (until a new process), a load that failed is not retried, and a loaded library stays loaded (its
    kernels cannot be unregistered). Tests swap in another instance (e.g. one pointing at a missing path) to
    see the not-built behaviour. ``backend`` is the name dispatch gives its kernels ("cpp", "cuda"),
    ``device_type`` the tensors they run on, ``dispatch_key`` the key they are registered for.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, stem: str = "_C", backend: str = "cpp",
                 device_type: str = "cpu", dispatch_key: str = "CPU", not_built: str = NOT_BUILT_REASON) -> None:
        self._path = Path(path) if path is not None else None
        self.stem, self.backend, self.device_type, self.dispatch_key = stem, backend, device_type, dispatch_key
        self.not_built = not_built
        self._loaded_path: Path | None = None
        self._error: str | None = None
        self._lock = threading.Lock()

    def path(self) -> Path | None:
        return self._path if self._path is not None else find_library(self.stem)

    @property
    def loaded(self) -> bool:
        return self._loaded_path is not None

    def display_name(self, path: Path) -> str:
        """``agd/_C.so`` for the library inside the package, the full path otherwise."""
        return f"agd/{path.name}" if path.resolve().parent == PACKAGE_DIR else str(path)

    def load(self) -> tuple[bool, str]:
        """Load once; return (loaded, "" or the reason it is not)."""
        with self._lock:
            if self._loaded_path is not None:
                return True, ""
            if self._error is not None:
                return False, self._error
            path = self.path()
            if path is None or not path.is_file():
                self._error = self.not_built
                return False, self._error
            try:
                torch.ops.load_library(str(path))
            except Exception as e:  # an ABI mismatch or a broken file: fall back, say why
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                self._error = f"failed to load {self.display_name(path)}: {first}"
                return False, self._error
            self._loaded_path = path
            return True, ""

    def not_supported_reasons(self) -> list[str]:
        """Why this library's kernels cannot run now (empty: they can); loads the library if it may."""
        value = disabled_by_env()
        if value is not None:
            return [f"disabled by {DISABLE_ENV}={value}"]
        if self.device_type == "cuda" and torch.version.cuda is None:
            return [f"torch {torch.__version__} is a CPU-only build"]
        ok, why = self.load()
        if not ok:
            return [why]
        if self.device_type == "cuda" and not torch.cuda.is_available():
            assert self._loaded_path is not None
            return [f"{self.display_name(self._loaded_path)} is loaded but torch sees no CUDA device"]
        return []

    def kernels(self) -> list[str]:
        """The ``agd`` ops this library registered kernels for (for ``agd info``'s details)."""
        names = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("agd::"))
        return [n[len("agd::"):] for n in names if has_kernel(n[len("agd::"):], self.dispatch_key)]

    def describe(self) -> str:
        """One line on the loaded library: the CPU one reports its build, the CUDA one its device."""
        assert self._loaded_path is not None
        name = self.display_name(self._loaded_path)
        if self.device_type == "cuda":
            cap = ".".join(map(str, torch.cuda.get_device_capability(0)))
            return f"{name} on {torch.cuda.get_device_name(0)} (sm {cap})"
        return f"{name}: {torch.ops.agd.build_info()}, {torch.get_num_threads()} threads"

    def status(self, name: str) -> BackendStatus:
        """``agd info``'s line for this library (loads it): what it is and runs, or why it does not."""
        reasons = self.not_supported_reasons()
        if reasons:
            return BackendStatus.of(name, reasons, "")
        return BackendStatus.of(name, [], self.describe(), {"kernels": ", ".join(self.kernels())})


CPU_LIBRARY = NativeLibrary()
CUDA_LIBRARY = NativeLibrary(stem="_C_cuda", backend="cuda", device_type="cuda", dispatch_key="CUDA",
                             not_built=CUDA_NOT_BUILT_REASON)


def library_for(device_type: str) -> NativeLibrary | None:
    """The library with kernels for tensors of ``device_type`` (None: agd has none for it)."""
    return {"cpu": CPU_LIBRARY, "cuda": CUDA_LIBRARY}.get(device_type)


def backend_for(device: torch.device | str) -> tuple[str, str]:
    """(backend, reason) of the compiled ops on ``device``: "cpp" (C++ CPU kernels), "cuda" (agd's CUDA
    kernels) or "reference" (the PyTorch references, with the reason the compiled ones do not run)."""
    dev = torch.device(device)
    lib = library_for(dev.type)
    if lib is None:
        value = disabled_by_env()
        why = f"disabled by {DISABLE_ENV}={value}" if value is not None else f"no agd kernels for device type {dev.type!r}"
        return "reference", why
    reasons = lib.not_supported_reasons()
    return ("reference", "; ".join(reasons)) if reasons else (lib.backend, "")


def cpp_status() -> tuple[bool, str]:
    """Whether the C++ CPU ops run here and, either way, a one-line reason (loads the library)."""
    s = CPU_LIBRARY.status("C++ CPU ops")
    return s.available, s.reason


def cpp_ops_status() -> BackendStatus:
    """``agd info``'s line for the C++ CPU library."""
    return CPU_LIBRARY.status("C++ CPU ops")


def cuda_ops_status() -> BackendStatus:
    """``agd info``'s line for the CUDA library (agd/_C_cuda*.so, built only with a CUDA torch and nvcc)."""
    return CUDA_LIBRARY.status("CUDA ops")
