import json
import subprocess
import sys

import pytest

from agd.backends import all_backends, versions
from agd.io import AgdError
from agd.kernels import triton_status
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
