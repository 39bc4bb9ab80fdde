"""Tuning benchmark: MetaSchedule over the same module and budget with agd's builder
(:class:`agd.tuning.builder.PersistentBuilder`, workers kept across batches) and TVM's ``LocalBuilder``
(a new pool of workers, each importing TVM, for every batch).

A measurement only: ``pytest tests/benchmarks/test_bench_tuning.py --benchmark-enable -s`` (about 3 min
here); as a plain test (``--benchmark-disable``, the default) it skips, since
tests/test_tuning_builder.py and tests/test_tuning.py check what it times. ``AGD_BENCH_TUNE_TRIALS``
sets the budget (default 32, rounds of 4: 8 or more build batches). Figures go to BENCHMARKS.md."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

pytest.importorskip("tvm", reason="apache-tvm is not installed")

from agd.machine import cpu_summary  # noqa: E402
from agd.tuning.builder import build_candidate  # noqa: E402
from agd.tuning.export import to_relax  # noqa: E402
from agd.tuning.targets import resolve_target  # noqa: E402
from agd.tuning.tune import TuneConfig, limit_worker_memory, tune  # noqa: E402
from agd.tuning.tvm_env import ms  # noqa: E402


@pytest.mark.parametrize("builder", ["agd-persistent", "tvm-local"])
def test_bench_tune(measuring, benchmark, tmp_path, builder):
    if not measuring:
        pytest.skip("a measurement: run with --benchmark-enable (tests/test_tuning_builder.py checks the builder)")
    trials = int(os.environ.get("AGD_BENCH_TUNE_TRIALS", "32"))
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 1)).eval()
    prog = to_relax(m, torch.rand(1, 16, 32, 32))
    spec = resolve_target("x86")
    cfg = TuneConfig(trials=trials, min_trials_per_task=4, trials_per_iter=4, population=32)
    reports = []

    def once():
        local = (ms.builder.LocalBuilder(f_build=build_candidate, timeout_sec=cfg.builder_timeout_s,
                                         initializer=limit_worker_memory) if builder == "tvm-local" else None)
        reports.append(tune(prog.mod, spec, tmp_path / f"db{len(reports)}", cfg, builder=local))

    benchmark.pedantic(once, rounds=3, iterations=1, warmup_rounds=0)
    r = reports[-1]
    assert r.tasks >= 2 and r.tasks_tuned == r.tasks and r.records_after >= r.tasks
    benchmark.extra_info.update(cpu=cpu_summary(), trials=trials, tasks=r.tasks, records=r.records_after)
    print(f"\n{builder}: {r.tasks} tasks, {r.records_after} records, {cpu_summary()}")
