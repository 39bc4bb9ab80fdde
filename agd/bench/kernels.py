"""Benchmark workloads of the fused mixed-layer epilogue (used by ``agd bench kernels`` and
tests/benchmarks/test_bench_kernels.py).

Workloads are the real mixed-layer shapes of both supernets: translation (256 channels at 64x64, batch 1-8,
InstanceNorm + ReLU) and SR (64 channels at 32x32 / 64x64, batch 16, no norm, LeakyReLU 0.2), with K = 4-6
candidates laid out as in the supernet: conv candidates (norm + act), resblock / dwsblock (norm, + the layer
input as shortcut, act), identity (the layer input itself).

Implementations timed on the same inputs, forward + backward (all gradients):
- ``eager``: :func:`agd.ops.mixed_epilogue_reference` under autograd (what the supernet did before);
- ``compile``: ``torch.compile`` of that same reference function;
- ``fused``: ``torch.ops.agd.mixed_epilogue`` with the Triton kernels (CUDA), or on CPU its PyTorch
  implementation ("reference"), since Triton runs on CPU only in its interpreter (figures meaningless).
Bytes moved are the minimum a fused implementation must move; GB/s = bytes / median time. On a GPU each
row also has the GPU time alone (``*_gpu_ms``: kernels, copies and fills per call on torch.profiler's
device timeline) with the GB/s and ratios it gives: at the supernets' sizes a call's wall time is mostly
host work (Python, autograd, launches), which says nothing about the kernels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from agd import ops
from agd.ops import EpilogueCandidate
from agd.search.supernet import Supernet
from agd.space import SearchSpace, get_config
from agd.timing import median_ms


@dataclass(frozen=True)
class Workload:
    name: str
    space: str  # translation | sr
    batch: int
    channels: int
    size: int
    k: int

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.batch, self.channels, self.size, self.size)


def workloads(quick: bool = False, device: str = "cuda") -> list[Workload]:
    """The real shapes (``quick``: one per space; on CPU: scaled down so a check finishes in seconds)."""
    if torch.device(device).type == "cpu":
        return [Workload("translation-cpu-check", "translation", 1, 32, 32, 5), Workload("sr-cpu-check", "sr", 2, 16, 32, 5)]
    out = [Workload(f"translation b{b} K{k}", "translation", b, 256, 64, k) for b in (1, 4, 8) for k in (4, 5, 6)]
    out += [Workload(f"sr {s}x{s} b16 K{k}", "sr", 16, 64, s, k) for s in (32, 64) for k in (4, 5, 6)]
    if quick:
        out = [w for w in out if w.name in ("translation b4 K5", "sr 64x64 b16 K5")]
    return out


def make_inputs(w: Workload, dtype: torch.dtype, device: str, seed: int = 0):
    """(weights, leaves, build(*leaves) -> candidates): K candidates laid out as in the supernet."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    norm, act = (True, "relu") if w.space == "translation" else (False, "lrelu")
    n_conv = {4: 2, 5: 2, 6: 3}[w.k]
    identity = w.k >= 5

    def t(*shape):
        return torch.randn(shape, generator=g).to(device=device, dtype=dtype).requires_grad_()

    x = t(*w.shape)
    zs = [t(*w.shape) for _ in range(n_conv + 2)]
    leaves = [x, *zs]

    def build(x, *zs):
        cands = [EpilogueCandidate(z, None, norm, None, None, act) for z in zs[:n_conv]]
        cands += [EpilogueCandidate(z, x, norm, None, None, act) for z in zs[n_conv:]]
        if identity:
            cands.append(EpilogueCandidate(x))
        return cands

    wts = torch.softmax(torch.randn(w.k, generator=g), 0).to(device).requires_grad_()
    return wts, leaves, build


def bytes_moved(w: Workload, dtype: torch.dtype) -> tuple[int, int]:
    """(forward, backward) bytes a fused implementation must move: forward reads each distinct input once
    and writes the output; backward reads the output gradient and the inputs, writes one gradient each."""
    e = torch.empty((), dtype=dtype).element_size()
    plane = w.batch * w.channels * w.size * w.size * e
    n_inputs = 1 + {4: 2, 5: 2, 6: 3}[w.k] + 2  # the layer input + conv outputs
    return (n_inputs + 1) * plane, (1 + 2 * n_inputs) * plane


def timer(device: str) -> Callable[[Callable[[], object]], float]:
    """Median milliseconds of a callable (:func:`agd.timing.median_ms`): CUDA events on a GPU, on the CPU
    the wall clock of 5 calls after 1 warm-up call."""
    return lambda fn: median_ms({"fn": fn}, device, reps=5, warmup=1)["fn"]


def fwd_bwd(impl: str, wts, leaves, build, channels: int) -> Callable[[], object]:
    """A closure running forward + backward (gradients of every input) with ``impl``."""
    if impl == "eager":
        fn = lambda *a: ops.mixed_epilogue_reference(a[0], build(*a[1:]), channels)  # noqa: E731
    elif impl == "compile":
        # a fresh dynamo cache per workload: every workload recompiles this one lambda (new closure), and past
        # dynamo's recompile limit (8) torch.compile silently falls back to eager
        torch._dynamo.reset()
        fn = torch.compile(lambda *a: ops.mixed_epilogue_reference(a[0], build(*a[1:]), channels))
    else:
        backend = "triton" if leaves[0].is_cuda else "reference"
        fn = lambda *a: ops.mixed_epilogue(a[0], build(*a[1:]), channels, backend=backend)  # noqa: E731
    grad = torch.randn(leaves[0].shape[0], channels, *leaves[0].shape[2:], device=leaves[0].device, dtype=leaves[0].dtype)

    def run():
        out = fn(wts, *leaves)
        return torch.autograd.grad(out, [wts, *leaves], grad)

    return run


def device_ms(fn: Callable[[], object], iters: int = 10) -> float:
    """Milliseconds of GPU work per call of ``fn`` (kernels, copies and fills, from torch.profiler's device
    timeline), which leaves out the host: at these sizes a call's wall time is mostly Python, autograd and
    launches, while this is what the kernels themselves take."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    us = sum(getattr(e, "device_time", None) or getattr(e, "cuda_time", 0.0) for e in prof.events()
             if e.device_type == DeviceType.CUDA)
    return us / 1e3 / iters


def copy_bandwidth(device: str, dtype: torch.dtype = torch.float32, mb: int = 512) -> float:
    """Measured device copy bandwidth in GB/s (read + write of an ``mb`` MB buffer)."""
    n = mb * 2**20 // torch.empty((), dtype=dtype).element_size()
    if torch.device(device).type == "cpu":
        n //= 8
    a = torch.empty(n, dtype=dtype, device=device).normal_()
    b = torch.empty_like(a)
    ms = timer(device)(lambda: b.copy_(a))
    return 2 * a.numel() * a.element_size() / (ms * 1e-3) / 1e9


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def run_epilogue_suite(device: str, quick: bool, dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16),
                       progress: Callable[[dict], None] | None = None) -> list[dict]:
    """One row per (workload, dtype): median ms of eager / compile / fused forward + backward, GB/s of the
    fused run against the bytes that must move, its fraction of the copy bandwidth, and the ratios."""
    bench = timer(device)
    copy = copy_bandwidth(device)
    cuda = torch.device(device).type == "cuda"
    rows = []
    for w in workloads(quick, device):
        for dt in dtypes:
            wts, leaves, build = make_inputs(w, dt, device)
            ms, gpu = {}, {}
            for impl in ("eager", "compile", "fused"):
                run = fwd_bwd(impl, wts, leaves, build, w.channels)
                for _ in range(3):  # compile, and recompile for dynamic shapes, outside the timed region
                    run()
                ms[impl] = bench(run)
                if cuda:
                    gpu[impl] = device_ms(run)
            fb, bb = bytes_moved(w, dt)
            gbs = (fb + bb) / (ms["fused"] * 1e-3) / 1e9
            rows.append({
                "suite": "triton", "workload": w.name, "dtype": str(dt).replace("torch.", ""), "device": device,
                "fused": "triton" if cuda else "op reference (CPU: not the kernel)",
                "eager_ms": ms["eager"], "compile_ms": ms["compile"], "fused_ms": ms["fused"],
                "bytes": fb + bb, "fused_gbs": gbs, "copy_gbs": copy, "of_copy": gbs / copy,
                "eager_over_fused": ms["eager"] / ms["fused"], "compile_over_fused": ms["compile"] / ms["fused"],
            })
            if cuda:  # the same on GPU time alone
                ggbs = (fb + bb) / (gpu["fused"] * 1e-3) / 1e9
                rows[-1].update({"eager_gpu_ms": gpu["eager"], "compile_gpu_ms": gpu["compile"], "fused_gpu_ms": gpu["fused"],
                                 "fused_gpu_gbs": ggbs, "of_copy_gpu": ggbs / copy,
                                 "eager_over_fused_gpu": gpu["eager"] / gpu["fused"],
                                 "compile_over_fused_gpu": gpu["compile"] / gpu["fused"]})
            if progress:
                progress(rows[-1])
    return rows


def search_step(device: str, fused: bool, quick: bool):
    """(a closure running one supernet search step, its description): weight step (forward + backward +
    SGD) then arch step (forward + backward + Adam on alpha/beta), the epilogue fused or eager."""
    cuda = torch.device(device).type == "cuda"
    preset, batch = ("translation", 2 if quick else 4) if cuda else ("translation-tiny", 1)
    torch.manual_seed(0)
    sn = Supernet(SearchSpace(get_config(preset))).to(device)
    backend = ("triton" if cuda else "reference") if fused else "eager"
    for m in sn.mixed_layers:
        m.epilogue_backend = backend
    h, w = sn.space.config.reference_size
    x = torch.rand(batch, 3, h, w, device=device)
    target = torch.rand(batch, 3, h, w, device=device)
    opt_w = torch.optim.SGD(sn.weight_parameters(), lr=1e-3)
    opt_a = torch.optim.Adam(sn.arch_parameters(), lr=3e-4)

    def step():
        for opt in (opt_w, opt_a):
            opt_w.zero_grad(set_to_none=True)
            opt_a.zero_grad(set_to_none=True)
            (sn(x) - target).abs().mean().backward()
            opt.step()

    step.supernet = sn  # for a check of the step's result before it is timed
    return step, f"search step {preset} b{batch}", backend


def run_search_step(device: str, quick: bool, progress: Callable[[dict], None] | None = None) -> list[dict]:
    """The whole search step with the fused epilogue and with the eager one: median ms and peak memory."""
    cuda = torch.device(device).type == "cuda"
    rows = []
    for fused in (True, False):
        step, name, backend = search_step(device, fused, quick)
        step()
        peak = None
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            step()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() / 2**20
        rows.append({"suite": "triton", "workload": name, "device": device, "epilogue": backend,
                     "ms": timer(device)(step), "gpu_ms": device_ms(step, 3) if cuda else None, "peak_mib": peak})
        if progress:
            progress(rows[-1])
    return rows
