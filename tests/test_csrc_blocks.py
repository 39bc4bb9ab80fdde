"""agd's block ops (dwconv3x3, norm_act_residual, dws_block) and agd.space.fast.convert.

Compiled kernels are compared with float64 references computed by plain torch ops (F.conv2d,
F.instance_norm, autograd); the C++ tests skip with the reason when agd/_C is not built, the CUDA
tests when no GPU / CUDA library is present.
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from agd import ops
from agd.io import AgdError
from agd.space import Genotype, SearchSpace, derive, get_config
from agd.space.blocks import DwsBlock, Style
from agd.space import fast as fast_mod
from agd.space.fast import available_backends, convert, converted_blocks


@pytest.fixture(scope="module")
def cpp() -> None:
    backend, why = ops.blocks_backend("cpu")
    if backend != "cpp":
        pytest.skip(f"C++ ops unavailable: {why}")


def cuda_dev() -> torch.device:
    backend, why = ops.blocks_backend("cuda")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if backend != "cuda":
        pytest.skip(f"agd CUDA ops unavailable: {why}")
    return torch.device("cuda")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- dwconv3x3
DW_CASES = [(2, 5, 9, 11, 1, 1), (1, 3, 7, 6, 2, 1), (1, 4, 10, 9, 1, 2), (2, 3, 8, 13, 2, 2), (1, 1, 1, 1, 1, 1),
            (1, 17, 5, 2, 2, 2)]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("n,c,h,w,s,d", DW_CASES)
def test_dwconv_forward_backward_float64(cpp, n, c, h, w, s, d, channels_last):
    x = torch.randn(n, c, h, w, dtype=torch.float64, generator=_gen(1))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    wt = torch.randn(c, 1, 3, 3, dtype=torch.float64, generator=_gen(2))
    x.requires_grad_(True)
    wt.requires_grad_(True)
    out = ops.dwconv3x3(x, wt, s, d)
    ref = F.conv2d(x, wt, None, s, d, d, c)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    if channels_last and c > 1:
        assert out.is_contiguous(memory_format=torch.channels_last)
    g = torch.randn(ref.shape, dtype=torch.float64, generator=_gen(3))
    got = torch.autograd.grad(out, (x, wt), g)
    want = torch.autograd.grad(ref, (x, wt), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("channels_last", [False, True])
def test_dwconv_float32_matches_float64(cpp, channels_last):
    x = torch.randn(1, 37, 23, 19, generator=_gen(4))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    wt = torch.randn(37, 1, 3, 3, generator=_gen(5))
    for s, d in ((1, 1), (2, 1), (1, 2), (2, 2)):
        out = torch.ops.agd.dwconv3x3(x, wt, s, d)
        ref = F.conv2d(x.double(), wt.double(), None, s, d, d, 37)
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["reference", "cpp"])
def test_dwconv_gradcheck(request, impl):
    if impl == "cpp":
        request.getfixturevalue("cpp")
    f = torch.ops.agd.dwconv3x3 if impl == "cpp" else ops.dwconv3x3_reference
    x = torch.randn(1, 3, 5, 6, dtype=torch.float64, generator=_gen(6), requires_grad=True)
    wt = torch.randn(3, 1, 3, 3, dtype=torch.float64, generator=_gen(7), requires_grad=True)
    for s, d in ((1, 1), (2, 2)):
        assert torch.autograd.gradcheck(lambda a, b: f(a, b, s, d), (x, wt))


def test_dwconv_rejects_bad_args():
    x = torch.randn(1, 3, 5, 5)
    with pytest.raises(ValueError, match="stride must be 1 or 2"):
        ops.dwconv3x3_reference(x, torch.randn(3, 1, 3, 3), 3, 1)
    with pytest.raises(ValueError, match="weight must be"):
        ops.dwconv3x3_reference(x, torch.randn(4, 1, 3, 3), 1, 1)


# ----------------------------------------------------------------------------- norm_act_residual
def _epilogue64(y, s, w, b, norm, act, slope=0.2, eps=1e-5):
    z = F.instance_norm(y, eps=eps) if norm else y
    if w is not None:
        z = z * w.reshape(1, -1, 1, 1)
    if b is not None:
        z = z + b.reshape(1, -1, 1, 1)
    if s is not None:
        z = z + s
    return {0: lambda t: t, 1: torch.relu, 2: lambda t: F.leaky_relu(t, slope), 3: torch.tanh}[act](z)


@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("shortcut", [True, False])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("act", [0, 1, 2, 3])
def test_epilogue_cpp_float64(cpp, norm, shortcut, affine, act):
    y = torch.randn(2, 5, 7, 3, dtype=torch.float64, generator=_gen(8), requires_grad=True)
    s = torch.randn(2, 5, 7, 3, dtype=torch.float64, generator=_gen(9), requires_grad=True) if shortcut else None
    w = torch.randn(5, dtype=torch.float64, generator=_gen(10), requires_grad=True) if affine else None
    b = torch.randn(5, dtype=torch.float64, generator=_gen(11), requires_grad=True) if affine else None
    out, mean, rstd = torch.ops.agd.norm_act_residual(y, s, w, b, norm, act, 0.2, 1e-5)
    ref = _epilogue64(y, s, w, b, norm, act)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    if norm:
        torch.testing.assert_close(mean, y.mean((2, 3)))
    ins = [t for t in (y, s, w, b) if t is not None]
    g = torch.randn(ref.shape, dtype=torch.float64, generator=_gen(12))
    for a, e in zip(torch.autograd.grad(out, ins, g), torch.autograd.grad(ref, ins, g)):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9)


def test_epilogue_float32_and_channels_last(cpp):
    y = torch.randn(1, 33, 17, 15, generator=_gen(13)).contiguous(memory_format=torch.channels_last)
    s = torch.randn(1, 33, 17, 15, generator=_gen(14))
    out = ops.norm_act_residual(y, s, norm=True, act="lrelu")
    torch.testing.assert_close(out.double(), _epilogue64(y.double(), s.double(), None, None, True, 2),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["reference", "cpp"])
def test_epilogue_gradcheck(request, impl):
    if impl == "cpp":
        request.getfixturevalue("cpp")
    f = torch.ops.agd.norm_act_residual if impl == "cpp" else ops.norm_act_residual_reference
    y = torch.randn(1, 2, 3, 4, dtype=torch.float64, generator=_gen(15), requires_grad=True)
    s = torch.randn(1, 2, 3, 4, dtype=torch.float64, generator=_gen(16), requires_grad=True)
    w = torch.randn(2, dtype=torch.float64, generator=_gen(17), requires_grad=True)
    b = torch.randn(2, dtype=torch.float64, generator=_gen(18), requires_grad=True)
    for act in (2, 3):  # smooth almost everywhere and away from 0 with these seeds
        assert torch.autograd.gradcheck(lambda *a: f(*a, True, act, 0.2, 1e-5)[0], (y, s, w, b))


def test_epilogue_fake_and_errors():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        y = torch.empty(2, 3, 4, 5)
        out, mean, rstd = torch.ops.agd.norm_act_residual(y, None, None, None, True, 1, 0.2, 1e-5)
        assert out.shape == y.shape and mean.shape == (2, 3)
    with pytest.raises(ValueError, match="activation"):
        ops.norm_act_residual(torch.randn(1, 2, 3, 3), act="gelu")


# ----------------------------------------------------------------------------- dws_block
def _dws_args(cin, cout, hid, seed, affine):
    g = _gen(seed)
    we = torch.randn(hid, cin, 1, 1, generator=g) / cin**0.5
    wd = torch.randn(hid, 1, 3, 3, generator=g) / 3
    wp = torch.randn(cout, hid, 1, 1, generator=g) / hid**0.5
    ws = torch.randn(cout, cin, 1, 1, generator=g) / cin**0.5 if cin != cout else None
    aff = []
    if affine:
        for c in (hid, hid, cout, cout):
            aff += [1 + 0.3 * torch.randn(c, generator=g), 0.3 * torch.randn(c, generator=g)]
    return we, wd, wp, ws, aff


@pytest.mark.parametrize("norm,reflect,act", [(True, True, 1), (True, False, 2), (False, False, 2), (False, True, 1)])
@pytest.mark.parametrize("cin,cout,h,w", [(5, 5, 13, 7), (6, 9, 4, 11), (3, 3, 2, 2), (7, 4, 23, 5)])
@pytest.mark.parametrize("affine", [False, True])
def test_dws_block_cpp(cpp, norm, reflect, act, cin, cout, h, w, affine):
    if affine and not norm:
        pytest.skip("affine parameters belong to norms")
    we, wd, wp, ws, aff = _dws_args(cin, cout, 3 * cin, 20 + cin, affine)
    x = torch.randn(2, cin, h, w, generator=_gen(21)) * 2 + 0.5
    out = torch.ops.agd.dws_block(x, we, wd, wp, ws, aff, norm, act, 0.2, reflect, 1e-5)
    d = [t.double() for t in aff]
    ref = ops.dws_block_reference(x.double(), we.double(), wd.double(), wp.double(),
                                  ws.double() if ws is not None else None, d, norm, act, 0.2, reflect, 1e-5)
    torch.testing.assert_close(out.double(), ref, rtol=2e-5, atol=2e-5)
    # float64 through the C++ kernel (loop GEMM)
    out64 = torch.ops.agd.dws_block(x.double(), we.double(), wd.double(), wp.double(),
                                    ws.double() if ws is not None else None, d, norm, act, 0.2, reflect, 1e-5)
    torch.testing.assert_close(out64, ref, rtol=1e-9, atol=1e-9)


def test_dws_block_channels_last_input(cpp):
    we, wd, wp, ws, aff = _dws_args(8, 8, 24, 30, False)
    x = torch.randn(1, 8, 9, 10, generator=_gen(31))
    a = torch.ops.agd.dws_block(x, we, wd, wp, ws, aff, True, 1, 0.2, True, 1e-5)
    b = torch.ops.agd.dws_block(x.contiguous(memory_format=torch.channels_last), we, wd, wp, ws, aff, True, 1, 0.2,
                                True, 1e-5)
    torch.testing.assert_close(a, b)


def test_dws_block_matches_module_and_falls_back_for_grad(cpp):
    blk = DwsBlock(6, 6, Style("instance", False, "relu", "reflect", False)).eval()
    x = torch.randn(1, 6, 8, 8, generator=_gen(32))
    args = (x, blk.expand.conv.weight, blk.depthwise.conv.weight, blk.project.conv.weight, None)
    with torch.no_grad():
        torch.testing.assert_close(ops.dws_block(*args, norm=True, act="relu", reflect=True), blk(x),
                                   rtol=1e-5, atol=1e-5)
    out = ops.dws_block(*args, norm=True, act="relu", reflect=True)  # weights require grad: reference
    out.sum().backward()
    assert blk.expand.conv.weight.grad is not None


def test_dws_block_fake():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(1, 4, 6, 6)
        out = torch.ops.agd.dws_block(x, torch.empty(12, 4, 1, 1), torch.empty(12, 1, 3, 3), torch.empty(5, 12, 1, 1),
                                      torch.empty(5, 4, 1, 1), [], True, 1, 0.2, False, 1e-5)
        assert out.shape == (1, 5, 6, 6)


# ----------------------------------------------------------------------------- conv_narrow
NARROW_CASES = [  # (n, c, h, w, c_out, k, reflect): odd sizes, every supported k, the runtime-k path (9)
    (1, 5, 13, 7, 3, 7, True), (2, 3, 9, 11, 1, 3, False), (1, 4, 6, 37, 4, 5, True), (1, 2, 3, 5, 2, 1, False),
    (1, 6, 11, 10, 3, 9, False), (1, 7, 5, 70, 3, 3, True),
]


@pytest.mark.parametrize("n,c,h,w,o,k,reflect", NARROW_CASES)
@pytest.mark.parametrize("act", [0, 1, 2, 3])
def test_conv_narrow_float64(cpp, n, c, h, w, o, k, reflect, act):
    g = _gen(50 + k + act)
    x = torch.randn(n, c, h, w, dtype=torch.float64, generator=g)
    wt = torch.randn(o, c, k, k, dtype=torch.float64, generator=g)
    b = torch.randn(o, dtype=torch.float64, generator=g)
    ref = ops.conv_narrow_reference(x, wt, b, reflect, act, 0.2)
    torch.testing.assert_close(torch.ops.agd.conv_narrow(x, wt, b, reflect, act, 0.2), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.ops.agd.conv_narrow(x, wt, None, reflect, act, 0.2),
                               ops.conv_narrow_reference(x, wt, None, reflect, act, 0.2), rtol=1e-12, atol=1e-12)
    # float32 within the float32 reference's own error against float64
    y32 = torch.ops.agd.conv_narrow(x.float(), wt.float(), b.float(), reflect, act, 0.2).double()
    r32 = ops.conv_narrow_reference(x.float(), wt.float(), b.float(), reflect, act, 0.2).double()
    assert (y32 - ref).abs().max() <= 4 * (r32 - ref).abs().max() + 1e-5


def test_conv_narrow_channels_last_opcheck_and_errors(cpp):
    g = _gen(60)
    x = torch.randn(1, 4, 8, 9, generator=g)
    wt = torch.randn(3, 4, 3, 3, generator=g)
    a = ops.conv_narrow(x, wt, None, act="tanh")
    torch.testing.assert_close(ops.conv_narrow(x.contiguous(memory_format=torch.channels_last), wt, None, act="tanh"), a)
    torch.library.opcheck(torch.ops.agd.conv_narrow.default, (x, wt, None, True, 2, 0.2))
    with pytest.raises(RuntimeError, match="1 to 4 output channels"):
        torch.ops.agd.conv_narrow(x, torch.randn(5, 4, 3, 3), None, False, 0, 0.2)
    with pytest.raises(RuntimeError, match="K odd"):
        torch.ops.agd.conv_narrow(x, torch.randn(3, 4, 2, 2), None, False, 0, 0.2)
    with pytest.raises(RuntimeError, match="reflect padding 3"):
        torch.ops.agd.conv_narrow(torch.randn(1, 4, 3, 9), torch.randn(3, 4, 7, 7), None, True, 0, 0.2)
    with pytest.raises(ValueError, match="activation"):
        ops.conv_narrow(x, wt, act="gelu")
    wg = wt.clone().requires_grad_()  # a gradient is wanted: the differentiable reference runs
    ops.conv_narrow(x, wg, None, act="relu").sum().backward()
    assert wg.grad is not None


# ----------------------------------------------------------------------------- convert
def _nets():
    out = []
    for task, seed in (("translation-tiny", 0), ("translation-tiny", 3), ("sr-tiny", 0), ("sr-tiny", 5)):
        space = SearchSpace(get_config(task))
        out.append((task, derive(space.random_genotype(random.Random(seed))), space.config.reference_size))
    for task in ("translation-tiny", "sr-tiny"):
        space = SearchSpace(get_config(task))
        for op in ("dwsblock", "resblock"):
            out.append((f"{task}-{op}", derive(space.max_genotype(op)), space.config.reference_size))
    return out


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_convert_matches_standard_student(request, backend):
    if backend == "cpp":
        request.getfixturevalue("cpp")
    torch.manual_seed(0)
    seen = set()
    for name, net, (h, w) in _nets():
        net.eval()
        fast = convert(net, backend)
        seen |= set(converted_blocks(fast))
        x = torch.rand(1, 3, h + 1, w + 3)  # odd sizes
        with torch.no_grad():
            diff = (fast(x) - net(x)).abs().max().item()
        assert diff <= 1e-4, f"{name}: max abs diff {diff}"
    expected = {"FastDwsBlock", "FastResBlock", "FastConvNormAct", "FastNarrowConv"}
    if backend == "cpp" and fast_mod.onednn_reason() == "":
        # the SR nets run channels-last on oneDNN (their last layer too), the translation head on conv_narrow
        expected |= {"OneDnnConvNormAct", "OneDnnResBlock"}
    assert seen == expected


def test_convert_without_onednn_falls_back(cpp, monkeypatch):
    """Without oneDNN's fused convolutions the C++ blocks still run and the SR nets stay NCHW."""
    monkeypatch.setattr(fast_mod, "onednn_reason", lambda: "probe says no")
    for name, net, (h, w) in _nets():
        fast = convert(net.eval(), "cpp")
        assert not {"OneDnnConvNormAct", "OneDnnResBlock"} & set(converted_blocks(fast))
        x = torch.rand(1, 3, h, w + 1, generator=_gen(41))
        with torch.no_grad():
            assert (fast(x) - net(x)).abs().max().item() <= 1e-4, name


def test_convert_channels_last_output_is_plain_nchw(cpp):
    if fast_mod.onednn_reason():
        pytest.skip(f"oneDNN fused convolutions do not run here: {fast_mod.onednn_reason()}")
    space = SearchSpace(get_config("sr-tiny"))
    net = derive(space.random_genotype(random.Random(2))).eval()
    fast = convert(net, "cpp")
    x = torch.rand(1, 3, 9, 7, generator=_gen(42))
    with torch.no_grad():
        y = fast(x)
        assert y.is_contiguous() and y.shape == net(x).shape
        # a channels-last input gives the same result
        torch.testing.assert_close(fast(x.contiguous(memory_format=torch.channels_last)), y)


def test_convert_examples_full_size_blocks(cpp):
    """The example genotypes' real widths, at small spatial sizes to stay fast."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "examples"
    for name, hw in (("translation_r9_small.json", 48), ("sr_x4_small.json", 12)):
        net = derive(Genotype.load(root / name)).eval()
        fast = convert(net, "cpp")
        x = torch.rand(1, 3, hw, hw, generator=_gen(40))
        with torch.no_grad():
            diff = (fast(x) - net(x)).abs().max().item()
        assert diff <= 1e-4, f"{name}: max abs diff {diff}"


def test_convert_errors_and_backends():
    b = available_backends()
    assert set(b) == {"cpp", "cuda", "reference"} and b["reference"] == ""
    with pytest.raises(AgdError, match="backend 'tvm'"):
        convert(torch.nn.Identity(), "tvm")
    if b["cuda"]:
        with pytest.raises(AgdError, match="unavailable"):
            convert(torch.nn.Identity(), "cuda")


# ----------------------------------------------------------------------------- CUDA (skips here)
def test_cuda_ops_match_cpu_reference():
    dev = cuda_dev()
    for dtype, tol in ((torch.float32, 1e-4), (torch.float16, 2e-2), (torch.bfloat16, 5e-2)):
        x = torch.randn(1, 19, 13, 11, generator=_gen(50))
        wt = torch.randn(19, 1, 3, 3, generator=_gen(51))
        for s, d in ((1, 1), (2, 2)):
            out = torch.ops.agd.dwconv3x3(x.to(dev, dtype), wt.to(dev, dtype), s, d)
            torch.testing.assert_close(out.float().cpu(), F.conv2d(x, wt, None, s, d, d, 19), rtol=tol, atol=tol)
        y, sc = torch.randn(2, 5, 9, 7, generator=_gen(52)), torch.randn(2, 5, 9, 7, generator=_gen(53))
        out = torch.ops.agd.norm_act_residual(y.to(dev, dtype), sc.to(dev, dtype), None, None, True, 1, 0.2, 1e-5)[0]
        torch.testing.assert_close(out.float().cpu(), _epilogue64(y, sc, None, None, True, 1).float(), rtol=tol, atol=tol)
    we, wd, wp, ws, aff = _dws_args(8, 8, 24, 54, False)
    x = torch.randn(1, 8, 10, 9, generator=_gen(55))
    for norm in (False, True):
        out = torch.ops.agd.dws_block(*(t.to(dev) if t is not None else None for t in (x, we, wd, wp, ws)), [], norm, 2,
                                      0.2, norm, 1e-5)
        ref = ops.dws_block_reference(x, we, wd, wp, ws, [], norm, 2, 0.2, norm, 1e-5)
        torch.testing.assert_close(out.cpu(), ref, rtol=1e-4, atol=1e-4)
