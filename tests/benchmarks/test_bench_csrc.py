"""Benchmarks of agd's block ops on CPU at batch 1 with real derived-genotype shapes: the fused
DwsBlock (translation body 128 -> 128 at 64x64 with instance norm and reflect padding; SR cell layer
40 -> 40 at 64x64 without norm) and whole example students (translation at 256x256, SR x4 at a
64x64 LR input), each against the standard-op module in PyTorch eager (oneDNN).

pytest runs these once as plain tests (``--benchmark-disable`` in pyproject); before timing, each checks
its output against the standard-op module (or plain torch ops) in float64; measure with ``pytest tests/benchmarks/test_bench_csrc.py --benchmark-enable
--benchmark-only``. The complete suite (also dwconv3x3, the epilogue and torch.compile) is
``agd.bench.csrc.run_csrc_suite``; figures go to BENCHMARKS.md.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from agd import ops
from agd.arch import Genotype, derive
from agd.arch.fast import FastDwsBlock, convert
from agd.space.blocks import DwsBlock, Style

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="module")
def cpp() -> None:
    backend, why = ops.blocks_backend("cpu")
    if backend != "cpp":
        pytest.skip(f"C++ ops unavailable: {why}")


DWS = {
    "translation 128->128": (128, 128, Style("instance", False, "relu", "reflect", False)),
    "sr 40->40": (40, 40, Style("none", False, "lrelu", "zeros", False)),
}


@pytest.mark.parametrize("impl", ["eager", "agd"])
@pytest.mark.parametrize("case", list(DWS))
def test_dws_block(benchmark, cpp, case, impl):
    cin, cout, style = DWS[case]
    torch.manual_seed(0)
    blk = DwsBlock(cin, cout, style).eval()
    m = blk if impl == "eager" else FastDwsBlock(blk, "cpp")
    x = torch.randn(1, cin, 64, 64)
    with torch.no_grad():
        want = copy.deepcopy(blk).double()(x.double())
        torch.testing.assert_close(m(x).double(), want, rtol=1e-4, atol=1e-4)
        benchmark(m, x)


STUDENTS = {"translation_r9_small": 256, "sr_x4_small": 64}


@pytest.mark.parametrize("impl", ["eager", "agd"])
@pytest.mark.parametrize("name", list(STUDENTS))
def test_student(benchmark, cpp, name, impl):
    torch.manual_seed(0)
    net = derive(Genotype.load(EXAMPLES / f"{name}.json")).eval()
    m = net if impl == "eager" else convert(net, "cpp")
    x = torch.rand(1, 3, STUDENTS[name], STUDENTS[name])
    with torch.no_grad():
        want = copy.deepcopy(net).double()(x.double())
        assert (m(x).double() - want).abs().max().item() <= 1e-4
        benchmark.pedantic(m, args=(x,), rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("impl", ["eager", "agd"])
def test_conv_narrow_translation_head(benchmark, cpp, impl):
    """The translation head: 7x7 reflect, 32 -> 3 channels, tanh, at 256x256."""
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(1, 32, 256, 256, generator=g), torch.randn(3, 32, 7, 7, generator=g), torch.randn(3, generator=g)
    want = torch.tanh(F.conv2d(F.pad(x.double(), (3, 3, 3, 3), mode="reflect"), w.double(), b.double()))
    if impl == "eager":
        fn, args, kwargs = ops.conv_narrow_reference, (x, w, b, True, ops.ACT_CODES["tanh"], 0.2), {}
    else:
        fn, args, kwargs = ops.conv_narrow, (x, w, b), {"reflect": True, "act": "tanh"}
    torch.testing.assert_close(fn(*args, **kwargs).double(), want, rtol=1e-4, atol=1e-4)
    benchmark(fn, *args, **kwargs)
