"""A TVM RPC server for an emulated aarch64 device (:mod:`agd.tuning.emulate`), registered with a tracker.

:func:`start_rpc_server` launches ``python -m tvm.exec.rpc_server`` in the guest's Python under
``qemu-aarch64-static -L SYSROOT``, with ``sys.executable`` pointing at a wrapper that re-enters qemu
(the server starts its worker with ``sys.executable``; binfmt_misc need not be registered), waits until
the key is registered with the tracker, and kills the whole process group when closed. No network
beyond the tracker: the device folder is provisioned beforehand (``python3 tools/arm64_emulator.py setup
DIR``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agd.io import AgdError
from agd.tuning.emulate import find_qemu, guest_command, guest_env, read_guest, unavailable_reason, write_wrapper
from agd.tuning.measure import check_reachable
from agd.tuning.tvm_env import rpc

# the server's entry point, with sys.executable replaced by the wrapper (argv[1]) before TVM starts workers
_BOOT = ("import runpy, sys; sys.executable = sys.argv[1]; sys.argv = [sys.argv[0]] + sys.argv[2:]; "
         "runpy.run_module('tvm.exec.rpc_server', run_name='__main__', alter_sys=True)")


@dataclass
class EmulatedRpcServer:
    """A TVM RPC server running under qemu-aarch64, registered with a tracker; a context manager that
    kills its process group (the server, its worker and session processes) on exit."""

    proc: subprocess.Popen
    workdir: Path
    tracker: tuple[str, int]
    key: str
    closed: bool = field(default=False)

    @property
    def url(self) -> str:
        """The agd target of this device (``rpc://HOST:PORT/KEY``)."""
        return f"rpc://{self.tracker[0]}:{self.tracker[1]}/{self.key}"

    def log_tail(self, lines: int = 3) -> str:
        log = self.workdir / "server.log"
        text = log.read_text(errors="replace") if log.is_file() else ""
        return " | ".join(ln.strip() for ln in text.strip().splitlines()[-lines:]) or "(no output)"

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        _kill_group(self.proc)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> EmulatedRpcServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _kill_group(proc: subprocess.Popen, grace_s: float = 3.0) -> None:
    """SIGTERM the process group led by ``proc``, SIGKILL what is left after ``grace_s``, reap ``proc``."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            pass
    proc.wait()


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _free_slots(tracker: Any, key: str) -> int:
    return int(tracker.summary().get("queue_info", {}).get(key, {}).get("free", 0))


def start_rpc_server(emu_dir: Path, tracker_host: str, tracker_port: int, key: str, timeout_s: float = 120.0,
                     qemu: str | None = None, host: str = "127.0.0.1") -> EmulatedRpcServer:
    """Start ``python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY`` in the aarch64 Python of
    ``emu_dir`` under qemu, listening on ``host``, and wait (at most ``timeout_s``: tens of seconds under
    emulation) until the tracker lists the key as free."""
    reason = unavailable_reason(emu_dir, qemu)
    qemu_path = find_qemu(qemu)
    if reason is not None or qemu_path is None:
        raise AgdError(f"emulated aarch64 RPC server: {reason}")
    check_reachable(tracker_host, tracker_port, min(timeout_s, 10.0))
    guest = read_guest(emu_dir)
    workdir = Path(tempfile.mkdtemp(prefix="agd-arm64-rpc-"))
    command = guest_command(qemu_path, guest)
    wrapper = write_wrapper(workdir / "python3", command)
    port = _free_port(host)
    args = ["-c", _BOOT, str(wrapper), "--host", host, "--port", str(port), "--port-end", str(port + 100),
            "--tracker", f"{tracker_host}:{tracker_port}", "--key", key]
    with open(workdir / "server.log", "wb") as log:
        proc = subprocess.Popen([*command, *args], env=guest_env(guest, os.environ), cwd=workdir,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = EmulatedRpcServer(proc, workdir, (tracker_host, tracker_port), key)
    try:
        tracker = rpc.connect_tracker(tracker_host, tracker_port)
        try:
            _wait_registered(server, tracker, timeout_s)
        finally:
            tracker.close()
    except BaseException:
        server.close()
        raise
    return server


def _wait_registered(server: EmulatedRpcServer, tracker: Any, timeout_s: float, poll_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    host, port = server.tracker
    while _free_slots(tracker, server.key) < 1:
        code = server.proc.poll()
        if code is not None:
            raise AgdError(f"emulated aarch64 RPC server exited ({code}) before registering key {server.key!r}: "
                           f"{server.log_tail()}")
        if time.monotonic() > deadline:
            raise AgdError(f"emulated aarch64 RPC server did not register key {server.key!r} with tracker "
                           f"{host}:{port} within {timeout_s:g} s (qemu); last output: {server.log_tail()}")
        time.sleep(poll_s)
