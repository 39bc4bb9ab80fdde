"""agd.ops: the resample op (schema, fake, reference, C++ CPU kernel, autograd) and the lazy loader.

Numbers are checked against an independent float64 reference (a dense (out, L) interpolation
matrix applied with tensordot). Tests of the C++ kernel skip, with the reason from cpp_status(),
when the library is not built or is disabled.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from agd import ops
from agd.ops import library, resampling


@pytest.fixture
def cpp() -> None:
    ok, why = ops.cpp_status()
    if not ok:
        pytest.skip(f"C++ ops unavailable: {why}")


def _table(n_in: int, n_out: int, taps: int, seed: int, dtype=torch.float64):
    """An index table like a resize's (centred windows, clamped at the borders) with random signed
    weights: downscale when n_out < n_in, upscale when n_out > n_in."""
    gen = torch.Generator().manual_seed(seed)
    centers = (torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5
    left = torch.floor(centers).long() - (taps - 1) // 2
    idx = (left[:, None] + torch.arange(taps)).clamp(0, n_in - 1)
    w = torch.randn(n_out, taps, generator=gen, dtype=torch.float64) / taps**0.5
    return idx.contiguous(), w.to(dtype)


def _dense64(x: torch.Tensor, dim: int, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Independent float64 reference: out = A @ x along dim, A[j, idx[j, t]] += w[j, t]."""
    d = dim % x.dim()
    a = torch.zeros(idx.shape[0], x.shape[d], dtype=torch.float64)
    rows = torch.arange(idx.shape[0])[:, None].expand_as(idx)
    a.index_put_((rows.reshape(-1), idx.reshape(-1)), w.double().reshape(-1), accumulate=True)
    out = torch.tensordot(a, x.double().movedim(d, 0), dims=([1], [0]))
    return out.movedim(0, d)


def _rand(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


_TOL = {torch.float64: (1e-12, 1e-12), torch.float32: (2e-5, 2e-5)}

# (dim, n_out, taps): dims 0..3 and negative, downscale and upscale tables, taps 1..8
_CASES = [
    (0, 2, 1),
    (1, 5, 2),
    (2, 5, 8),  # 17 -> 5
    (2, 40, 4),  # 17 -> 40
    (3, 6, 7),  # 23 -> 6
    (3, 70, 3),  # 23 -> 70 (last dim: the packed scheme)
    (-1, 11, 5),
    (-2, 9, 6),
    (-4, 3, 2),
]


@pytest.mark.parametrize("dim,n_out,taps", _CASES)
def test_reference_matches_dense_float64(dim, n_out, taps):
    x = _rand(1, 3, 17, 23, dtype=torch.float64)
    idx, w = _table(x.shape[dim], n_out, taps, seed=taps)
    out = ops.resample_reference(x, dim, idx, w)
    expect_shape = list(x.shape)
    expect_shape[dim] = n_out
    assert list(out.shape) == expect_shape and out.is_contiguous()
    torch.testing.assert_close(out, _dense64(x, dim, idx, w), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dim,n_out,taps", _CASES)
def test_cpp_matches_dense(cpp, dtype, dim, n_out, taps):
    x = _rand(1, 3, 17, 23, dtype=dtype, seed=1)
    idx, w = _table(x.shape[dim], n_out, taps, seed=taps, dtype=dtype)
    assert ops.resample_backend(x) == "cpp"
    out = ops.resample(x, dim, idx, w)
    assert out.dtype == dtype and out.is_contiguous()
    rtol, atol = _TOL[dtype]
    torch.testing.assert_close(out.double(), _dense64(x, dim, idx, w), rtol=rtol, atol=atol)
    torch.testing.assert_close(out, ops.resample_reference(x, dim, idx, w), rtol=rtol, atol=atol)


@pytest.mark.parametrize(
    "shape,dim,n_out,taps",
    [
        ((37, 19, 3), 1, 300, 4),  # inner 3: packed, 10 slices a block, last block partial, 3 tiles
        ((33, 29), -1, 8, 17),  # inner 1: one full block and one partial
        ((2, 29), 1, 13, 5),  # too few slices for a block: direct with inner 1
        ((5, 7, 600), 1, 4, 9),  # inner 600: direct, chunked rows
        ((31, 2, 9), 1, 3, 2),  # inner 9 (float32: packed, 3 slices a lane)
        ((1,), 0, 4, 3),  # 1-D, L = 1
        ((4, 1, 6), 1, 5, 1),
        ((32, 131073), -1, 6, 3),  # L too long for the packing buffer: direct with inner 1
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpp_schemes_and_edges(cpp, shape, dim, n_out, taps, dtype):
    x = _rand(*shape, dtype=dtype, seed=2)
    idx, w = _table(x.shape[dim], n_out, taps, seed=3, dtype=dtype)
    out = torch.ops.agd.resample(x, dim, idx, w)
    rtol, atol = _TOL[dtype]
    torch.testing.assert_close(out.double(), _dense64(x, dim, idx, w), rtol=rtol, atol=atol)


@pytest.mark.parametrize("impl", ["reference", "cpp"])
def test_zero_taps_and_empty(request, impl):
    if impl == "cpp":
        request.getfixturevalue("cpp")
    f = ops.resample_reference if impl == "reference" else torch.ops.agd.resample
    x = _rand(2, 5, 3)
    idx0 = torch.zeros(4, 0, dtype=torch.long)
    out = f(x, 1, idx0, torch.zeros(4, 0))
    assert out.shape == (2, 4, 3) and not out.any()
    idx, w = _table(5, 4, 2, seed=0, dtype=torch.float32)
    assert f(x[:0], 1, idx, w).shape == (0, 4, 3)
    assert f(x, 1, idx[:0], w[:0]).shape == (2, 0, 3)


@pytest.mark.parametrize("impl", ["reference", "cpp"])
def test_non_contiguous_inputs(request, impl):
    if impl == "cpp":
        request.getfixturevalue("cpp")
    f = ops.resample_reference if impl == "reference" else torch.ops.agd.resample
    base = _rand(2, 3, 19, 26)
    cases = [
        base.transpose(2, 3),  # (2, 3, 26, 19), strided
        base[:, :, 1::2, ::3],  # sliced with steps
        base.contiguous(memory_format=torch.channels_last),
        base.permute(3, 1, 0, 2),
    ]
    for x in cases:
        assert not x.is_contiguous()
        for dim in (2, 3, 0):
            idx, w = _table(x.shape[dim], 7, 5, seed=dim, dtype=torch.float32)
            noncontig_idx = torch.stack([idx, idx], -1)[..., 0]  # same values, strided
            out = f(x, dim, noncontig_idx, w.t().contiguous().t())
            assert out.is_contiguous()
            torch.testing.assert_close(out.double(), _dense64(x, dim, idx, w), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("impl", ["reference", "cpp"])
def test_half_precision_computes_in_float32(request, impl, dtype):
    if impl == "cpp":
        request.getfixturevalue("cpp")
    f = ops.resample_reference if impl == "reference" else torch.ops.agd.resample
    x = _rand(2, 3, 17, 23, dtype=dtype)
    idx, w = _table(23, 9, 6, seed=4, dtype=dtype)
    out = f(x, -1, idx, w)
    assert out.dtype == dtype
    # computed in float32 from the rounded inputs, rounded once: within one rounding of the exact value
    exact = _dense64(x, -1, idx, w)
    torch.testing.assert_close(out, exact.to(dtype), rtol=torch.finfo(dtype).eps, atol=torch.finfo(dtype).eps)


def _bad_calls(x, idx, w):
    """(args, exception type, message fragment) for every rejected input."""
    bad_idx = idx.clone()
    bad_idx[2, 1] = 17
    neg_idx = idx.clone()
    neg_idx[0, 0] = -1
    return [
        ((x, 2, bad_idx, w), IndexError, r"idx values must lie in \[0, 17\).*found 17"),
        ((x, 2, neg_idx, w), IndexError, r"idx values must lie in \[0, 17\).*found -1"),
        ((x, 4, idx, w), IndexError, r"dim 4 is out of range for x with 4 dimensions"),
        ((x, -5, idx, w), IndexError, r"dim -5 is out of range"),
        ((x, 2, idx.int(), w), TypeError, r"idx must be int64"),
        ((x, 2, idx[0], w[0]), ValueError, r"idx must be 2-D"),
        ((x, 2, idx, w.double()), TypeError, r"w must have x's dtype"),
        ((x, 2, idx, w[:, :2]), ValueError, r"w must have idx's shape"),
        ((x.long(), 2, idx, w.long()), TypeError, r"x must be a floating-point tensor"),
    ]


@pytest.mark.parametrize("impl", ["reference", "fake", "cpp"])
def test_clear_errors(request, impl):
    if impl == "cpp":
        request.getfixturevalue("cpp")
    x = _rand(1, 3, 17, 23)
    idx, w = _table(17, 5, 3, seed=0, dtype=torch.float32)
    for args, exc, msg in _bad_calls(x, idx, w):
        if impl == "fake" and "idx values" in msg:
            continue  # values are not known to a fake tensor
        if impl == "reference":
            call = lambda a=args: ops.resample_reference(*a)  # noqa: E731
        elif impl == "cpp":
            call = lambda a=args: torch.ops.agd.resample(*a)  # noqa: E731
        else:
            call = lambda a=args: torch.ops.agd.resample(*[t.to("meta") if torch.is_tensor(t) else t for t in a])  # noqa: E731
        with pytest.raises(exc, match=msg):
            call()
        assert issubclass(exc, (IndexError, TypeError, ValueError))


@pytest.mark.parametrize("dim,taps", [(2, 3), (-1, 5), (0, 2)])
def test_gradcheck_float64(dim, taps):
    x = _rand(2, 3, 5, 6, dtype=torch.float64).requires_grad_()
    idx, w = _table(x.shape[dim], 5, taps, seed=5)
    idx[0, 0] = idx[1, 0]  # a repeated source position: gradients must add up
    w.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: ops.resample(a, dim, idx, b), (x, w))
    # the registered backward agrees with plain autograd through the reference
    g = _rand(*ops.resample(x, dim, idx, w).shape, dtype=torch.float64, seed=6)
    got = torch.autograd.grad(ops.resample(x, dim, idx, w), (x, w), g)
    want = torch.autograd.grad(ops.resample_reference(x, dim, idx, w), (x, w), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_opcheck():
    x = _rand(1, 2, 9, 11).requires_grad_()
    idx, w = _table(11, 4, 3, seed=7, dtype=torch.float32)
    torch.library.opcheck(torch.ops.agd.resample.default, (x, -1, idx, w.requires_grad_()))


def test_fake_and_meta_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    idx, w = _table(17, 5, 3, seed=0, dtype=torch.float32)
    with FakeTensorMode() as mode:
        x = mode.from_tensor(_rand(1, 3, 17, 23))
        out = ops.resample(x, 2, mode.from_tensor(idx), mode.from_tensor(w))
        assert out.shape == (1, 3, 5, 23) and out.dtype == torch.float32 and out.is_contiguous()
    out = torch.ops.agd.resample(torch.empty(2, 17, device="meta"), 1, idx.to("meta"), w.to("meta"))
    assert out.shape == (2, 5) and out.device.type == "meta"


class _Resize(torch.nn.Module):
    """Two resample passes, as an image resize does (H then W)."""

    def __init__(self, h: tuple[torch.Tensor, torch.Tensor], w: tuple[torch.Tensor, torch.Tensor]):
        super().__init__()
        self.register_buffer("ih", h[0])
        self.register_buffer("wh", h[1])
        self.register_buffer("iw", w[0])
        self.register_buffer("ww", w[1])

    def forward(self, x):
        return ops.resample(ops.resample(x, 2, self.ih, self.wh), 3, self.iw, self.ww)


def _resize_module():
    return _Resize(_table(17, 6, 5, seed=8, dtype=torch.float32), _table(23, 47, 4, seed=9, dtype=torch.float32))


def _op_nodes(graph):
    nodes = [n for n in graph.nodes if n.op == "call_function"]
    # dynamo records the overload packet, export the overload
    ours = (torch.ops.agd.resample, torch.ops.agd.resample.default)
    return [n for n in nodes if n.target in ours], nodes


def test_export_keeps_one_node_per_call():
    mod, x = _resize_module(), _rand(1, 3, 17, 23)
    ep = torch.export.export(mod, (x,))
    ours, calls = _op_nodes(ep.graph)
    assert len(ours) == 2 and len(calls) == 2, ep.graph
    assert ours[-1].meta["val"].shape == (1, 3, 6, 47)
    torch.testing.assert_close(ep.module()(x), mod(x))


def test_compile_fullgraph():
    mod, x = _resize_module(), _rand(1, 3, 17, 23)
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    out = torch.compile(mod, fullgraph=True, backend=capture)(x)
    assert len(graphs) == 1
    ours, calls = _op_nodes(graphs[0].graph)
    assert len(ours) == 2 and len(calls) == 2, graphs[0].graph
    torch.testing.assert_close(out, mod(x))
    torch._dynamo.reset()
    out = torch.compile(mod, fullgraph=True)(x)  # inductor: the op runs as an extern kernel
    assert out.shape == (1, 3, 6, 47)
    torch.testing.assert_close(out, mod(x))
    torch._dynamo.reset()


def test_cpp_status_reports_a_reason_either_way():
    ok, why = ops.cpp_status()
    assert isinstance(ok, bool) and why.strip() and "\n" not in why
    if ok:
        assert why.startswith("agd/_C") and "threads" in why and "built against torch" in why
        assert "-fopenmp" in why  # the AGD_BUILD_FLAGS macro reached the library
    else:
        assert why.startswith(("disabled by", "agd._C is not built", "failed to load"))


def test_disable_env_is_honoured_after_loading(monkeypatch):
    x = _rand(1, 3, 17, 23)
    idx, w = _table(23, 8, 4, seed=10, dtype=torch.float32)
    ops.cpp_status()  # load the library if it can be
    monkeypatch.setenv("AGD_DISABLE_CPP", "1")
    assert ops.cpp_status() == (False, "disabled by AGD_DISABLE_CPP=1")
    assert ops.resample_backend(x) == "reference"
    calls = []
    real = ops.resample_reference
    monkeypatch.setattr(resampling, "resample_reference", lambda *a: calls.append(1) or real(*a))
    out = ops.resample(x, -1, idx, w)
    # with the C++ kernel registered, the reference must be called directly; without it, the op's
    # only CPU kernel is the (composite) reference
    assert len(calls) == (1 if ops.has_kernel("resample") else 0)
    torch.testing.assert_close(out.double(), _dense64(x, -1, idx, w), rtol=2e-5, atol=2e-5)
    monkeypatch.setenv("AGD_DISABLE_CPP", "0")
    assert ops.cpp_status()[1] != "disabled by AGD_DISABLE_CPP=1"


def test_missing_library_falls_back(monkeypatch, tmp_path):
    monkeypatch.delenv("AGD_DISABLE_CPP", raising=False)
    monkeypatch.setattr(library, "CPU_LIBRARY", ops.NativeLibrary(tmp_path / "_C.so"))
    assert ops.cpp_status() == (False, ops.NOT_BUILT_REASON)
    assert ops.NOT_BUILT_REASON == "agd._C is not built (reinstall without AGD_SKIP_CPP=1; needs a C++ compiler)"
    x = _rand(2, 3, 11, 13)
    assert ops.resample_backend(x) == "reference"
    idx, w = _table(11, 4, 3, seed=11, dtype=torch.float32)
    torch.testing.assert_close(ops.resample(x, 2, idx, w).double(), _dense64(x, 2, idx, w), rtol=2e-5, atol=2e-5)


def test_broken_library_reports_and_is_not_retried(monkeypatch, tmp_path):
    monkeypatch.delenv("AGD_DISABLE_CPP", raising=False)
    broken = tmp_path / "_C.so"
    broken.write_bytes(b"not a shared library")
    lib = ops.NativeLibrary(broken)
    monkeypatch.setattr(library, "CPU_LIBRARY", lib)
    ok, why = ops.cpp_status()
    assert not ok and why.startswith(f"failed to load {broken}: ") and len(why) > len(f"failed to load {broken}: ")
    broken.unlink()
    assert ops.cpp_status() == (False, why)  # the first failure is remembered
    x = _rand(3, 8)
    idx, w = _table(8, 3, 2, seed=12, dtype=torch.float32)
    assert ops.resample(x, 1, idx, w).shape == (3, 3)


def test_find_cpu_library(tmp_path):
    assert ops.find_cpu_library(tmp_path) is None
    (tmp_path / "_C_cuda.so").write_bytes(b"")
    (tmp_path / "_C.txt").write_bytes(b"")
    assert ops.find_cpu_library(tmp_path) is None
    (tmp_path / "_C.abi3.so").write_bytes(b"")
    assert ops.find_cpu_library(tmp_path) == tmp_path / "_C.abi3.so"


def test_without_the_library_in_a_fresh_process(tmp_path):
    """What an AGD_SKIP_CPP=1 install sees: nothing loads at import, the op still runs, exports as
    one node, and cpp_status says why."""
    code = textwrap.dedent(
        f"""
        import torch
        import agd.ops as ops
        assert not ops.has_kernel("resample"), "the C++ library was loaded at import time"
        ops.library.CPU_LIBRARY = ops.NativeLibrary({str(tmp_path / "_C.so")!r})
        x = torch.arange(2 * 3 * 5, dtype=torch.float32).reshape(2, 3, 5)
        idx = torch.tensor([[0, 1], [3, 4]])
        w = torch.tensor([[0.5, 0.5], [0.25, 0.75]])
        out = ops.resample(x, -1, idx, w)
        assert torch.allclose(out, w[:, 0] * x[..., [0, 3]] + w[:, 1] * x[..., [1, 4]])
        assert not ops.has_kernel("resample")

        class M(torch.nn.Module):
            def forward(self, x):
                return ops.resample(x, -1, idx, w)

        ep = torch.export.export(M(), (x,))
        print(sum(n.target is torch.ops.agd.resample.default for n in ep.graph.nodes))
        print(ops.cpp_status()[1])
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "AGD_DISABLE_CPP"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["1", ops.NOT_BUILT_REASON]


def test_disabled_in_a_fresh_process_never_loads():
    code = "import torch, agd.ops as o; x = torch.ones(2, 4); print(o.resample(x, 1, torch.tensor([[0, 3]]), torch.ones(1, 2)).tolist(), o.has_kernel('resample'), o.cpp_status())"
    env = {**os.environ, "AGD_DISABLE_CPP": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[[2.0], [2.0]] False (False, 'disabled by AGD_DISABLE_CPP=1')"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch")
def test_cuda_uses_the_reference():
    x = _rand(1, 3, 17, 23)
    idx, w = _table(23, 9, 4, seed=13, dtype=torch.float32)
    xc = x.to("cuda")
    assert ops.resample_backend(xc) == "reference"
    out = ops.resample(xc, -1, idx.to("cuda"), w.to("cuda"))
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu().double(), _dense64(x, -1, idx, w), rtol=2e-5, atol=2e-5)
