import json
import re
import subprocess
import sys

import pytest
import torch

from agd import ops
from agd.arch.fast import available_backends, convert
from agd.backends import all_backends, versions
from agd.io import AgdError
from agd.kernels import triton_status
from agd.ops import CUDA_NOT_BUILT_REASON, NOT_BUILT_REASON, NativeLibrary, library
from agd.status import BackendStatus
from agd.tuning import TARGETS, resolve_target, target_status


def test_versions_name_every_component():
    v = versions()
    assert {"agd", "torch", "triton", "tvm", "python"} <= set(v)
    assert all(isinstance(x, str) and x for x in v.values())


def test_every_backend_reports_a_reason():
    names = [b.name for b in all_backends()]
    for expected in ("triton kernels", "C++ CPU ops", "CUDA ops", "TVM x86", "TVM arm64", "TVM cuda"):
        assert expected in names
    for b in all_backends():
        assert b.reason.strip(), b


def test_triton_switches(monkeypatch):
    monkeypatch.setenv("AGD_DISABLE_TRITON", "1")
    s = triton_status("cpu")
    assert not s.available and "AGD_DISABLE_TRITON" in s.reason
    monkeypatch.delenv("AGD_DISABLE_TRITON")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    s = triton_status("cpu")
    assert not s.available and "TRITON_INTERPRET" in s.reason or "not installed" in s.reason
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    s = triton_status("cpu")
    if "not installed" not in s.reason:
        assert s.available and "interpreter" in s.reason


def test_resolve_targets():
    pytest.importorskip("tvm")
    x86 = resolve_target("x86")
    assert x86.tvm_target["kind"] == "llvm" and x86.tvm_target["mcpu"]
    arm = resolve_target("arm64")
    assert arm.tvm_target["mtriple"] == "aarch64-linux-gnu" and "+neon" in arm.tvm_target["mattr"]
    cuda = resolve_target("cuda", cuda_arch="sm_90")
    assert cuda.tvm_target["kind"] == "cuda" and cuda.tvm_target["arch"] == "sm_90" and cuda.host == {"kind": "llvm"}
    assert cuda.tvm_target["max_shared_memory_per_block"] > 0  # the limits GPU schedules read (test_tuning.py)
    rpc = resolve_target("rpc://127.0.0.1:9190/rk3399")
    assert rpc.rpc == ("127.0.0.1", 9190, "rk3399")
    with pytest.raises(AgdError, match="unknown target 'riscv'"):
        resolve_target("riscv")
    with pytest.raises(AgdError, match="rpc://HOST:PORT/KEY"):
        resolve_target("rpc://nohostport")
    for name in TARGETS:
        assert target_status(name).name == f"TVM {name}"


def _agd(*args):
    return subprocess.run([sys.executable, "-m", "agd", *args], capture_output=True, text=True, timeout=300)


def test_cli_info_json():
    r = _agd("info", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["versions"]["agd"]
    assert {b["name"] for b in data["backends"]} >= {"C++ CPU ops", "TVM x86"}


def test_cli_user_error_is_one_line_and_nonzero(tmp_path):
    r = _agd("teachers", "run", "no-such-teacher", str(tmp_path), str(tmp_path / "out"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("agd: error:") and "no-such-teacher" in lines[0]


def _swap_libraries(monkeypatch, tmp_path, how: str) -> None:
    """Point both compiled libraries at ``tmp_path``: missing files, or files that are no libraries."""
    monkeypatch.delenv("AGD_DISABLE_CPP", raising=False)
    if how == "disabled":
        monkeypatch.setenv("AGD_DISABLE_CPP", "1")
        return
    for attr, real in (("CPU_LIBRARY", library.CPU_LIBRARY), ("CUDA_LIBRARY", library.CUDA_LIBRARY)):
        path = tmp_path / f"{real.stem}.so"
        if how == "broken":
            path.write_bytes(b"not a shared library")
        monkeypatch.setattr(library, attr, NativeLibrary(path, stem=real.stem, backend=real.backend,
                                                         device_type=real.device_type,
                                                         dispatch_key=real.dispatch_key, not_built=real.not_built))


@pytest.mark.parametrize("how", ["disabled", "missing", "broken"])
def test_info_and_dispatch_agree_without_the_libraries(monkeypatch, tmp_path, how):
    """``agd info``'s C++ and CUDA ops lines and the ops' dispatch read one loader: when the libraries are
    disabled, not built or unloadable, both say "unavailable" with the same reason."""
    _swap_libraries(monkeypatch, tmp_path, how)
    info = {b.name: b for b in all_backends()}
    cpu, cuda = info["C++ CPU ops"], info["CUDA ops"]
    expect_cpu = {"disabled": "disabled by AGD_DISABLE_CPP=1", "missing": NOT_BUILT_REASON,
                  "broken": f"failed to load {tmp_path / '_C.so'}: "}[how]
    assert not cpu.available and cpu.reason.startswith(expect_cpu)
    if how == "disabled":
        expect_cuda = "disabled by AGD_DISABLE_CPP=1"
    elif torch.version.cuda is None:
        expect_cuda = f"torch {torch.__version__} is a CPU-only build"
    else:
        expect_cuda = {"missing": CUDA_NOT_BUILT_REASON, "broken": f"failed to load {tmp_path / '_C_cuda.so'}: "}[how]
    assert not cuda.available and cuda.reason.startswith(expect_cuda)
    assert ops.blocks_backend("cpu") == ("reference", cpu.reason)
    assert ops.blocks_backend("cuda") == ("reference", cuda.reason)
    assert ops.resample_backend(torch.ones(2, 3)) == "reference"
    assert ops.cpp_status() == (False, cpu.reason)
    assert available_backends() == {"cpp": cpu.reason, "cuda": cuda.reason, "reference": ""}
    with pytest.raises(AgdError, match="unavailable: " + re.escape(cpu.reason)):
        convert(torch.nn.Identity(), "cpp")


def test_info_and_dispatch_agree_with_the_cpu_library():
    """Where agd/_C*.so loads, info says available, lists its kernels, and dispatch picks it."""
    s = next(b for b in all_backends() if b.name == "C++ CPU ops")
    if not s.available:
        pytest.skip(f"C++ ops unavailable: {s.reason}")
    assert ops.blocks_backend("cpu") == ("cpp", "") and ops.resample_backend(torch.ones(2, 3)) == "cpp"
    assert s.reason.startswith("agd/_C") and "threads" in s.reason
    assert {"resample", "dwconv3x3", "norm_act_residual", "dws_block"} <= set(s.details["kernels"].split(", "))
    assert available_backends()["cpp"] == ""


def test_backend_status_of_reasons():
    assert BackendStatus.of("x", [], "runs") == BackendStatus("x", True, "runs")
    assert BackendStatus.of("x", ["a", "b"], "runs", {"k": "v"}) == BackendStatus("x", False, "a; b", {"k": "v"})
