"""agd's CUDA block ops (agd/_C_cuda) against float64 references, on a GPU.

Every test skips without a CUDA device or without the built CUDA library, with the reason. Each op is
checked forward and backward in float32, float16 and bfloat16, on odd sizes and on the supernets' real
sizes, in both memory formats. A low-precision result passes when its error against the float64
reference is within twice the error of PyTorch's own ops in the same dtype on the same GPU (plus a
small floor), the tolerance rule of tests/test_kernels.py. The float64 reference is computed from the
inputs rounded to the tested dtype, so that it and both implementations see the same data: against the
unrounded inputs, an op that rounds once (agd's, in float32 inside) can lose to one that rounds many times
by luck (seen on an H200: 1 float16 ulp against a quarter ulp on a 2-pixel plane, both errors those of
the inputs' rounding).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from blocks_reference import dws_args as _dws_args
from blocks_reference import epilogue_reference as _epilogue
from blocks_reference import gen as _gen

from agd import ops
from agd.arch import Genotype, derive, max_genotype, random_genotype
from agd.arch.fast import convert, converted_blocks
from agd.numerics import exact_float32
from agd.space import SearchSpace, get_config

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(scope="module")
def dev() -> torch.device:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to torch")
    backend, why = ops.blocks_backend("cuda")
    if backend != "cuda":
        pytest.skip(f"agd CUDA ops unavailable: {why}")
    return torch.device("cuda")


@pytest.fixture
def no_tf32():
    """Plain float32 convolutions and matmuls on the GPU (cuDNN's default TF32 errs ~1e-3)."""
    with exact_float32():
        yield




def _err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return (a.detach().double().cpu() - ref.detach().double().cpu()).abs().max().item()


def _rounded(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` (float64) rounded to ``dtype`` and back: the data every implementation under test sees."""
    return t.to(dtype).double()


def _within(got: torch.Tensor, own: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    """``got`` (agd) is within 2x torch's own error ``own`` against float64 ``ref``, or within half an ulp of
    the output's dtype at the output's scale (a correctly rounded result passes even where torch's own
    happens to land closer)."""
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    scale = ref.abs().max().item()
    e, e_own = _err(got, ref), _err(own, ref)
    half_ulp = 0.5 * torch.finfo(got.dtype).eps * scale
    assert e <= max(2 * e_own, half_ulp) + 2e-6 * scale + 1e-6, \
        f"{what}: max error {e:.3g}, torch's own {e_own:.3g} (scale {scale:.3g})"


# ----------------------------------------------------------------------------- dwconv3x3
DW_SHAPES = [(2, 5, 9, 11), (1, 3, 7, 6), (1, 17, 5, 2), (1, 1, 1, 1), (2, 96, 33, 65), (1, 256, 64, 64)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", DW_SHAPES)
def test_dwconv3x3_cuda_forward_backward(dev, no_tf32, shape, channels_last, dtype):
    n, c, h, w = shape
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x64 = _rounded(torch.randn(n, c, h, w, dtype=torch.float64, generator=_gen(1)), dtype)
    w64 = _rounded(torch.randn(c, 1, 3, 3, dtype=torch.float64, generator=_gen(2)), dtype)
    for s, d in ((1, 1), (2, 1), (1, 2), (2, 2)):
        xr, wr = x64.clone().requires_grad_(), w64.clone().requires_grad_()
        ref = F.conv2d(xr, wr, None, s, d, d, c)
        g64 = _rounded(torch.randn(ref.shape, dtype=torch.float64, generator=_gen(3)), dtype)
        ref_grads = torch.autograd.grad(ref, (xr, wr), g64)

        def run(f):
            x = x64.to(dev, dtype).contiguous(memory_format=fmt).requires_grad_()
            wt = w64.to(dev, dtype).requires_grad_()
            out = f(x, wt)
            return out, torch.autograd.grad(out, (x, wt), g64.to(dev, dtype))

        out, grads = run(lambda x, wt: ops.dwconv3x3(x, wt, s, d))
        own, own_grads = run(lambda x, wt: F.conv2d(x, wt, None, s, d, d, c))
        what = f"{shape} s{s} d{d} {dtype}"
        if channels_last and c > 1:
            assert out.is_contiguous(memory_format=torch.channels_last), what
        _within(out, own, ref, f"dwconv3x3 forward {what}")
        for name, a, o, r in zip(("grad x", "grad weight"), grads, own_grads, ref_grads):
            _within(a, o, r, f"dwconv3x3 {name} {what}")


def test_dwconv3x3_cuda_gradcheck(dev):
    """float64 is not a CUDA kernel dtype: gradcheck the float32 kernel against finite differences of
    the float64 reference instead, through the registered autograd (the CUDA backward)."""
    x = torch.randn(1, 3, 5, 6, generator=_gen(4)).to(dev).requires_grad_()
    wt = torch.randn(3, 1, 3, 3, generator=_gen(5)).to(dev).requires_grad_()
    for s, d in ((1, 1), (2, 2)):
        out = torch.ops.agd.dwconv3x3(x, wt, s, d)
        g = torch.randn_like(out)
        gx, gw = torch.autograd.grad(out, (x, wt), g)
        xr, wr = x.detach().double().requires_grad_(), wt.detach().double().requires_grad_()
        rx, rw = torch.autograd.grad(ops.dwconv3x3_reference(xr, wr, s, d), (xr, wr), g.double())
        torch.testing.assert_close(gx.double(), rx, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gw.double(), rw, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- norm_act_residual
EPI_SHAPES = [(1, 33, 17, 15), (2, 7, 2, 1), (1, 130, 9, 70), (1, 1, 5, 5), (4, 256, 64, 64), (16, 64, 32, 32)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", EPI_SHAPES)
@pytest.mark.parametrize("norm,shortcut,affine,act", [(True, True, True, 1), (True, False, False, 1),
                                                      (True, True, False, 2), (False, True, True, 2),
                                                      (False, False, False, 3), (True, False, True, 0)])
def test_norm_act_residual_cuda_forward_backward(dev, shape, norm, shortcut, affine, act, dtype):
    n, c, h, w = shape
    y64 = _rounded(torch.randn(*shape, dtype=torch.float64, generator=_gen(8)) * 2 + 1.5, dtype)  # a mean: the variance path matters
    s64 = _rounded(torch.randn(*shape, dtype=torch.float64, generator=_gen(9)), dtype) if shortcut else None
    w64 = _rounded(1 + 0.3 * torch.randn(c, dtype=torch.float64, generator=_gen(10)), dtype) if affine else None
    b64 = _rounded(0.3 * torch.randn(c, dtype=torch.float64, generator=_gen(11)), dtype) if affine else None

    def leaves(dt, device):
        return [t.to(device, dt).requires_grad_() if t is not None else None for t in (y64, s64, w64, b64)]

    refs = leaves(torch.float64, "cpu")
    ref = _epilogue(*refs, norm, act)
    g64 = _rounded(torch.randn(ref.shape, dtype=torch.float64, generator=_gen(12)), dtype)
    wanted = [t for t in refs if t is not None]
    ref_grads = torch.autograd.grad(ref, wanted, g64)

    def run(f):
        ls = leaves(dtype, dev)
        out = f(*ls)
        return out, torch.autograd.grad(out, [t for t in ls if t is not None], g64.to(dev, dtype))

    out, grads = run(lambda y, s, w_, b: torch.ops.agd.norm_act_residual(y, s, w_, b, norm, act, 0.2, 1e-5)[0])
    own, own_grads = run(lambda y, s, w_, b: _epilogue(y, s, w_, b, norm, act))
    what = f"{shape} norm={norm} shortcut={shortcut} affine={affine} act={act} {dtype}"
    _within(out, own, ref, f"norm_act_residual forward {what}")
    names = [nm for nm, t in zip(("y", "shortcut", "weight", "bias"), refs) if t is not None]
    for nm, a, o, r in zip(names, grads, own_grads, ref_grads):
        _within(a, o, r, f"norm_act_residual grad {nm} {what}")


def test_norm_act_residual_cuda_channels_last_and_stats(dev):
    y = torch.randn(2, 24, 19, 13, generator=_gen(13)) * 3 + 5
    want = _epilogue(y.double(), None, None, None, True, 2)
    for y_in in (y, y.contiguous(memory_format=torch.channels_last)):
        out, mean, rstd = torch.ops.agd.norm_act_residual(y_in.to(dev), None, None, None, True, 2, 0.2, 1e-5)
        torch.testing.assert_close(out.double().cpu(), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(mean.double().cpu(), y.double().mean((2, 3)), rtol=1e-5, atol=1e-5)
        var = y.double().var((2, 3), unbiased=False)
        torch.testing.assert_close(rstd.double().cpu(), (var + 1e-5).rsqrt(), rtol=1e-5, atol=1e-5)


def test_norm_act_residual_cuda_opcheck(dev):
    y = torch.randn(1, 6, 5, 4, device=dev, requires_grad=True)
    s = torch.randn(1, 6, 5, 4, device=dev)
    torch.library.opcheck(torch.ops.agd.norm_act_residual.default, (y, s, None, None, True, 2, 0.2, 1e-5))


# ----------------------------------------------------------------------------- dws_block
@pytest.mark.parametrize("norm,reflect,act,affine", [(True, True, 1, False), (True, False, 2, True),
                                                     (False, False, 2, False), (False, True, 1, False)])
@pytest.mark.parametrize("n,cin,cout,h,w", [(2, 5, 5, 13, 7), (1, 6, 9, 4, 11), (1, 3, 3, 2, 2), (2, 7, 4, 23, 5),
                                            (1, 128, 128, 64, 64), (1, 64, 40, 64, 64), (1, 256, 256, 64, 64)])
def test_dws_block_cuda(dev, n, cin, cout, h, w, norm, reflect, act, affine):
    we, wd, wp, ws, aff = _dws_args(cin, cout, 3 * cin, 20 + cin, affine)
    x = torch.randn(n, cin, h, w, generator=_gen(21)) * 2 + 0.5
    ref = ops.dws_block_reference(x.double(), we.double(), wd.double(), wp.double(),
                                  ws.double() if ws is not None else None, [t.double() for t in aff], norm, act, 0.2,
                                  reflect, 1e-5)
    out = torch.ops.agd.dws_block(*(t.to(dev) if t is not None else None for t in (x, we, wd, wp, ws)),
                                  [t.to(dev) for t in aff], norm, act, 0.2, reflect, 1e-5)
    assert out.shape == ref.shape
    scale = ref.abs().max().item()
    err = _err(out, ref)
    assert err <= 2e-5 * max(scale, 1.0), f"dws_block {(n, cin, cout, h, w)}: max error {err:.3g} (scale {scale:.3g})"
    xc = x.to(dev).contiguous(memory_format=torch.channels_last)
    out_cl = torch.ops.agd.dws_block(xc, *(t.to(dev) if t is not None else None for t in (we, wd, wp, ws)),
                                     [t.to(dev) for t in aff], norm, act, 0.2, reflect, 1e-5)
    torch.testing.assert_close(out_cl, out)


# ----------------------------------------------------------------------------- whole students
def _example_nets():
    root = Path(__file__).resolve().parents[1] / "examples"
    out = [(p.stem, derive(Genotype.load(p)), size) for p, size in
           ((root / "translation_r9_small.json", 256), (root / "sr_x4_small.json", 64))]
    for task, size in (("translation", 256), ("sr", 64)):
        space = SearchSpace(get_config(task))
        for seed in (1, 2):
            out.append((f"random {task} {seed}", derive(random_genotype(space, random.Random(seed))), size))
        for op in ("dwsblock", "resblock"):
            out.append((f"{task} all-{op}", derive(max_genotype(space, op)), size))
    return out


def test_convert_cuda_matches_standard_student(dev, no_tf32):
    """The acceptance of the C++ issue on the GPU: a derived student with agd's CUDA blocks matches the
    standard-op student (max abs diff <= 1e-4, float32) and the float64 network, at full size."""
    torch.manual_seed(0)
    seen = set()
    for name, net, size in _example_nets():
        net = net.eval()
        x = torch.rand(1, 3, size, size, generator=_gen(40))
        with torch.no_grad():
            want = net.double()(x.double())
            net = net.float().to(dev)
            fast = convert(net, "cuda")
            seen |= set(converted_blocks(fast))
            got = fast(x.to(dev))
            std = net(x.to(dev))
        diff = _err(got, std)
        assert diff <= 1e-4, f"{name}: max abs diff {diff:.3g} against the standard-op student on the GPU"
        diff64 = _err(got, want)
        assert diff64 <= 1e-4, f"{name}: max abs diff {diff64:.3g} against the float64 network"
    assert {"FastDwsBlock", "FastResBlock"} <= seen, seen
