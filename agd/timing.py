"""The one timing helper of agd: every benchmark, ``agd eval``'s latency, ``agd latency measure``, the
latency tables and the backend comparison time through here.

Conventions:
- wall clock (``time.perf_counter``) around each call, with ``sync`` (e.g. a CUDA synchronize, see
  :func:`device_sync`) run before each clock reading, so a call ends when the device has finished;
- ``warmup`` untimed calls of each callable first (timed only towards ``max_seconds``);
- several callables are interleaved (a, b, a, b, ...), so a change in machine load or memory state during
  the run affects every callable alike;
- ``max_seconds``: no further round starts once the calls so far (warm-up included) have taken that long;
  every callable still gets at least one timed call;
- the summary of a run (:class:`Summary`) is its median, minimum and mean in milliseconds, with the count;
- on a GPU, :func:`gpu_median_ms` times with CUDA events instead (``triton.testing.do_bench``): a host
  clock around one synchronised call of a batch-1 kernel measures the launch and the synchronisation more
  than the kernel.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Summary:
    """Milliseconds of ``repeats`` timed calls: median, minimum and mean."""

    median_ms: float
    min_ms: float
    mean_ms: float
    repeats: int

    @classmethod
    def of(cls, times_ms: Sequence[float]) -> "Summary":
        ts = [float(t) for t in times_ms]
        return cls(statistics.median(ts), min(ts), statistics.fmean(ts), len(ts))

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def device_sync(device: str | torch.device) -> Callable[[], None] | None:
    """The synchronisation a timing on ``device`` needs before each clock reading (None on the CPU)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return lambda: torch.cuda.synchronize(dev)
    return None


def interleaved_times_ms(fns: dict[str, Callable[[], object]], reps: int, warmup: int = 0,
                         sync: Callable[[], None] | None = None,
                         max_seconds: float | None = None) -> dict[str, list[float]]:
    """Milliseconds of up to ``reps`` calls of each of ``fns``, interleaved, after ``warmup`` untimed calls
    of each (see the module docstring for ``sync`` and ``max_seconds``)."""
    sync = sync or (lambda: None)
    spent = 0.0  # seconds of calls so far, warm-up included

    def once(fn: Callable[[], object]) -> float:
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        return time.perf_counter() - t0

    for _ in range(warmup):
        for fn in fns.values():
            spent += once(fn)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(reps):
        if r > 0 and max_seconds is not None and spent >= max_seconds:
            break
        for k, fn in fns.items():
            s = once(fn)
            spent += s
            times[k].append(s * 1e3)
    return times


def wall_times_ms(fn: Callable[[], object], reps: int, warmup: int = 0, sync: Callable[[], None] | None = None,
                  max_seconds: float | None = None) -> list[float]:
    """Milliseconds of up to ``reps`` calls of ``fn`` after ``warmup`` untimed ones."""
    return interleaved_times_ms({"fn": fn}, reps, warmup, sync, max_seconds)["fn"]


def wall_summary(fn: Callable[[], object], reps: int, warmup: int = 0, sync: Callable[[], None] | None = None,
                 max_seconds: float | None = None) -> Summary:
    """The :class:`Summary` of :func:`wall_times_ms`."""
    return Summary.of(wall_times_ms(fn, reps, warmup, sync, max_seconds))


def gpu_median_ms(fn: Callable[[], object]) -> float:
    """Median milliseconds of ``fn`` on the current CUDA device by ``triton.testing.do_bench``: CUDA events
    around each call, L2 flushed between calls, about 25 ms of warm-up and 100 ms of calls."""
    # triton is optional (the ``triton`` extra, CUDA machines): imported here, the only place agd times with it
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def median_ms(fns: dict[str, Callable[[], object]], device: str | torch.device, reps: int,
              warmup: int) -> dict[str, float]:
    """Median milliseconds of each of ``fns`` on ``device``: :func:`gpu_median_ms` on a GPU, else the
    interleaved wall clock (``warmup`` untimed calls, ``reps`` timed ones, each)."""
    if torch.device(device).type == "cuda":
        return {k: gpu_median_ms(f) for k, f in fns.items()}
    times = interleaved_times_ms(fns, reps, warmup, device_sync(device))
    return {k: statistics.median(v) for k, v in times.items()}
