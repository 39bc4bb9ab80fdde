"""Benchmarks of agd.ops.resample: the C++ CPU kernel against the PyTorch reference, with
``F.interpolate(mode="bicubic", antialias=True)`` as an outside yardstick. That yardstick is not
MATLAB-exact: it handles borders differently (no mirroring), so on this image it differs from
MATLAB's result within 2 output pixels of the border for the x4 downscale and 6 for the x4 upscale
(by up to 0.05 on data in [0, 1]) and agrees to float64 rounding elsewhere.

Workload: a 1x3x1024x1024 float32 image resized the way MATLAB's imresize does it, one resample per
spatial dim (H then W): x4 downscale (antialiased bicubic, 16 taps) and x4 upscale (bicubic, 4
taps). pytest runs these once as plain tests (``--benchmark-disable`` in pyproject); measure with
``pytest tests/benchmarks --benchmark-enable --benchmark-only``. Figures go to BENCHMARKS.md.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from agd import ops

SIZE = 1024


def _cubic(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic kernel with a = -0.5 (MATLAB's 'bicubic')."""
    a = x.abs()
    a2, a3 = a * a, a * a * a
    return (1.5 * a3 - 2.5 * a2 + 1) * (a <= 1) + (-0.5 * a3 + 2.5 * a2 - 4 * a + 2) * ((a > 1) & (a <= 2))


def matlab_bicubic_table(n_in: int, n_out: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(idx int64, w float64) of MATLAB imresize's bicubic contributions for n_in -> n_out:
    antialiased (kernel stretched by 1/scale) when downscaling, symmetric padding at the borders,
    all-zero tap columns dropped."""
    scale = n_out / n_in
    width = 4.0 / scale if scale < 1 else 4.0
    u = torch.arange(1, n_out + 1, dtype=torch.float64) / scale + 0.5 * (1 - 1 / scale)
    left = torch.floor(u - width / 2)
    pos = left[:, None] + torch.arange(math.ceil(width) + 2, dtype=torch.float64)
    dist = u[:, None] - pos
    w = scale * _cubic(scale * dist) if scale < 1 else _cubic(dist)
    w = w / w.sum(1, keepdim=True)
    mirror = torch.cat([torch.arange(n_in), torch.arange(n_in - 1, -1, -1)])
    idx = mirror[torch.remainder(pos.long() - 1, 2 * n_in)]
    keep = (w != 0).any(0)
    return idx[:, keep].contiguous(), w[:, keep].contiguous()


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


CASES = {
    "down x4": SIZE // 4,
    "up x4": SIZE * 4,
}


def _tables(n_out: int):
    idx, w = matlab_bicubic_table(SIZE, n_out)
    return idx, w.float()


def _resize(fn, x, idx, w):
    return fn(fn(x, 2, idx, w), 3, idx, w)


def _cpp_resample(x, dim, idx, w):
    return torch.ops.agd.resample(x, dim, idx, w)


def _taps64(x: torch.Tensor, dim: int, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The resample by its definition, in float64: output i along ``dim`` is sum_k x[idx[i, k]] * w[i, k]."""
    x = x.double().movedim(dim, -1)
    return (x[..., idx] * w.double()).sum(-1).movedim(-1, dim)


def _expected_rows(image: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, rows: int = 64) -> torch.Tensor:
    """The first ``rows`` output rows of the H-then-W resize, from :func:`_taps64`."""
    return _taps64(_taps64(image, 2, idx[:rows], w[:rows]), 3, idx, w)


def test_tables_have_the_expected_taps():
    assert _tables(CASES["down x4"])[0].shape == (256, 16)
    assert _tables(CASES["up x4"])[0].shape == (4096, 4)


@pytest.mark.parametrize("case", list(CASES))
def test_bench_resample_cpp(benchmark, image, case):
    ok, why = ops.cpp_status()
    if not ok:
        pytest.skip(f"C++ ops unavailable: {why}")
    n_out = CASES[case]
    idx, w = _tables(n_out)
    benchmark.group = f"resample {case}, 1x3x{SIZE}x{SIZE} float32"
    out = _resize(_cpp_resample, image, idx, w)
    assert out.shape == (1, 3, n_out, n_out)
    # agreement with the definition on the first 64 output rows (cheap even for the upscale)
    torch.testing.assert_close(out[:, :, :64].double(), _expected_rows(image, idx, w), rtol=1e-5, atol=1e-5)
    benchmark(_resize, _cpp_resample, image, idx, w)


@pytest.mark.parametrize("case", list(CASES))
def test_bench_resample_reference(benchmark, image, case):
    n_out = CASES[case]
    idx, w = _tables(n_out)
    benchmark.group = f"resample {case}, 1x3x{SIZE}x{SIZE} float32"
    out = _resize(ops.resample_reference, image, idx, w)
    assert out.shape == (1, 3, n_out, n_out)
    torch.testing.assert_close(out[:, :, :64].double(), _expected_rows(image, idx, w), rtol=1e-5, atol=1e-5)
    benchmark(_resize, ops.resample_reference, image, idx, w)


@pytest.mark.parametrize("case", list(CASES))
def test_bench_interpolate_bicubic_antialias(benchmark, image, case):
    n_out = CASES[case]
    benchmark.group = f"resample {case}, 1x3x{SIZE}x{SIZE} float32"
    kw = {"size": (n_out, n_out), "mode": "bicubic", "antialias": True, "align_corners": False}
    out = F.interpolate(image, **kw)
    assert out.shape == (1, 3, n_out, n_out)
    # the yardstick is MATLAB's resize away from the borders (module docstring: 2 pixels down, 6 up)
    b = 2 if n_out < SIZE else 6
    want = _expected_rows(image, *_tables(n_out))
    torch.testing.assert_close(out[:, :, b:64, b:-b].double(), want[:, :, b:, b:-b], rtol=1e-4, atol=1e-4)
    benchmark(F.interpolate, image, **kw)


@pytest.mark.parametrize("case", list(CASES))
def test_bench_first_touch_floor(benchmark, case):
    """Allocating and writing a fresh output of the resized size: a floor for any op that returns
    a new tensor (for the 201 MB upscale output it is mostly page faults)."""
    n_out = CASES[case]
    benchmark.group = f"resample {case}, 1x3x{SIZE}x{SIZE} float32"
    out = benchmark(lambda: torch.empty(1, 3, n_out, n_out).fill_(0.0))
    assert out.shape == (1, 3, n_out, n_out)


def test_tables_reproduce_matlab_imresize_on_set5(shared_data):
    """The benchmark's tables are MATLAB's: Set5 LR x4 (made by MATLAB imresize on uint8) is
    reproduced bit-exactly when, like MATLAB on uint8, each pass is rounded half away from zero
    and clamped to [0, 255]."""
    import numpy as np
    from PIL import Image

    def to_uint8_grid(t: torch.Tensor) -> torch.Tensor:
        return torch.floor(t.clamp(0, 255) + 0.5)

    for name in ["baby", "bird", "butterfly", "head", "woman"]:
        hr = np.asarray(Image.open(shared_data / "sr/Set5/HR" / f"{name}.png").convert("RGB"))
        lr = np.asarray(Image.open(shared_data / "sr/Set5/LR_bicubic_x4" / f"{name}x4.bmp").convert("RGB"))
        h, w = hr.shape[0] // 4 * 4, hr.shape[1] // 4 * 4
        x = torch.from_numpy(hr[:h, :w].astype(np.float64)).permute(2, 0, 1)
        ih, wh = matlab_bicubic_table(h, h // 4)
        iw, ww = matlab_bicubic_table(w, w // 4)
        y = to_uint8_grid(ops.resample(to_uint8_grid(ops.resample(x, 1, ih, wh)), 2, iw, ww))
        assert torch.equal(y.permute(1, 2, 0), torch.from_numpy(lr.astype(np.float64))), name
