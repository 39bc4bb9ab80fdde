"""agd.timing, the one timing helper, on a fake clock: warm-up calls, the interleaving order, the
synchronisation inside the timed region, the early stop by max_seconds and the summary, all exact."""

from __future__ import annotations

import time

import pytest
import torch

from agd import timing
from agd.evaluate import latency_ms


class Clock:
    """``time.perf_counter`` under test: calls advance it; ``launch`` queues device work that only a
    ``sync`` waits for (as a CUDA kernel launch returns before the kernel ends)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.pending = 0.0
        self.calls: list[str] = []
        self.syncs = 0

    def perf_counter(self) -> float:
        return self.now

    def fn(self, name: str, host_ms: float, device_ms: float = 0.0):
        def call() -> None:
            self.calls.append(name)
            self.now += host_ms / 1e3
            self.pending += device_ms / 1e3
        return call

    def sync(self) -> None:
        self.syncs += 1
        self.now += self.pending
        self.pending = 0.0


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(time, "perf_counter", c.perf_counter)
    return c


def test_warmup_then_interleaved_calls_timed_with_the_device_work(clock):
    fns = {"a": clock.fn("a", 1.0), "b": clock.fn("b", 0.5, device_ms=2.5)}
    times = timing.interleaved_times_ms(fns, reps=3, warmup=2, sync=clock.sync)
    assert clock.calls == ["a", "b"] * 2 + ["a", "b"] * 3  # 2 warm-up rounds, then 3 timed rounds
    assert times == {"a": [pytest.approx(1.0)] * 3, "b": [pytest.approx(3.0)] * 3}  # b's device work counted
    assert clock.syncs == 2 * len(clock.calls)  # before and after every call


def test_without_sync_device_work_is_not_waited_for(clock):
    times = timing.wall_times_ms(clock.fn("k", 0.5, device_ms=2.5), reps=2)
    assert times == [pytest.approx(0.5)] * 2 and clock.calls == ["k", "k"]


def test_early_stop_counts_the_warmup_and_keeps_one_timed_call(clock):
    # 400 ms a call: warm-up 0.4 s, 1st timed call (always) -> 0.8 s, 2nd (0.8 < 1) -> 1.2 s, then stop
    times = timing.wall_times_ms(clock.fn("slow", 400.0), reps=10, warmup=1, max_seconds=1.0)
    assert times == [pytest.approx(400.0)] * 2 and len(clock.calls) == 3
    clock.calls.clear()
    once = timing.wall_times_ms(clock.fn("slow", 400.0), reps=10, warmup=3, max_seconds=0.1)
    assert len(once) == 1 and len(clock.calls) == 4  # over the limit after the warm-up: one timed call still
    clock.calls.clear()
    both = timing.interleaved_times_ms({"a": clock.fn("a", 300.0), "b": clock.fn("b", 300.0)}, reps=5,
                                       max_seconds=1.0)
    assert clock.calls == ["a", "b", "a", "b"] and both == {"a": [pytest.approx(300.0)] * 2,
                                                            "b": [pytest.approx(300.0)] * 2}  # whole rounds


def test_summary_values():
    s = timing.Summary.of([3.0, 1.0, 2.0, 10.0])
    assert (s.median_ms, s.min_ms, s.mean_ms, s.repeats) == (2.5, 1.0, 4.0, 4)
    assert s.to_dict() == {"median_ms": 2.5, "min_ms": 1.0, "mean_ms": 4.0, "repeats": 4}
    assert timing.Summary.of([7.0, 1.0, 4.0]).median_ms == 4.0


def test_median_ms_on_the_cpu_is_the_interleaved_median(clock):
    durations = iter([9.0, 1.0, 5.0, 2.0, 7.0, 3.0, 4.0, 6.0])  # a, b alternating: 1 warm-up round, 3 timed

    def fn(name):
        def call():
            clock.calls.append(name)
            clock.now += next(durations) / 1e3
        return call

    med = timing.median_ms({"a": fn("a"), "b": fn("b")}, "cpu", reps=3, warmup=1)
    assert clock.calls == ["a", "b"] * 4
    assert med == {"a": pytest.approx(5.0), "b": pytest.approx(3.0)}  # a: 5, 7, 4; b: 2, 3, 6
    assert timing.device_sync("cpu") is None


def test_latency_ms_is_the_median_forward_in_inference_mode(clock):
    durations = iter([50.0, 8.0, 2.0, 6.0, 4.0, 9.0])
    seen = []

    class Model(torch.nn.Module):
        def forward(self, x):
            seen.append((tuple(x.shape), torch.is_inference_mode_enabled()))
            clock.now += next(durations) / 1e3
            return x

    ms = latency_ms(Model(), (1, 3, 4, 5), torch.device("cpu"), warmup=1, repeats=5, max_seconds=10.0)
    assert ms == pytest.approx(6.0)  # median of 8, 2, 6, 4, 9 (the 50 ms warm-up untimed)
    assert seen == [((1, 3, 4, 5), True)] * 6
