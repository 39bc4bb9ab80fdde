"""Benchmarks of the fused mixed-layer epilogue (agd.ops.mixed_epilogue): forward + backward of every
gradient, ``eager`` (the plain PyTorch reference), ``compile`` (torch.compile of it) and ``fused`` (the
Triton kernels on CUDA; on CPU the op's PyTorch implementation, as a check only) over the supernets' real
shapes (agd/bench/kernels.py), plus a whole supernet search step with the fused epilogue on and off.

pytest runs these once as plain tests (``--benchmark-disable`` in pyproject); on a GPU machine measure with
``pytest tests/benchmarks/test_bench_kernels.py --benchmark-enable --benchmark-only``, or print the full
table (time, GB/s, fraction of copy bandwidth, ratios, search-step memory) with ``agd bench kernels``.
Figures go to BENCHMARKS.md; CPU figures are not kernel measurements.
"""

from __future__ import annotations

import pytest
import torch

from agd.bench import kernels as kb

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
WORKLOADS = kb.workloads(quick=False, device=DEVICE)
DTYPES = (torch.float32, torch.bfloat16) if DEVICE == "cuda" else (torch.float32,)


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _cases():
    """(workload, dtype, impl) to run: every combination, except torch.compile on CPU after the first workload
    (one is enough there to check it runs; each compile takes tens of seconds on 2 cores)."""
    return [pytest.param(w, dt, impl, id=f"{w.name.replace(' ', '-')}-{str(dt).replace('torch.', '')}-{impl}")
            for w in WORKLOADS for dt in DTYPES for impl in ("eager", "compile", "fused")
            if not (impl == "compile" and DEVICE == "cpu" and w is not WORKLOADS[0])]


@pytest.mark.parametrize("workload,dtype,impl", _cases())
def test_epilogue_fwd_bwd(benchmark, workload, dtype, impl):
    """Once before timing, every gradient is checked against torch.autograd of the plain PyTorch reference
    in float64 on the same inputs and output gradient."""
    from agd import ops

    wts, leaves, build = kb.make_inputs(workload, dtype, DEVICE)
    torch.manual_seed(5)
    run = kb.fwd_bwd(impl, wts, leaves, build, workload.channels)
    torch.manual_seed(5)  # fwd_bwd's output gradient: its first draw from torch's RNG
    cot = torch.randn(leaves[0].shape[0], workload.channels, *leaves[0].shape[2:], device=DEVICE, dtype=dtype)
    grads = run()  # warm-up (compiles where needed)
    w64, l64 = wts.detach().double().requires_grad_(), [t.detach().double().requires_grad_() for t in leaves]
    want = torch.autograd.grad(ops.mixed_epilogue_reference(w64, build(*l64), workload.channels), [w64, *l64],
                               cot.double())
    assert len(grads) == len(want) == len(leaves) + 1
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for i, (a, b) in enumerate(zip(grads, want)):
        err, scale = (a.double() - b).abs().max().item(), b.abs().max().item()
        assert err <= tol * max(scale, 1.0), (i, err, scale)
    fb, bb = kb.bytes_moved(workload, dtype)
    benchmark.extra_info.update(bytes=fb + bb, device=DEVICE)
    benchmark(lambda: (run(), _sync()))


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "eager"])
def test_search_step(benchmark, fused):
    """One search step of the supernet (translation at 256x256 on CUDA, translation-tiny on CPU)."""
    # each built (search_step seeds torch's RNG) and run in turn, so both draw the same random numbers
    step, name, backend = kb.search_step(DEVICE, fused, quick=True)
    step()
    other, _, _ = kb.search_step(DEVICE, not fused, quick=True)
    other()
    # checked once before timing: from the same seed, one step with the fused epilogue and one with the eager
    # one move every parameter alike (architecture parameters by Adam's first step, about lr = 3e-4, whose sign
    # a rounding-level gradient can flip: hence their looser bound)
    theirs = dict(other.supernet.named_parameters())
    arch = {id(p) for p in step.supernet.arch_parameters()}
    for n, p in step.supernet.named_parameters():
        tol = 1e-3 if id(p) in arch else 1e-5
        torch.testing.assert_close(p, theirs[n], rtol=1e-4, atol=tol, msg=lambda m, n=n: f"{n}: {m}")
    benchmark.extra_info.update(workload=name, epilogue=backend, device=DEVICE)
    benchmark(lambda: (step(), _sync()))
