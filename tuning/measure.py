"""Run and time compiled generators: on this machine, or on a device behind a TVM RPC tracker / server."""

from __future__ import annotations

import importlib
import socket
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from agd.io import AgdError
from agd.timing import Summary
from agd.tuning.build import export_library
from agd.tuning.targets import TargetSpec
from agd.tuning.tune import alloc_rpc_arguments


def _tvm(*submodules: str) -> Any:
    """The ``tvm`` package with ``submodules`` (e.g. "rpc.base") loaded. TVM is optional (the ``tvm`` extra),
    so this module imports it here, on first use and nowhere else: importing agd.tuning works without it."""
    tvm = importlib.import_module("tvm")
    for name in submodules:
        importlib.import_module(f"tvm.{name}")
    return tvm


@dataclass(frozen=True)
class TimingConfig:
    number: int = 5  # runs per repeat (TVM time_evaluator)
    repeat: int = 5
    min_repeat_ms: int = 50  # each repeat runs at least this long (number grows)
    warmup: int = 2


def check_reachable(host: str, port: int, timeout_s: float, what: str = "RPC tracker") -> None:
    """AgdError unless a TVM RPC tracker at host:port connects and answers its handshake within
    ``timeout_s`` (TVM's own client retries for 60 s and then blocks on the handshake without a timeout)."""
    base = _tvm("rpc.base").rpc.base
    hint = ("start it with `python -m tvm.exec.rpc_tracker --port PORT` and register devices with "
            "`python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY`")
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
            reply = sock.recv(4)
    except socket.timeout:
        raise AgdError(f"{what} {host}:{port} did not answer within {timeout_s:g} s (timed out); {hint}") from None
    except OSError as e:
        raise AgdError(f"{what} {host}:{port} unreachable within {timeout_s:g} s "
                       f"({e.strerror or type(e).__name__}); {hint}") from None
    if len(reply) != 4 or struct.unpack("<i", reply)[0] != base.RPC_TRACKER_MAGIC:
        raise AgdError(f"{what} {host}:{port} answered, but not as a TVM RPC tracker; {hint}")


def rpc_session(spec: TargetSpec, timeout_s: float = 10.0, session_timeout_s: float = 600.0) -> Any:
    """A remote session on a device with the spec's key, through its tracker."""
    rpc = _tvm("rpc").rpc
    assert spec.rpc is not None
    host, port, key = spec.rpc
    check_reachable(host, port, timeout_s)
    try:
        tracker = rpc.connect_tracker(host, port)
        return tracker.request(key, priority=1, session_timeout=session_timeout_s, max_retry=2)
    except Exception as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise AgdError(f"RPC tracker {host}:{port}: no session for device key {key!r} ({first}); "
                       "`python -m tvm.exec.query_rpc_tracker --port PORT` lists the registered keys") from None


def rpc_runner(spec: TargetSpec, timeout_s: float = 10.0, runner_timeout_s: float = 10.0) -> Any:
    """A MetaSchedule runner that measures candidates on the spec's RPC device."""
    ms = _tvm("s_tir.meta_schedule").s_tir.meta_schedule
    assert spec.rpc is not None
    host, port, key = spec.rpc
    check_reachable(host, port, timeout_s)
    cfg = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key, session_timeout_sec=600)
    return ms.runner.RPCRunner(cfg, ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=50),
                               timeout_sec=runner_timeout_s, f_alloc_argument=alloc_rpc_arguments)


class CompiledModel:
    """A compiled generator loaded on a device (local or remote) with its parameters uploaded."""

    def __init__(self, ex: Any, params: list[Any], spec: TargetSpec, session: Any = None,
                 device_kind: str | None = None) -> None:
        tvm = _tvm("relax", "runtime")
        relax = tvm.relax
        self.spec = spec
        self.session = session
        kind = device_kind or ("cuda" if spec.tvm_target.get("kind") == "cuda" else "cpu")
        if session is not None:
            with tempfile.TemporaryDirectory() as tmp:
                lib = export_library(ex, spec, Path(tmp) / "model.so")
                session.upload(str(lib))
                rlib = session.load_module("model.so")
            self.dev = session.device(kind, 0)
            self.vm = relax.VirtualMachine(rlib, self.dev)
        else:
            self.dev = tvm.device(kind, 0)
            if not self.dev.exist:
                raise AgdError(f"target {spec.name}: no {kind} device on this machine to run it "
                               "(build only; run it on a machine that has one, or through rpc://)")
            self.vm = relax.VirtualMachine(ex, self.dev)
        self.params = [tvm.runtime.tensor(p.numpy(), self.dev) for p in params]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        tvm = _tvm("runtime")
        out = self.vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x, dtype=np.float32), self.dev), *self.params)
        return out.numpy()  # ``main`` returns the one output tensor (unwrap_unit_return_tuple)

    def bind(self, x: np.ndarray) -> Callable[[], None]:
        """A call on ``x`` uploaded once to the device, returning when the device has finished (what a
        wall-clock timing of the model alone should run; ``__call__`` also copies input and output)."""
        tvm = _tvm("runtime")
        inp = tvm.runtime.tensor(np.ascontiguousarray(x, dtype=np.float32), self.dev)
        main = self.vm["main"]

        def run() -> None:
            main(inp, *self.params)
            self.dev.sync()

        return run

    def time_ms(self, x: np.ndarray, cfg: TimingConfig = TimingConfig()) -> dict[str, float]:
        """Median / min / mean milliseconds per call and the count (:class:`agd.timing.Summary`), timed by
        TVM's ``time_evaluator`` (the device's own timer: the RPC device's on a remote session; ``number``
        calls averaged per repeat) after ``warmup`` untimed runs."""
        tvm = _tvm("runtime")
        inp = tvm.runtime.tensor(np.ascontiguousarray(x, dtype=np.float32), self.dev)
        f = self.vm.time_evaluator("main", self.dev, number=cfg.number, repeat=cfg.repeat,
                                   min_repeat_ms=cfg.min_repeat_ms)
        for _ in range(cfg.warmup):
            self.vm["main"](inp, *self.params)
        res = f(inp, *self.params)
        return Summary.of([r * 1e3 for r in res.results]).to_dict()
