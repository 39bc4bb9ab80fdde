"""The fused mixed-layer epilogue (agd.ops.mixed_epilogue, agd.kernels.mixed_epilogue).

On CPU the Triton kernels run in Triton's interpreter: tests/conftest.py sets TRITON_INTERPRET=1 on a
machine without CUDA before any test module imports triton (it is read when a kernel is decorated, and when
triton.language's own helpers are, at its first import). Shapes are small and odd; a patched block size makes
the kernels loop over several blocks per plane. On a GPU the same tests run the compiled kernels. Every
result is compared with the plain PyTorch reference computed in float64.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ON_GPU = torch.cuda.is_available()
triton = pytest.importorskip("triton")

from agd import ops  # noqa: E402
from agd.arch import macs_extremes  # noqa: E402
from agd.io import AgdError  # noqa: E402
from agd.kernels.status import MIN_INTERPRETER_VERSION, _parse, triton_status  # noqa: E402
from agd.ops import EpilogueCandidate as Cand  # noqa: E402

DEVICE = "cuda" if ON_GPU else "cpu"
if DEVICE == "cpu" and _parse(triton.__version__) < MIN_INTERPRETER_VERSION:
    pytest.skip(f"triton {triton.__version__}'s interpreter is unreliable on CPU", allow_module_level=True)

from agd.kernels import mixed_epilogue as kmod  # noqa: E402

SHAPE = (2, 5, 7, 9) if DEVICE == "cpu" else (4, 64, 61, 67)


def test_the_kernels_run_here():
    """The kernels this file tests are the ones that run: compiled on a GPU; on a CPU interpreted, because
    tests/conftest.py set TRITON_INTERPRET=1 before triton was first imported (else every kernel call below
    would raise, not skip)."""
    st = triton_status(DEVICE)
    assert st.available, st.reason
    if DEVICE == "cpu":
        assert os.environ.get("TRITON_INTERPRET") == "1" and kmod.interpreted()
        assert "interpreter on CPU" in st.reason
    # CPU tensors still take the eager reference by default: the interpreter is for these tests only
    assert ops.mixed_epilogue_backend("cpu") == "eager"


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 16 elements on CPU, so every plane takes several loop iterations (odd tail included)."""
    if DEVICE == "cpu":
        monkeypatch.setattr(kmod, "_block", lambda hw, device: (16, 1))


def _t(*shape, dtype=torch.float64, seed=0, positive=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64) + 0.5 if positive else torch.randn(shape, generator=g, dtype=torch.float64)
    return x.to(dtype).to(DEVICE).requires_grad_()


def _case(name: str, dtype=torch.float64):
    """(weights, leaves (tensors the gradient is taken for), build(leaves) -> candidates, channels)."""
    n, c, h, w = SHAPE
    if name == "translation":  # conv1x1/conv3x3 (IN+ReLU), resblock/dwsblock (IN, + layer input, ReLU), identity
        x = _t(n, c, h, w, dtype=dtype, seed=1)
        zs = [_t(n, c, h, w, dtype=dtype, seed=10 + i) for i in range(4)]
        leaves = [x, *zs]

        def build(x, z0, z1, z2, z3):
            return [Cand(z0, None, True, None, None, "relu"), Cand(z1, None, True, None, None, "relu"),
                    Cand(z2, x, True, None, None, "relu"), Cand(z3, x, True, None, None, "relu"),
                    Cand(x, None, False, None, None, "none")]
    elif name == "translation-affine-narrower":  # output width below the layer input's; projected shortcut
        x = _t(n, c + 3, h, w, dtype=dtype, seed=2)
        zs = [_t(n, c, h, w, dtype=dtype, seed=20 + i) for i in range(3)]
        s = _t(n, c, h, w, dtype=dtype, seed=29)
        gam = _t(c + 3, dtype=torch.float32 if dtype != torch.float64 else dtype, seed=3, positive=True)
        bet = _t(c + 3, dtype=torch.float32 if dtype != torch.float64 else dtype, seed=4)
        leaves = [x, *zs, s, gam, bet]

        def build(x, z0, z1, z2, s, gam, bet):
            return [Cand(z0, None, True, gam, bet, "relu"), Cand(z1, s, True, gam, bet, "relu"),
                    Cand(z2, s, True, None, None, "relu"), Cand(x, None, False, None, None, "none")]
    elif name == "sr":  # no norm, LeakyReLU(0.2); identity zero-pads a narrower input
        x = _t(n, c - 2, h, w, dtype=dtype, seed=5)
        zs = [_t(n, c, h, w, dtype=dtype, seed=30 + i) for i in range(3)]
        s = _t(n, c + 4, h, w, dtype=dtype, seed=39)  # a wider shortcut used as a channel-prefix slice view
        leaves = [x, *zs, s]

        def build(x, z0, z1, z2, s):
            return [Cand(z0, None, False, None, None, "lrelu"), Cand(z1, s[:, :c], False, None, None, "lrelu"),
                    Cand(z2, None, False, None, None, "relu"), Cand(x, None, False, None, None, "none")]
    else:
        raise KeyError(name)
    k = len(build(*leaves))
    wts = torch.softmax(torch.randn(k, generator=torch.Generator().manual_seed(7), dtype=torch.float64), 0)
    wts = wts.to(torch.float32 if dtype != torch.float64 else dtype).to(DEVICE).requires_grad_()
    return wts, leaves, build, c


def _run(backend, wts, leaves, build, c, grad_seed=8):
    out = ops.mixed_epilogue(wts, build(*leaves), c, backend=backend)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64).to(out)
    grads = torch.autograd.grad(out, [wts, *leaves], g)
    return out, grads


def _as64(wts, leaves):
    return (wts.detach().double().requires_grad_(), [t.detach().double().requires_grad_() for t in leaves])


CASES = ("translation", "translation-affine-narrower", "sr")


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_float64_matches_reference(case, backend, small_blocks):
    wts, leaves, build, c = _case(case)
    ref_out, ref_grads = _run("eager", wts, leaves, build, c)
    out, grads = _run(backend, wts, leaves, build, c)
    assert out.shape == ref_out.shape and out.dtype == torch.float64
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    for i, (a, b) in enumerate(zip(grads, ref_grads)):
        assert a.shape == b.shape, i
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10, msg=lambda m: f"gradient {i}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", ["translation-affine-narrower", "sr"])
def test_low_precision_within_the_references_own_error(case, dtype):
    """The kernel's error against float64 stays within a small multiple of the eager reference's own error
    in the same dtype (inputs rounded to the dtype first, so both see the same data)."""
    wts, leaves, build, c = _case(case, dtype)
    w64, l64 = _as64(wts, leaves)
    exact_out, exact_grads = _run("eager", w64, l64, build, c)
    eager_out, eager_grads = _run("eager", wts, leaves, build, c)
    out, grads = _run("triton", wts, leaves, build, c)
    assert out.dtype == dtype
    for i, (a, e, x) in enumerate(zip([out, *grads], [eager_out, *eager_grads], [exact_out, *exact_grads])):
        ref_err = (e.double() - x).abs().max().item()
        err = (a.double() - x).abs().max().item()
        scale = x.abs().max().item()
        # Triton's interpreter truncates float32 -> bfloat16 (a GPU rounds to nearest): one more ulp there
        truncation = 2.0**-7 * scale if DEVICE == "cpu" and dtype == torch.bfloat16 else 0.0
        assert err <= 2.0 * ref_err + truncation + 1e-6 * scale + 1e-7, (i, err, ref_err)


def test_gradcheck_both_op_backends(small_blocks):
    n, c, h, w = 1, 2, 2, 3
    x = torch.randn(n, c, h, w, dtype=torch.float64, device=DEVICE, requires_grad=True)
    z = torch.randn(n, c, h, w, dtype=torch.float64, device=DEVICE, requires_grad=True)
    gam = torch.rand(c, dtype=torch.float64, device=DEVICE, requires_grad=True)
    bet = torch.randn(c, dtype=torch.float64, device=DEVICE, requires_grad=True)
    wts = torch.tensor([0.3, 0.7], dtype=torch.float64, device=DEVICE, requires_grad=True)
    for backend in ("reference", "triton"):
        def f(wts, x, z, gam, bet):
            return ops.mixed_epilogue(wts, [Cand(z, x, True, gam, bet, "lrelu"), Cand(x, None, False, None, None, "none")],
                                      c, backend=backend)
        assert torch.autograd.gradcheck(f, (wts, x, z, gam, bet))


def test_shared_input_gradients_accumulate(small_blocks):
    """One tensor as identity's z and as two shortcuts gets one gradient, the sum of its three roles."""
    wts, leaves, build, c = _case("translation")
    pack = ops._pack_candidates(build(*leaves), c)
    assert len(pack[0]) == 5  # x once, four conv outputs
    ref = _run("eager", wts, leaves, build, c)[1][1]
    got = _run("triton", wts, leaves, build, c)[1][1]
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)


def test_non_contiguous_planes_are_accepted():
    wts, leaves, build, c = _case("sr", torch.float32)
    cl = [t.detach().to(memory_format=torch.channels_last).requires_grad_() if t.dim() == 4 else t for t in leaves]
    a = _run("triton", wts, cl, build, c)
    b = _run("eager", wts, cl, build, c)
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-5)


def test_dispatch_and_errors(monkeypatch):
    wts, leaves, build, c = _case("sr", torch.float32)
    assert ops.mixed_epilogue_backend("cpu") == "eager"  # CPU tensors never take the kernel by default
    st = ops.mixed_epilogue_status("cpu")
    assert not st.available and "eager" in st.reason
    with pytest.raises(AgdError, match="backend 'fast'"):
        ops.mixed_epilogue(wts, build(*leaves), c, backend="fast")
    with pytest.raises(AgdError, match="weights"):
        ops.mixed_epilogue(wts[:2], build(*leaves), c)
    with pytest.raises(AgdError, match="activation 'tanh'"):
        ops.mixed_epilogue(wts[:1], [Cand(leaves[1], act="tanh")], c, backend="reference")
    with pytest.raises(ValueError, match=f"needs >= {c} channels"):
        ops.mixed_epilogue(wts[:1], [Cand(leaves[0], norm=True)], c, backend="reference")
    monkeypatch.setenv("AGD_DISABLE_TRITON", "1")
    assert ops.mixed_epilogue_backend("cuda") == "eager"
    if DEVICE == "cpu":
        with pytest.raises(AgdError, match="AGD_DISABLE_TRITON"):
            ops.mixed_epilogue(wts, build(*leaves), c, backend="triton")


def test_opcheck_fake_and_autograd_registration():
    """torch.library.opcheck: schema, fake tensor, autograd registration and AOT dispatch of the op."""
    x = torch.randn(2, 3, 4, 5, device=DEVICE)
    z = torch.randn(2, 3, 4, 5, device=DEVICE, requires_grad=True)
    gam, bet = torch.rand(3, device=DEVICE, requires_grad=True), torch.randn(3, device=DEVICE, requires_grad=True)
    wts = torch.tensor([0.4, 0.6], device=DEVICE, requires_grad=True)
    spec = [1, 0, 0, 1, 1, 0, -1, -1, 0, 0]
    torch.library.opcheck(torch.ops.agd.mixed_epilogue.default, (wts, [x, z], [gam, bet], spec, 3, 1e-5, 0.2, "reference"))


def test_single_graph_node_under_export_and_compile():
    class Layer(torch.nn.Module):
        def forward(self, w, z, x):
            return ops.mixed_epilogue(w, [Cand(z, x, True, None, None, "relu"), Cand(x)], 3, backend="reference")

    args = (torch.tensor([0.5, 0.5]), torch.randn(1, 3, 4, 4), torch.randn(1, 3, 4, 4))
    ep = torch.export.export(Layer(), args)
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert torch.ops.agd.mixed_epilogue.default in targets
    torch.testing.assert_close(ep.module()(*args), Layer()(*args))
    compiled = torch.compile(Layer(), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(*args), Layer()(*args))


# ------------------------------------------------------------------------------------------------
# the blocks' pre-epilogue outputs and the supernet
# ------------------------------------------------------------------------------------------------


def test_block_epilogue_parts_reproduce_forward():
    from agd.space.blocks import ConvNormAct, DwsBlock, Identity, ResBlock, Style

    torch.manual_seed(0)
    for style in (Style("instance", True, "relu", "reflect"), Style("none", False, "lrelu", "zeros")):
        blocks = [ConvNormAct(12, 12, 3, style), ResBlock(12, 12, style, projection=True),
                  DwsBlock(12, 12, style, projection=True), Identity()]
        x = torch.randn(2, 8, 6, 5)
        for b in blocks:
            for out in (4, 8, 12):
                p = b.epilogue_parts(x, out)
                y = p.z if p.z.shape[1] == out else (p.z[:, :out] if p.z.shape[1] > out else
                                                     torch.nn.functional.pad(p.z, (0, 0, 0, 0, 0, out - p.z.shape[1])))
                y = p.norm(y) if p.norm is not None else y
                y = p.act(y + p.shortcut if p.shortcut is not None else y)
                torch.testing.assert_close(y, b(x, out), msg=lambda m: f"{type(b).__name__} out={out}: {m}")


def _search_steps(preset: str, backend: str, steps: int = 1) -> tuple[list[torch.Tensor], str]:
    """A few alternating weight and arch steps (Adam) on a supernet, distilling toward a fixed target."""
    from agd.search.supernet import Supernet
    from agd.space import SearchSpace, get_config

    torch.manual_seed(0)
    sn = Supernet(SearchSpace(get_config(preset))).to(DEVICE)
    for m in sn.mixed_layers:
        m.epilogue_backend = backend
    h, w = sn.space.config.reference_size
    x = torch.rand(1, 3, h // 2, w // 2, device=DEVICE)
    with torch.no_grad():
        target = torch.rand_like(sn(x))
    opt_w = torch.optim.Adam(sn.weight_parameters(), lr=1e-3)
    opt_a = torch.optim.Adam(sn.arch_parameters(), lr=3e-2)
    first_grads = None
    for _ in range(steps):
        for opt in (opt_w, opt_a):
            opt_w.zero_grad()
            opt_a.zero_grad()
            loss = (sn(x) - target).abs().mean()
            loss.backward()
            if first_grads is None:
                first_grads = [a.grad.detach().clone() for a in sn.arch_parameters()]
            opt.step()
    return [a.detach().clone() for a in sn.arch_parameters()], sn.genotype().to_json(), first_grads


@pytest.fixture
def no_tf32():
    """Plain float32 convolutions on a GPU: cuDNN's default TF32 rounds conv inputs to 10 mantissa bits, which
    turns the epilogues' last-bit differences into 1e-3 ones (seen: alpha 4.4e-4 apart on an H200)."""
    from agd.numerics import exact_float32

    with exact_float32():
        yield


@pytest.mark.parametrize("preset", ["translation-tiny", "sr-tiny"])
def test_supernet_search_steps_kernel_vs_reference(preset, monkeypatch, no_tf32):
    """Acceptance at the supernet level: a few weight + arch steps with the fused kernels (interpreted on
    CPU) and with the eager reference give the same alpha/beta within 1e-4 and the same genotype."""
    calls = []
    real = kmod.epilogue_forward
    monkeypatch.setattr(kmod, "epilogue_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    arch_k, geno_k, grads_k = _search_steps(preset, "triton")
    assert calls, "the fused kernel was not used"
    arch_r, geno_r, grads_r = _search_steps(preset, "eager")
    top = max(g.abs().max().item() for g in grads_r)
    for gk, gr in zip(grads_k, grads_r):  # the arch gradients agree to float32 rounding at their scale
        torch.testing.assert_close(gk, gr, rtol=1e-3, atol=1e-5 * top)
    # Adam's first steps move each alpha by about lr * g / (|g| + 1e-8): where g is rounding noise (translation-
    # tiny has alphas with |g| ~ 6e-8, sums of terms ~1e-3 that cancel) that ratio is noise too, so no two
    # float32 implementations agree on it (3.4e-4 apart on an H200; 2e-5 between two eager formulas on a CPU):
    # compare the alphas whose gradient is resolvable
    compared = 0
    for a, b, g in zip(arch_k, arch_r, grads_r):
        if g.abs().max().item() > 1e-3 * top:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
            compared += 1
    assert compared >= len(arch_r) // 2
    assert geno_k == geno_r
    moved = max(a.abs().max().item() for a in arch_r)
    assert moved > 1e-3  # the arch steps did change alpha/beta


def _engine_search(tmp_path: Path, backend: str):
    """A tiny search through agd.search (pretraining, alternating steps, derivation) on sr-tiny."""
    from agd.data.images import write_image
    from agd.runs import RunDir
    from agd.search import Search, get_search_config, macs_budget
    from agd.search import data as D
    from agd.space import SearchSpace, get_config
    from agd.teachers import RRDBNet
    from agd.teachers.registry import Teacher, TeacherInfo

    torch.manual_seed(0)
    module = RRDBNet(nf=8, nb=1, gc=4, scale=4).eval().requires_grad_(False)
    teacher = Teacher(module, TeacherInfo("tiny-sr", "sr", 4, "", ""), "tiny-sr:test")
    img_dir = tmp_path / "img"
    img_dir.mkdir(exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for i in range(3):  # the search's three sets: weights, architecture, selection
        write_image(img_dir / f"i{i}.png", torch.nn.functional.interpolate(
            torch.rand(1, 3, 5, 5, generator=g), size=(64, 64), mode="bilinear")[0])
    cfg = get_search_config("tiny", space="sr-tiny", pretrain_steps=1, search_steps=3, batch=1, eval_every=3)
    items = D.prepare(D.load_images(img_dir), teacher, cache_dir=tmp_path / "cache", max_side=None, device="cpu")
    space = SearchSpace(get_config("sr-tiny"))
    (mn, _), (mx, _) = macs_extremes(space)
    search = Search(cfg, teacher, items, macs_budget(space, macs=(mn + mx) / 2),
                    lambda s, t, gt=None: ((s - t).abs().mean(), {}), RunDir.open(tmp_path / backend, resume=False),
                    device=DEVICE)
    for m in search.supernet.mixed_layers:
        m.epilogue_backend = backend
    result = search.run_loop()
    return [a.detach().clone() for a in search.supernet.arch_parameters()], result.genotype.to_json()


def test_search_engine_kernel_vs_reference(tmp_path, monkeypatch, no_tf32):
    """Acceptance: a search (agd.search, tiny preset shortened) with the fused kernels (interpreted on CPU)
    and one with the eager reference, same seed: same derived genotype, alpha/beta within 1e-4."""
    calls = []
    real = kmod.epilogue_forward
    monkeypatch.setattr(kmod, "epilogue_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    arch_k, geno_k = _engine_search(tmp_path, "triton")
    assert calls, "the fused kernel was not used"
    arch_r, geno_r = _engine_search(tmp_path, "eager")
    for a, b in zip(arch_k, arch_r):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    assert geno_k == geno_r
