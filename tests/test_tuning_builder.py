"""agd.tuning.builder.PersistentBuilder: MetaSchedule's builder whose worker processes outlive a batch.

It builds what TVM's LocalBuilder builds (a module that loads and computes), keeps its workers from one
batch to the next, replaces a worker after its builds, and answers a timeout with an error result while
the next batch still builds."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tvm", reason="apache-tvm is not installed")

from agd.tuning.builder import PersistentBuilder  # noqa: E402
from agd.tuning.tvm_env import ms, te, tvm  # noqa: E402


def _inputs(n: int = 2) -> list:
    """``n`` builder inputs: an elementwise ``b = a * 2 + 1`` over 37 floats (an odd length) for LLVM."""
    a = te.placeholder((37,), name="a")
    b = te.compute((37,), lambda i: a[i] * 2.0 + 1.0, name="b")
    mod = tvm.IRModule({"main": te.create_prim_func([a, b])})
    return [ms.builder.BuilderInput(mod, tvm.target.Target("llvm")) for _ in range(n)]


def _pids(builder: PersistentBuilder) -> set[int]:
    # TVM's pool keeps one PopenWorker per thread; their processes are what the builder keeps alive
    return {w._proc.pid for w in builder.pool._worker_map.values() if w._proc is not None}


def test_builds_what_loads_and_keeps_its_workers():
    builder = PersistentBuilder(timeout_s=120, max_workers=1)
    try:
        first = builder.build(_inputs())
        pids = _pids(builder)
        second = builder.build(_inputs())
        assert [r.error_msg for r in first + second] == [None] * 4
        assert pids and _pids(builder) == pids  # the same worker process built both batches
        f = tvm.runtime.load_module(second[0].artifact_path)["main"]
        a = np.arange(37, dtype="float32") - 18.5
        out = tvm.runtime.tensor(np.zeros(37, dtype="float32"))
        f(tvm.runtime.tensor(a), out)
        np.testing.assert_array_equal(out.numpy(), a * 2 + 1)
    finally:
        builder.close()


def test_a_worker_is_replaced_after_its_builds():
    builder = PersistentBuilder(timeout_s=120, max_workers=1, builds_per_worker=2)
    try:
        assert all(r.error_msg is None for r in builder.build(_inputs(2)))
        pids = _pids(builder)
        assert all(r.error_msg is None for r in builder.build(_inputs(1)))
        assert _pids(builder).isdisjoint(pids)
    finally:
        builder.close()


def test_a_timeout_is_an_error_result_and_the_next_build_runs():
    builder = PersistentBuilder(timeout_s=1e-3, max_workers=1)
    try:
        (r,) = builder.build(_inputs(1))
        assert r.artifact_path is None and "timeout, killed after 0.001 s" in r.error_msg
        builder.pool._timeout = 120  # TVM's pool holds one timeout: raised so that the replaced worker can build
        assert [r.error_msg for r in builder.build(_inputs(1))] == [None]
    finally:
        builder.close()
