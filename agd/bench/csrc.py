"""The ``csrc`` benchmark suite: agd's C++/CUDA block ops against PyTorch eager and torch.compile.

``run_csrc_suite(device, quick, compile)`` returns one row per (op, shape, backend):
``{"op", "shape", "backend", "median_ms", "ratio"}`` where ``ratio`` = eager median / this median
(> 1: faster than eager; eager's own row is 1.0). Backends: "eager" (the standard-op module / torch
functions, oneDNN on CPU, cuDNN on GPU), "agd" (the compiled agd op, or the converted student, see
:mod:`agd.arch.fast`), "compile" (torch.compile of the eager module; by default in the full suite only,
since compiling takes tens of seconds per module on a small CPU). On a GPU every row is timed with
``triton.testing.do_bench`` (CUDA events), on the CPU with interleaved wall-clock calls. Shapes are
those of real derived genotypes at batch 1: the translation body at 64x64 (a 256x256 input), the SR
cells at a 64x64 LR input.

Nothing is printed or written here; the ``agd bench kernels --suite csrc`` command formats the rows.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from agd import ops
from agd.arch import Genotype, derive, random_genotype
from agd.arch.fast import FastDwsBlock, convert
from agd.io import AgdError
from agd.space import SearchSpace, get_config
from agd.space.blocks import DwsBlock, Style
from agd.timing import median_ms


@dataclass(frozen=True)
class SuiteConfig:
    """Repetitions per timing: ``warmup`` untimed calls, then the median of ``reps`` calls."""

    warmup: int = 2
    reps: int = 10
    compile: bool = True  # also time torch.compile of the eager module (tens of seconds of compiling each)


QUICK = SuiteConfig(warmup=1, reps=3, compile=False)
FULL = SuiteConfig(warmup=2, reps=10)


def _medians(fns: dict[str, Callable[[], object]], device: torch.device, cfg: SuiteConfig) -> dict[str, float]:
    """Median time (ms) of each of ``fns`` under no_grad, with the suite's repetitions (see
    :func:`agd.timing.median_ms`: interleaved wall clock on the CPU, CUDA events on a GPU)."""
    with torch.no_grad():
        return median_ms(fns, device, cfg.reps, cfg.warmup)


def _rows(op: str, shape: str, timings: dict[str, float]) -> list[dict]:
    base = timings["eager"]
    return [{"op": op, "shape": shape, "backend": b, "median_ms": round(ms, 4), "ratio": round(base / ms, 3)}
            for b, ms in timings.items()]


def _compiled(fn: Callable, cfg: SuiteConfig, device: torch.device, example: tuple) -> float:
    # a fresh dynamo cache for every row: the rows share code objects (one block class, one lambda), and past
    # dynamo's recompile limit (8) torch.compile silently runs them eagerly
    torch._dynamo.reset()
    c = torch.compile(fn)
    with torch.no_grad():
        c(*example)  # compile outside the timing
    return _medians({"compile": lambda: c(*example)}, device, cfg)["compile"]


def _dwconv_cases(quick: bool) -> list[tuple[int, int, int, int, int, bool]]:
    """(C, H, W, stride, dilation, channels_last): DwsBlock hidden widths of both spaces."""
    cases = [(384, 64, 64, 1, 1, False), (120, 64, 64, 1, 1, False), (384, 64, 64, 1, 1, True)]
    if not quick:
        cases += [(120, 64, 64, 1, 1, True), (64, 128, 128, 2, 1, False), (64, 128, 128, 2, 1, True),
                  (120, 64, 64, 1, 2, False)]
    return cases


def _bench_dwconv(device: torch.device, cfg: SuiteConfig, quick: bool) -> list[dict]:
    rows = []
    for c, h, w, s, d, cl in _dwconv_cases(quick):
        x = torch.randn(1, c, h, w, device=device)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        wt = torch.randn(c, 1, 3, 3, device=device)
        shape = f"1x{c}x{h}x{w} s{s} d{d} {'NHWC' if cl else 'NCHW'}"
        t = _medians({"eager": lambda: F.conv2d(x, wt, None, s, d, d, c),
                      "agd": lambda: torch.ops.agd.dwconv3x3(x, wt, s, d)}, device, cfg)
        rows += _rows("dwconv3x3", shape, t)
    return rows


def _bench_epilogue(device: torch.device, cfg: SuiteConfig, quick: bool) -> list[dict]:
    rows = []
    for c, hw in ([(128, 64)] if quick else [(128, 64), (64, 128), (32, 256)]):
        y = torch.randn(1, c, hw, hw, device=device)
        s = torch.randn_like(y)

        def eager(y=y, s=s):
            return torch.relu(F.instance_norm(y) + s)

        t = _medians({"eager": eager,
                      "agd": lambda y=y, s=s: torch.ops.agd.norm_act_residual(y, s, None, None, True, 1, 0.2,
                                                                              1e-5)}, device, cfg)
        if cfg.compile:
            t["compile"] = _compiled(eager, cfg, device, (y, s))
        rows += _rows("norm_act_residual (IN + add + relu)", f"1x{c}x{hw}x{hw}", t)
    return rows


def _bench_narrow(device: torch.device, cfg: SuiteConfig, quick: bool) -> list[dict]:
    """The generators' last layers: the translation head (7x7 reflect, 32 -> 3, tanh, at 256x256) and the
    SR conv_last (3x3, 64 -> 3, at the x4 output of a 64x64 input)."""
    rows = []
    cases = [("translation head 7x7 32->3 tanh", 32, 7, True, "tanh")]
    if not quick:
        cases.append(("sr conv_last 3x3 64->3", 64, 3, False, "none"))
    for name, c, k, reflect, act in cases:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, c, 256, 256, generator=g).to(device)
        w = torch.randn(3, c, k, k, generator=g).to(device)
        b = torch.randn(3, generator=g).to(device)
        code = ops.ACT_CODES[act]

        def eager(x=x, w=w, b=b, reflect=reflect, code=code):
            return ops.conv_narrow_reference(x, w, b, reflect, code, 0.2)

        t = _medians({"eager": eager, "agd": lambda x=x, w=w, b=b, reflect=reflect, code=code:
                      torch.ops.agd.conv_narrow(x, w, b, reflect, code, 0.2)}, device, cfg)
        if cfg.compile:
            t["compile"] = _compiled(eager, cfg, device, ())
        rows += _rows("conv_narrow", f"{name} 1x{c}x256x256", t)
    return rows


def _bench_gemm(device: torch.device, cfg: SuiteConfig, quick: bool) -> list[dict]:
    """The block kernels' GEMM (``agd::block_gemm``, backend "auto") against ``torch.mm`` (MKL on x86-64
    wheels) at the 1x1-convolution shapes of the DwsBlocks: (out channels, in channels, band columns)."""
    rows = []
    cases = [(384, 128, 640), (128, 384, 640)]
    if not quick:
        cases += [(768, 256, 4096), (88, 384, 640), (120, 40, 4096)]
    for m, k, n in cases:
        g = torch.Generator().manual_seed(0)
        a, b = torch.randn(m, k, generator=g), torch.randn(k, n, generator=g)
        t = _medians({"eager": lambda a=a, b=b: torch.mm(a, b),
                      "agd": lambda a=a, b=b: torch.ops.agd.block_gemm(a, b, "auto")}, device, cfg)
        rows += _rows(f"block_gemm ({ops.block_gemm_name()})", f"{m}x{k} @ {k}x{n}", t)
    return rows


def _dws_cases(quick: bool):
    trans = Style("instance", False, "relu", "reflect", False)
    sr = Style("none", False, "lrelu", "zeros", False)
    cases = [("translation", 128, 128, trans), ("sr", 40, 40, sr)]
    if not quick:
        cases += [("translation", 256, 256, trans), ("translation", 128, 88, trans), ("sr", 56, 40, sr),
                  ("sr", 64, 64, sr)]
    return cases


def _bench_dws(device: torch.device, cfg: SuiteConfig, quick: bool) -> list[dict]:
    rows = []
    for space, cin, cout, style in _dws_cases(quick):
        torch.manual_seed(0)
        blk = DwsBlock(cin, cout, style).to(device).eval()
        fast = FastDwsBlock(blk, "cuda" if device.type == "cuda" else "cpp").eval()
        x = torch.randn(1, cin, 64, 64, device=device)
        t = _medians({"eager": lambda: blk(x), "agd": lambda: fast(x)}, device, cfg)
        if cfg.compile:
            t["compile"] = _compiled(blk, cfg, device, (x,))
        rows += _rows("dws_block", f"{space} {cin}->{cout} (hidden {3 * cin}) 1x{cin}x64x64", t)
    return rows


def _students(quick: bool) -> list[tuple[str, nn.Module, tuple[int, int, int, int]]]:
    root = Path(__file__).resolve().parents[2] / "examples"
    out = []
    for name, size in (("translation_r9_small.json", 256), ("sr_x4_small.json", 64)):
        path = root / name
        if path.is_file():
            out.append((f"example {path.stem}", derive(Genotype.load(path)), (1, 3, size, size)))
    if not quick:
        for task, size in (("translation", 256), ("sr", 64)):
            space = SearchSpace(get_config(task))
            g = random_genotype(space, random.Random(1))
            out.append((f"random {task} (seed 1)", derive(g), (1, 3, size, size)))
    return out


def _bench_students(device: torch.device, cfg: SuiteConfig, quick: bool) -> list[dict]:
    rows = []
    for name, net, shape in _students(quick):
        torch.manual_seed(0)
        net = net.to(device).eval()
        fast = convert(net, "cuda" if device.type == "cuda" else "cpp")
        x = torch.rand(*shape, device=device)
        t = _medians({"eager": lambda: net(x), "agd": lambda: fast(x)}, device, cfg)
        if cfg.compile:
            t["compile"] = _compiled(net, cfg, device, (x,))
        rows += _rows("student", f"{name} input {'x'.join(map(str, shape))}", t)
    return rows


def run_csrc_suite(device: str, quick: bool, compile: bool | None = None) -> list[dict]:
    """Every row of the csrc suite on ``device`` ("cpu" or "cuda[:i]"); AgdError when agd's compiled
    ops do not run there (the reason says why)."""
    dev = torch.device(device)
    backend, why = ops.blocks_backend(dev)
    if backend == "reference":
        raise AgdError(f"bench csrc: agd's compiled block ops do not run on {dev}: {why}")
    cfg = QUICK if quick else FULL
    if compile is not None:
        cfg = dataclasses.replace(cfg, compile=compile)
    rows = []
    rows += _bench_dwconv(dev, cfg, quick)
    rows += _bench_epilogue(dev, cfg, quick)
    rows += _bench_dws(dev, cfg, quick)
    if dev.type == "cpu":  # conv_narrow and the block GEMM have C++ CPU kernels only
        rows += _bench_narrow(dev, cfg, quick)
        rows += _bench_gemm(dev, cfg, quick)
    rows += _bench_students(dev, cfg, quick)
    return rows
