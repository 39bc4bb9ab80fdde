"""Wall-clock timing of callables, shared by the benchmarks (``agd bench``, ``agd latency measure``)."""

from __future__ import annotations

import time
from collections.abc import Callable


def interleaved_times_ms(fns: dict[str, Callable[[], object]], reps: int, warmup: int = 0,
                         sync: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Milliseconds of ``reps`` calls of each of ``fns`` after ``warmup`` untimed calls of each, the calls
    alternating (a, b, a, b, ...) so that a change in machine load or memory state during the run affects
    every callable alike; ``sync`` (e.g. a CUDA synchronize) runs before each clock reading."""
    sync = sync or (lambda: None)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return times


def wall_times_ms(fn: Callable[[], object], reps: int, warmup: int = 0,
                  sync: Callable[[], None] | None = None) -> list[float]:
    """Milliseconds of ``reps`` calls of ``fn`` after ``warmup`` untimed ones."""
    return interleaved_times_ms({"fn": fn}, reps, warmup, sync)["fn"]
