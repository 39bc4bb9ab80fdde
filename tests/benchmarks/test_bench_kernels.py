"""Benchmarks of the fused mixed-layer epilogue (agd.ops.mixed_epilogue): forward + backward of every
gradient, ``eager`` (the plain PyTorch reference), ``compile`` (torch.compile of it) and ``fused`` (the
Triton kernels on CUDA; on CPU the op's PyTorch implementation, as a check only) over the supernets' real
shapes (kernels/bench.py), plus a whole supernet search step with the fused epilogue on and off.

pytest runs these once as plain tests (``--benchmark-disable`` in pyproject); on a GPU machine measure with
``pytest tests/benchmarks/test_bench_kernels.py --benchmark-enable --benchmark-only``, or print the full
table (time, GB/s, fraction of copy bandwidth, ratios, search-step memory) with ``agd bench kernels``.
Figures go to BENCHMARKS.md; CPU figures are not kernel measurements.
"""

from __future__ import annotations

import pytest
import torch

from agd.kernels import bench as kb

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
WORKLOADS = kb.workloads(quick=False, device=DEVICE)
DTYPES = (torch.float32, torch.bfloat16) if DEVICE == "cuda" else (torch.float32,)


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("impl", ["eager", "compile", "fused"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("workload", WORKLOADS, ids=lambda w: w.name.replace(" ", "-"))
def test_epilogue_fwd_bwd(benchmark, workload, dtype, impl):
    if impl == "compile" and DEVICE == "cpu" and workload is not WORKLOADS[0]:
        pytest.skip("torch.compile on CPU: one workload is enough to check it runs")
    wts, leaves, build = kb.make_inputs(workload, dtype, DEVICE)
    run = kb.fwd_bwd(impl, wts, leaves, build, workload.channels)
    grads = run()  # warm-up (compiles where needed)
    assert len(grads) == len(leaves) + 1 and all(torch.isfinite(g).all() for g in grads)
    fb, bb = kb.bytes_moved(workload, dtype)
    benchmark.extra_info.update(bytes=fb + bb, device=DEVICE)
    benchmark(lambda: (run(), _sync()))


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "eager"])
def test_search_step(benchmark, fused):
    """One search step of the supernet (translation at 256x256 on CUDA, translation-tiny on CPU)."""
    step, name, backend = kb.search_step(DEVICE, fused, quick=True)
    step()
    benchmark.extra_info.update(workload=name, epilogue=backend, device=DEVICE)
    benchmark(lambda: (step(), _sync()))
