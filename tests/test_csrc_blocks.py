"""agd's block ops (dwconv3x3, norm_act_residual, dws_block) and agd.arch.fast.convert.

Compiled kernels are compared with float64 references computed by plain torch ops (F.conv2d,
F.instance_norm, autograd); the C++ tests skip with the reason when agd/_C is not built, the CUDA
tests when no GPU / CUDA library is present.
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from blocks_reference import dws_args as _dws_args
from blocks_reference import epilogue_reference as _epilogue64
from blocks_reference import gen as _gen

from agd import ops
from agd.arch import Genotype, derive, max_genotype, random_genotype
from agd.arch import fast as fast_mod
from agd.arch.fast import available_backends, convert, converted_blocks
from agd.io import AgdError
from agd.space import SearchSpace, get_config
from agd.space.blocks import DwsBlock, Style


@pytest.fixture(scope="module")
def cpp() -> None:
    backend, why = ops.blocks_backend("cpu")
    if backend != "cpp":
        pytest.skip(f"C++ ops unavailable: {why}")


def _op(request, impl: str, compiled, reference):
    """The op a test checks: the C++ kernel (skipped with the reason when agd/_C is not built) or its reference."""
    if impl == "cpp":
        request.getfixturevalue("cpp")
        return compiled
    return reference


def cuda_dev() -> torch.device:
    backend, why = ops.blocks_backend("cuda")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if backend != "cuda":
        pytest.skip(f"agd CUDA ops unavailable: {why}")
    return torch.device("cuda")




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
    f = _op(request, impl, torch.ops.agd.dwconv3x3, ops.dwconv3x3_reference)
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
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("shortcut", [True, False])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("act", [0, 1, 2, 3])
def test_epilogue_cpp_float64(cpp, norm, shortcut, affine, act, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def t4(seed):  # a (2, 5, 7, 3) leaf in the tested memory format
        return torch.randn(2, 5, 7, 3, dtype=torch.float64, generator=_gen(seed)).contiguous(
            memory_format=fmt).requires_grad_(True)

    y = t4(8)
    s = t4(9) if shortcut else None
    w = torch.randn(5, dtype=torch.float64, generator=_gen(10), requires_grad=True) if affine else None
    b = torch.randn(5, dtype=torch.float64, generator=_gen(11), requires_grad=True) if affine else None
    out, mean, rstd = torch.ops.agd.norm_act_residual(y, s, w, b, norm, act, 0.2, 1e-5)
    ref = _epilogue64(y, s, w, b, norm, act)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    assert out.is_contiguous(memory_format=fmt)
    if norm:
        torch.testing.assert_close(mean, y.mean((2, 3)))
    ins = [t for t in (y, s, w, b) if t is not None]
    g = torch.randn(ref.shape, dtype=torch.float64, generator=_gen(12))
    for a, e in zip(torch.autograd.grad(out, ins, g), torch.autograd.grad(ref, ins, g)):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("shape", [(1, 33, 17, 15), (2, 7, 2, 1), (1, 130, 9, 70), (1, 1, 5, 5)])
def test_epilogue_float32_and_channels_last(cpp, shape):
    """float32 against float64 in both layouts; the NHWC path's per-channel sums cross its 64-pixel blocks
    (9 x 70 pixels), a mixed-layout shortcut is accepted, and C == 1 keeps the NCHW path."""
    y = torch.randn(*shape, generator=_gen(13)) * 3 + 5  # a large mean: the two-pass variance matters
    s = torch.randn(*shape, generator=_gen(14))
    want = _epilogue64(y.double(), s.double(), None, None, True, 2)
    for y_in in (y, y.contiguous(memory_format=torch.channels_last)):
        out = ops.norm_act_residual(y_in, s, norm=True, act="lrelu")
        torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            got = torch.ops.agd.norm_act_residual(y_in, s, None, None, True, 2, 0.2, 1e-5)
        torch.testing.assert_close(got[1].double(), y.double().mean((2, 3)), rtol=1e-5, atol=1e-5)
        cl = shape[1] > 1 and y_in.is_contiguous(memory_format=torch.channels_last)
        assert out.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)


@pytest.mark.parametrize("impl", ["reference", "cpp"])
def test_epilogue_gradcheck(request, impl):
    f = _op(request, impl, torch.ops.agd.norm_act_residual, ops.norm_act_residual_reference)
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
        y_cl = y.contiguous(memory_format=torch.channels_last)
        out = torch.ops.agd.norm_act_residual(y_cl, None, None, None, True, 1, 0.2, 1e-5)[0]
        assert out.is_contiguous(memory_format=torch.channels_last)  # as the kernels return it
    with pytest.raises(ValueError, match="activation"):
        ops.norm_act_residual(torch.randn(1, 2, 3, 3), act="gelu")


def test_epilogue_half_inputs_keep_float32_statistics(cpp):
    """bfloat16 / float16 in, the same dtype out, but (mean, rstd) in float32 in the kernel, the reference
    and the fake alike: the backward recomputes the normalised values from them."""
    y = (torch.randn(2, 6, 5, 4, generator=_gen(70)) * 3 + 40).bfloat16().requires_grad_(True)
    s = torch.randn(2, 6, 5, 4, generator=_gen(71)).bfloat16()
    out, mean, rstd = torch.ops.agd.norm_act_residual(y, s, None, None, True, 2, 0.2, 1e-5)
    assert out.dtype == torch.bfloat16 and mean.dtype == rstd.dtype == torch.float32
    torch.testing.assert_close(mean, y.detach().float().mean((2, 3)), rtol=1e-6, atol=1e-5)
    ref = ops.norm_act_residual_reference(y, s, None, None, True, 2, 0.2, 1e-5)
    assert [t.dtype for t in ref] == [torch.bfloat16, torch.float32, torch.float32]
    g = torch.randn(out.shape, generator=_gen(72)).bfloat16()
    got = torch.autograd.grad(out, y, g)[0]
    y64 = y.detach().double().requires_grad_(True)
    want = torch.autograd.grad(_epilogue64(y64, s.double(), None, None, True, 2), y64, g.double())[0]
    # a mean of ~40 rounded to bfloat16 (step 0.25) would shift every normalised value by up to 0.125 sigma
    assert (got.double() - want).abs().max() <= 0.05 * want.abs().max()
    torch.library.opcheck(torch.ops.agd.norm_act_residual.default, (y, s, None, None, True, 2, 0.2, 1e-5))


def test_epilogue_opcheck_both_layouts(cpp):
    """Schema, fake (its output layout included) and autograd registration agree with the C++ kernel."""
    for fmt in (torch.contiguous_format, torch.channels_last):
        y = torch.randn(1, 6, 5, 4, generator=_gen(19)).contiguous(memory_format=fmt).requires_grad_(True)
        s = torch.randn(1, 6, 5, 4, generator=_gen(20)).contiguous(memory_format=fmt)
        torch.library.opcheck(torch.ops.agd.norm_act_residual.default, (y, s, None, None, True, 2, 0.2, 1e-5))


# ----------------------------------------------------------------------------- dws_block
# (norm, reflect, act, affine); affine parameters belong to norms, so affine comes with norm only
DWS_STYLES = [(n, r, a, aff) for n, r, a in ((True, True, 1), (True, False, 2), (False, False, 2), (False, True, 1))
              for aff in (False, True) if n or not aff]


@pytest.mark.parametrize("norm,reflect,act,affine", DWS_STYLES)
@pytest.mark.parametrize("cin,cout,h,w", [(5, 5, 13, 7), (6, 9, 4, 11), (3, 3, 2, 2), (7, 4, 23, 5)])
def test_dws_block_cpp(cpp, norm, reflect, act, cin, cout, h, w, affine):
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


@pytest.mark.parametrize("cin,cout,norm,act,reflect", [(6, 6, True, "relu", True), (6, 9, True, "lrelu", False),
                                                      (5, 5, False, "lrelu", False), (7, 4, True, "relu", False),
                                                      (3, 3, False, "relu", True)])
def test_dws_block_matches_module_and_falls_back_for_grad(cpp, cin, cout, norm, act, reflect):
    """The fused block equals the DwsBlock module (float32); when a gradient is wanted it falls back to its
    differentiable reference, whose gradients equal torch.autograd of the module in float64."""
    style = Style("instance" if norm else "none", False, act, "reflect" if reflect else "zeros", False)
    blk = DwsBlock(cin, cout, style).eval()

    def args(m, x):
        ws = m.shortcut.proj.conv.weight if m.shortcut.proj is not None else None
        return x, m.expand.conv.weight, m.depthwise.conv.weight, m.project.conv.weight, ws

    x = torch.randn(2, cin, 8, 7, generator=_gen(32))
    with torch.no_grad():
        torch.testing.assert_close(ops.dws_block(*args(blk, x), norm=norm, act=act, reflect=reflect), blk(x),
                                   rtol=1e-5, atol=1e-5)
    blk64 = blk.double()
    x64 = x.double().requires_grad_(True)
    leaves = [t for t in args(blk64, x64) if t is not None]
    g = torch.randn(2, cout, 8, 7, dtype=torch.float64, generator=_gen(33))
    got = torch.autograd.grad(ops.dws_block(*args(blk64, x64), norm=norm, act=act, reflect=reflect), leaves, g)
    want = torch.autograd.grad(blk64(x64), leaves, g)
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=lambda m: f"gradient {i}: {m}")


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


@pytest.mark.parametrize("act", ["none", "relu", "lrelu", "tanh"])
def test_conv_narrow_gradient_equals_autograd_of_plain_conv(act):
    """With a gradient wanted the differentiable path runs; its gradients (input, weight, bias) equal
    torch.autograd of F.pad + F.conv2d + the activation in float64."""
    g = _gen(61)
    x = torch.randn(2, 4, 7, 9, dtype=torch.float64, generator=g, requires_grad=True)
    wt = torch.randn(3, 4, 5, 5, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, generator=g, requires_grad=True)
    out = ops.conv_narrow(x, wt, b, reflect=True, act=act)
    fn = {"none": lambda t: t, "relu": torch.relu, "lrelu": lambda t: F.leaky_relu(t, 0.2), "tanh": torch.tanh}[act]
    ref = fn(F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), wt, b))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    cot = torch.randn(ref.shape, dtype=torch.float64, generator=g)
    for i, (a, e) in enumerate(zip(torch.autograd.grad(out, (x, wt, b), cot), torch.autograd.grad(ref, (x, wt, b), cot))):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10, msg=lambda m: f"gradient {i}: {m}")


# ----------------------------------------------------------------------------- convert
def _nets():
    out = []
    for task, seed in (("translation-tiny", 0), ("translation-tiny", 3), ("sr-tiny", 0), ("sr-tiny", 5)):
        space = SearchSpace(get_config(task))
        out.append((task, derive(random_genotype(space, random.Random(seed))), space.config.reference_size))
    for task in ("translation-tiny", "sr-tiny"):
        space = SearchSpace(get_config(task))
        for op in ("dwsblock", "resblock"):
            out.append((f"{task}-{op}", derive(max_genotype(space, op)), space.config.reference_size))
    x3 = SearchSpace(get_config("sr-tiny", scale=3))  # one nearest-x3 upsampling round
    out.append(("sr-tiny-x3", derive(random_genotype(x3, random.Random(2))), x3.config.reference_size))
    return out


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_convert_matches_standard_student(request, backend):
    if backend == "cpp":
        request.getfixturevalue("cpp")
    torch.manual_seed(0)
    onednn = backend == "cpp" and fast_mod.onednn_reason() == ""
    seen = set()
    for layout in ((None, False) if onednn else (None,)):
        for name, net, (h, w) in _nets():
            net.eval()
            fast = convert(net, backend, channels_last=layout)
            seen |= set(converted_blocks(fast))
            x = torch.rand(1, 3, h + 1, w + 3)  # odd sizes
            with torch.no_grad():
                y = fast(x)
                diff = (y - net(x)).abs().max().item()
            assert diff <= 1e-4, f"{name} (channels_last={layout}): max abs diff {diff}"
            assert y.is_contiguous()
    expected = {"FastDwsBlock", "FastResBlock", "FastConvNormAct", "FastNarrowConv"}
    if onednn:
        # channels-last nets run their last layer on oneDNN; NCHW translation heads run on conv_narrow
        expected |= {"OneDnnConvNormAct", "OneDnnResBlock"}
    assert seen == expected


@pytest.mark.parametrize("layout", [None, False])
def test_convert_translation_full_size_against_float64(cpp, layout):
    """A real-width translation student at 256 x 256, both layouts, within 1e-4 of the float64 network:
    256 x 256 planes are where a plain float running sum in the statistics loses that much."""
    if layout is None and fast_mod.onednn_reason():
        pytest.skip(f"oneDNN fused convolutions do not run here: {fast_mod.onednn_reason()}")
    torch.manual_seed(0)
    net = derive(random_genotype(SearchSpace(get_config("translation")), random.Random(1))).eval()
    x = torch.rand(1, 3, 256, 256, generator=_gen(43))
    fast = convert(net, "cpp", channels_last=layout)
    with torch.no_grad():
        got = fast(x)
        want = net.double()(x.double())
    diff = (got.double() - want).abs().max().item()
    assert diff <= 1e-4, f"channels_last={layout}: max abs diff {diff} against float64"


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
    net = derive(random_genotype(space, random.Random(2))).eval()
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
    with pytest.raises(AgdError, match="channels_last needs the cpp backend"):
        convert(derive(random_genotype(SearchSpace(get_config("sr-tiny")), random.Random(0))), "reference",
                channels_last=True)
    b = available_backends()
    assert set(b) == {"cpp", "cuda", "reference"} and b["reference"] == ""
    with pytest.raises(AgdError, match="backend 'tvm'"):
        convert(torch.nn.Identity(), "tvm")
    if b["cuda"]:
        with pytest.raises(AgdError, match="unavailable"):
            convert(torch.nn.Identity(), "cuda")


# ----------------------------------------------------------------------------- CUDA (skips here)
def _setup_constant(name: str) -> list[str]:
    """A list literal assigned at module level in setup.py (read, not imported: importing runs setup())."""
    import ast
    from pathlib import Path

    tree = ast.parse((Path(__file__).resolve().parents[1] / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise KeyError(name)


def test_cuda_sources_compile(tmp_path):
    """Without a GPU the CUDA extension cannot be built (the CPU torch wheel has no CUDA headers), but its
    sources must still compile as setup.py builds them: the kernels with nvcc for the H100 (sm_90a) with
    setup.py's nvcc flags and the defines torch's CUDAExtension adds (a flag nvcc rejects, -g0, once broke
    the build on the GPU machine while a plain nvcc check passed), the binding against torch's headers."""
    import shutil
    import subprocess
    from pathlib import Path

    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, include_paths

    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc is not on PATH: the CUDA compile check needs the CUDA toolkit")
    csrc = Path(__file__).resolve().parents[1] / "csrc"
    for flags in (_setup_constant("NVCC_FLAGS"), _setup_constant("NVCC_DEBUG_FLAGS")):
        res = subprocess.run([nvcc, *COMMON_NVCC_FLAGS, *flags, "-gencode=arch=compute_90a,code=sm_90a", "-I", str(csrc),
                              "-DAGD_WITH_CUDA=1", "-c", str(csrc / "cuda" / "blocks_kernels.cu"),
                              "-o", str(tmp_path / "blocks_kernels.o")], capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, (flags, res.stderr[-3000:])
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler for the binding's syntax check")
    incs = [f"-I{p}" for p in [*include_paths(), str(csrc)]]
    res = subprocess.run([cxx, "-std=c++17", "-fsyntax-only", *incs, str(csrc / "cuda" / "bind_cuda.cpp")],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


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


# ----------------------------------------------------------------------------- block_gemm
GEMM_SHAPES = [(1, 1, 1), (7, 13, 5), (6, 128, 64), (13, 129, 65), (385, 130, 641), (40, 260, 2100)]


def _need_gemm(backend: str) -> None:
    if backend != "avx512":
        return
    try:
        torch.ops.agd.block_gemm(torch.ones(1, 1), torch.ones(1, 1), "avx512")
    except RuntimeError as e:
        pytest.skip(f"the AVX-512 GEMM cannot run here: {str(e).splitlines()[0]}")


@pytest.mark.parametrize("backend", ["auto", "blas", "loop", "avx512"])
@pytest.mark.parametrize("m,k,n", GEMM_SHAPES)
def test_block_gemm_float32_against_float64(cpp, backend, m, k, n):
    """Every GEMM the block kernels can run, on odd shapes that cross the packing blocks (rows 384,
    depth 128, columns 2048) and leave partial register tiles, with transposed operands passed as views."""
    _need_gemm(backend)
    a = torch.randn(m, k, generator=_gen(21))
    b = torch.randn(k, n, generator=_gen(22))
    want = a.double() @ b.double()
    tol = dict(rtol=1e-4, atol=1e-4 * k**0.5)
    a_ld = torch.zeros(m, k + 3)[:, :k].copy_(a)  # row-major with a leading dimension > k
    for a_in, b_in in ((a, b), (a.t().contiguous().t(), b), (a, b.t().contiguous().t()),
                       (a.t().contiguous().t(), b.t().contiguous().t()), (a_ld, b)):
        got = torch.ops.agd.block_gemm(a_in, b_in, backend)
        assert got.shape == (m, n) and got.is_contiguous()
        torch.testing.assert_close(got.double(), want, **tol)
    # a strided operand that is neither row- nor column-major is copied, not misread
    wide = torch.randn(m, 2 * k, generator=_gen(23))[:, ::2]
    torch.testing.assert_close(torch.ops.agd.block_gemm(wide, b, backend).double(), wide.double() @ b.double(), **tol)


@pytest.mark.parametrize("m,k,n", [(13, 300, 700), (500, 1000, 60)])
def test_block_gemm_threaded_splits(cpp, m, k, n):
    """Outside a parallel region with 2 threads the AVX-512 GEMM splits columns (wide C) or rows (narrow C)."""
    _need_gemm("avx512")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a, b = torch.randn(m, k, generator=_gen(24)), torch.randn(k, n, generator=_gen(25))
        got = torch.ops.agd.block_gemm(a, b, "avx512")
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(got.double(), a.double() @ b.double(), rtol=1e-4, atol=1e-4 * k**0.5)


def test_block_gemm_float64_fake_and_errors(cpp):
    from torch._subclasses.fake_tensor import FakeTensorMode

    a = torch.randn(9, 17, dtype=torch.float64, generator=_gen(26))
    b = torch.randn(17, 5, dtype=torch.float64, generator=_gen(27))
    torch.testing.assert_close(torch.ops.agd.block_gemm(a, b, "auto"), a @ b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.ops.agd.block_gemm(a.t().contiguous().t(), b, "auto"), a @ b, rtol=1e-12,
                               atol=1e-12)
    with FakeTensorMode():
        assert torch.ops.agd.block_gemm(torch.empty(3, 4), torch.empty(4, 6), "auto").shape == (3, 6)
    with pytest.raises(RuntimeError, match="unknown GEMM 'mkl'"):
        torch.ops.agd.block_gemm(torch.ones(2, 2), torch.ones(2, 2), "mkl")
    with pytest.raises(RuntimeError, match=r"needs \(m, k\) @ \(k, n\)"):
        torch.ops.agd.block_gemm(torch.ones(2, 3), torch.ones(2, 2), "auto")
    with pytest.raises(RuntimeError, match="float32 or float64"):
        torch.ops.agd.block_gemm(torch.ones(2, 2), torch.ones(2, 2, dtype=torch.float64), "auto")
    assert ops.block_gemm_name() in ("avx512", "blas", "loop")


@pytest.mark.parametrize("value,expect,info", [("blas", "blas", "BLAS sgemm_"), ("loop", "loop", "loop GEMM"),
                                               ("fast", "unknown GEMM 'fast'", "AGD_BLOCK_GEMM: unknown GEMM 'fast'")])
def test_block_gemm_env_switch(cpp, value, expect, info):
    """AGD_BLOCK_GEMM picks the block kernels' GEMM for the process; a bad value is named in the error."""
    import subprocess
    import sys

    code = "from agd import ops; print(ops.block_gemm_name()); print(ops.cpp_status()[1])"
    env = {**__import__("os").environ, "AGD_BLOCK_GEMM": value}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    first, second = res.stdout.splitlines()[:2]
    assert expect in first
    assert f"block GEMM: {info}" in second  # agd info's line for the C++ library says it too
