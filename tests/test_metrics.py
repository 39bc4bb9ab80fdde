import math

import numpy as np
import pytest
import torch

from agd.data.images import list_images, read_image
from agd.data.resize import bicubic_degrade, imresize
from agd.io import AgdError
from agd.metrics import psnr, psnr_per_image, rgb_to_y, ssim


def _ssim_numpy(a: np.ndarray, b: np.ndarray) -> float:
    """Independent SSIM in numpy/scipy: separable Gaussian, valid region (the MATLAB reference)."""
    from scipy.signal import convolve2d

    x = np.arange(11) - 5.0
    g = np.exp(-(x**2) / (2 * 1.5**2))
    g /= g.sum()
    w = np.outer(g, g)

    def f(z):
        return convolve2d(z, w, mode="valid")

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu1, mu2 = f(a), f(b)
    s11, s22, s12 = f(a * a) - mu1**2, f(b * b) - mu2**2, f(a * b) - mu1 * mu2
    return float((((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s11 + s22 + c2))).mean())


def test_y_channel_matches_matlab_formula():
    img = torch.rand(3, 5, 7, dtype=torch.float64)
    y = rgb_to_y(img)[0]
    ref = 16 + 65.481 * img[0] + 128.553 * img[1] + 24.966 * img[2]
    assert torch.allclose(y, ref)
    assert rgb_to_y(torch.ones(3, 1, 1, dtype=torch.float64)).item() == pytest.approx(235.0)
    assert rgb_to_y(torch.zeros(3, 1, 1, dtype=torch.float64)).item() == pytest.approx(16.0)


def test_psnr_by_hand_and_conventions():
    a = torch.full((3, 9, 13), 100 / 255)
    b = torch.full((3, 9, 13), 110 / 255)
    # RGB: every value differs by 10 levels
    assert psnr(a, b, y_channel=False) == pytest.approx(10 * math.log10(255**2 / 100))
    # Y: differs by 10 * (65.481 + 128.553 + 24.966) / 255
    d = 10 * 219.0 / 255
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / d**2))
    assert psnr(a, a) == math.inf
    # border crop ignores the border
    c = a.clone()
    c[:, 0, :] = 0
    assert psnr(a, c, crop=1) == math.inf and psnr(a, c) < 40
    # quantisation: sub-level noise vanishes after 8-bit rounding
    assert psnr(a, a + 0.1 / 255) == math.inf
    assert psnr(a, a + 0.1 / 255, quantize=False) < math.inf


def test_batch_mean_of_per_image_values():
    a, b = torch.rand(3, 3, 16, 16), torch.rand(3, 3, 16, 16)
    vals = psnr_per_image(a, b, crop=2)
    assert psnr(a, b, crop=2) == pytest.approx(sum(vals) / 3)
    assert vals[1] == pytest.approx(psnr(a[1], b[1], crop=2))


@pytest.mark.parametrize("y_channel", [True, False])
def test_ssim_matches_independent_numpy(y_channel):
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 29, 37, generator=g, dtype=torch.float64)
    b = (a + 0.1 * torch.randn(3, 29, 37, generator=g, dtype=torch.float64)).clamp(0, 1)
    q = lambda t: ((t.clamp(0, 1) * 255).round() / 255).numpy()  # noqa: E731
    qa, qb = q(a), q(b)
    if y_channel:
        ya = 16 + 65.481 * qa[0] + 128.553 * qa[1] + 24.966 * qa[2]
        yb = 16 + 65.481 * qb[0] + 128.553 * qb[1] + 24.966 * qb[2]
        ref = _ssim_numpy(ya[3:-3, 3:-3], yb[3:-3, 3:-3])
    else:
        ref = np.mean([_ssim_numpy(qa[c, 3:-3, 3:-3] * 255, qb[c, 3:-3, 3:-3] * 255) for c in range(3)])
    assert ssim(a, b, crop=3, y_channel=y_channel) == pytest.approx(ref, abs=1e-10)
    assert ssim(a, a) == pytest.approx(1.0)


def test_bad_inputs():
    with pytest.raises(AgdError, match="differ in shape"):
        psnr(torch.rand(3, 8, 8), torch.rand(3, 8, 9))
    with pytest.raises(AgdError, match="border crop"):
        psnr(torch.rand(3, 8, 8), torch.rand(3, 8, 8), crop=4)
    with pytest.raises(AgdError, match="at least 11x11"):
        ssim(torch.rand(3, 10, 30), torch.rand(3, 10, 30))
    with pytest.raises(AgdError, match="RGB"):
        psnr(torch.rand(1, 8, 8), torch.rand(1, 8, 8))


def _bicubic_scores(hr_dir, lr_dir=None, scale=4):
    ps, ss = [], []
    for p in list_images(hr_dir):
        hr = read_image(p).double()
        h, w = hr.shape[1] - hr.shape[1] % scale, hr.shape[2] - hr.shape[2] % scale
        hr = hr[:, :h, :w]
        lr = read_image(lr_dir / f"{p.stem}x{scale}.bmp").double() if lr_dir else bicubic_degrade(hr, scale)
        sr = imresize(lr, scale)
        ps.append(psnr(sr, hr, crop=scale))
        ss.append(ssim(sr, hr, crop=scale))
    return float(np.mean(ps)), float(np.mean(ss))


def test_bicubic_x4_set5_matches_published(shared_data):
    p, s = _bicubic_scores(shared_data / "sr/Set5/HR", shared_data / "sr/Set5/LR_bicubic_x4")
    assert p == pytest.approx(28.43, abs=0.03)
    assert s == pytest.approx(0.811, abs=0.002)


def test_bicubic_x4_set14_matches_published(shared_data):
    p, s = _bicubic_scores(shared_data / "sr/Set14/HR")
    assert p == pytest.approx(26.09, abs=0.05)
    assert s == pytest.approx(0.705, abs=0.002)
