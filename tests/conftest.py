"""Shared test fixtures: where ../shared/data is, an aarch64 RPC device, and skips that say why."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest
import torch

# Without CUDA the Triton kernels run in Triton's interpreter (tests/test_kernels.py). TRITON_INTERPRET=1 must be
# set before triton.language is first imported (its own helpers are decorated then; torch's flop counter imports
# it), so it is set here, before any test module is imported. Nothing else changes: CPU tensors never take the
# Triton path unless a test asks for it (agd.ops.mixed_epilogue_backend gives "eager" for them).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (Set5, Set14, weights, ...); the test is skipped when it is absent."""
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (see README: tests that need real images skip)")
    return SHARED_DATA


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def arm64_rpc():
    """(rpc://HOST:PORT/KEY, emulated) of an aarch64 TVM RPC device: AGD_TEST_ARM64_RPC (a real device's
    tracker), else an emulated one started here: a tracker in this process and an aarch64 Python RPC
    server under qemu-aarch64 from AGD_ARM64_SYSROOT or .cache/arm64-emu (`python3 tools/arm64_emulator.py
    setup DIR` provisions it; .ci/run does). Skips when neither is available."""
    url = os.environ.get("AGD_TEST_ARM64_RPC")
    if url:
        yield url, False
        return
    pytest.importorskip("tvm")
    from tvm.rpc.tracker import Tracker

    from agd.tuning.emulate import DEFAULT_DIR, unavailable_reason
    from agd.tuning.emulate_server import start_rpc_server

    if shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("aarch64-linux-gnu-g++ absent (apt-get install g++-aarch64-linux-gnu; .ci/run installs it)")
    emu = Path(os.environ.get("AGD_ARM64_SYSROOT") or REPO / DEFAULT_DIR)
    reason = unavailable_reason(emu)
    if reason is not None:
        pytest.skip(f"no emulated aarch64 device: {reason}; or set AGD_TEST_ARM64_RPC=rpc://HOST:PORT/KEY")
    tport = _free_port()
    tracker = Tracker("127.0.0.1", port=tport, port_end=tport + 1, silent=True)
    try:
        with start_rpc_server(emu, "127.0.0.1", tracker.port, "agd-arm64-emu", timeout_s=120) as server:
            yield server.url, True
    finally:
        tracker.terminate()
